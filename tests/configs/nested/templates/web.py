"""A web VM with a static IP and a firewall rule; returns its config as a YAML (JSON) string."""

import json

import naming

IMAGE = "projects/debian-cloud/global/images/family/debian-12"


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    zone = properties["zone"]
    env_keys = ",".join(
        f"{key}={context.env[key]}"
        for key in ("deployment", "name", "project", "project_number", "type", "username")
    )
    config = {
        "resources": [
            {
                "name": naming.address(name),
                "type": "compute.v1.address",
                "properties": {"region": zone.rsplit("-", 1)[0]},
            },
            {
                "name": name,
                "type": "compute.v1.instance",
                "properties": {
                    "zone": zone,
                    "machineType": f"zones/{zone}/machineTypes/{properties['machineType']}",
                    "description": env_keys,
                    "labels": {"created": str(context.env["current_time"])},
                    "tags": {"items": [name]},
                    "disks": [
                        {
                            "boot": True,
                            "autoDelete": True,
                            "initializeParams": {"sourceImage": IMAGE},
                        }
                    ],
                    "networkInterfaces": [
                        {
                            "subnetwork": properties["subnet"],
                            "accessConfigs": [{"natIP": f"$(ref.{naming.address(name)}.address)"}],
                        }
                    ],
                    "metadata": {"items": [{"key": "motd", "value": context.imports["motd.txt"]}]},
                },
            },
            {
                "name": naming.rule(name, "http"),
                "type": "compute.v1.firewall",
                "properties": {
                    "network": properties["network"],
                    "sourceRanges": ["0.0.0.0/0", properties["internalRange"]],
                    "targetTags": [name],
                    "allowed": [{"IPProtocol": "tcp", "ports": ["80"]}],
                },
            },
        ],
        "outputs": [{"name": "ip", "value": f"$(ref.{naming.address(name)}.address)"}],
    }
    return json.dumps(config, indent=2)  # JSON is YAML: DM accepts a YAML string
