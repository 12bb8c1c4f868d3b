"""A static address whose name and labels follow the team's conventions."""

from helpers import labels, naming


def GenerateConfig(context):
    env = context.properties["env"]
    return {
        "resources": [
            {
                "name": naming.resource_name(env, context.env["name"], "ip"),
                "type": "compute.v1.address",
                "properties": {
                    "region": context.properties["region"],
                    "labels": labels.standard(env, context.env["name"]),
                },
            }
        ]
    }
