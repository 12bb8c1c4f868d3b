"""One region: a network and three tiers (web, api, worker), each with its own subnet."""

TIERS = ("web", "api", "worker")


def GenerateConfig(context):
    name = context.env["name"]
    properties = context.properties
    resources = [
        {
            "name": f"{name}-vpc",
            "type": "compute.v1.network",
            "properties": {"autoCreateSubnetworks": False},
        },
    ]
    for index, tier in enumerate(TIERS):
        resources.append(
            {
                "name": f"{name}-{tier}",
                "type": "tier.py",
                "properties": {
                    "region": properties["region"],
                    "network": f"$(ref.{name}-vpc.selfLink)",
                    "cidr": f"{properties['cidrBase']}.{index}.0/24",
                },
            }
        )
    return {
        "resources": resources,
        "outputs": [
            {"name": "network", "value": f"$(ref.{name}-vpc.selfLink)"},
            {"name": "webIp", "value": f"$(ref.{name}-web.ip)"},
        ],
    }
