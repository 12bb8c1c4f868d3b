"""A custom-mode network and one subnet; its outputs are what other templates refer to."""


def GenerateConfig(context):
    # Leaf names differ from the template's own name, so `$(ref.<template>.x)` can only mean
    # the template's output x (see the report on same-named templates and leaves).
    name = context.env["name"]
    vpc = f"{name}-vpc"
    subnet = f"{name}-subnet"
    return {
        "resources": [
            {
                "name": vpc,
                "type": "compute.v1.network",
                "properties": {"autoCreateSubnetworks": False},
            },
            {
                "name": subnet,
                "type": "compute.v1.subnetwork",
                "properties": {
                    "network": f"$(ref.{vpc}.selfLink)",
                    "region": context.properties["region"],
                    "ipCidrRange": context.properties["cidr"],
                },
            },
        ],
        "outputs": [
            {"name": "network", "value": f"$(ref.{vpc}.selfLink)"},
            {"name": "subnetLink", "value": f"$(ref.{subnet}.selfLink)"},
        ],
    }
