"""A whole lab: a network (net.py) and a web VM (web.py) wired to it by reference."""


def GenerateConfig(context):
    # DM calls generate_config when a template defines both; reaching this is a renderer bug.
    raise RuntimeError("GenerateConfig must not run when generate_config exists")


def generate_config(context):
    name = context.env["name"]
    properties = context.properties
    return {
        "resources": [
            {
                "name": f"{name}-net",
                "type": "net.py",
                "properties": {"region": properties["region"], "cidr": properties["cidr"]},
            },
            {
                "name": f"{name}-web",
                "type": "web.py",
                "properties": {
                    "zone": f"{properties['region']}-b",
                    "subnet": f"$(ref.{name}-net.subnetLink)",
                    "network": f"$(ref.{name}-net.network)",
                    "internalRange": f"$(ref.{name}-net-subnet.ipCidrRange)",
                },
            },
        ],
        # The config sees this template's outputs only, not those of the templates inside it.
        "outputs": [
            {"name": "webIp", "value": f"$(ref.{name}-web.ip)"},
            {"name": "network", "value": f"$(ref.{name}-net.network)"},
        ],
    }
