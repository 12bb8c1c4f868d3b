"""One firewall rule; the priority comes from this template's own schema default."""

from helpers.protocols import TCP


def GenerateConfig(context):
    properties = context.properties
    return {
        "resources": [
            {
                "name": context.env["name"],
                "type": "compute.v1.firewall",
                "properties": {
                    "network": properties["network"],
                    "direction": properties["direction"],
                    "priority": properties["priority"],
                    "sourceRanges": ["0.0.0.0/0"],
                    "allowed": [{"IPProtocol": TCP, "ports": properties["ports"]}],
                },
            }
        ]
    }
