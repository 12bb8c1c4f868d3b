"""One tier: its subnet and the service running in it."""


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    return {
        "resources": [
            {
                "name": f"{name}-subnet",
                "type": "compute.v1.subnetwork",
                "properties": {
                    "network": properties["network"],
                    "region": properties["region"],
                    "ipCidrRange": properties["cidr"],
                },
            },
            {
                "name": f"{name}-svc",
                "type": "service.py",
                "properties": {
                    "zone": f"{properties['region']}-b",
                    "region": properties["region"],
                    "network": properties["network"],
                    "subnetwork": f"$(ref.{name}-subnet.selfLink)",
                    "cidr": properties["cidr"],
                },
            },
        ],
        "outputs": [{"name": "ip", "value": f"$(ref.{name}-svc.ip)"}],
    }
