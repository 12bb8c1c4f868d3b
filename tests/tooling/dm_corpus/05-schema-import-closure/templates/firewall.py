"""Allows the named services in from anywhere, through the nested rules.py template."""

from helpers import ports


def generate_config(context):
    name = context.env["name"]
    return {
        "resources": [
            {
                "name": f"{name}-allow-web",
                "type": "rules.py",
                "properties": {
                    "network": context.properties["network"],
                    "direction": "INGRESS",
                    "ports": ports.for_services(context.properties.get("services", [])),
                },
            }
        ]
    }
