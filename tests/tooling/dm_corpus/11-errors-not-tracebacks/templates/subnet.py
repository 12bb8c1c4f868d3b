"""A /N subnet of 10.20.0.0/16, in a VPC created here or one that already exists."""


def GenerateConfig(context):
    properties = context.properties
    network = properties["network"]
    resources = []
    prefix = int(properties["prefixLength"])
    if "create" in network:
        resources.append(
            {
                "name": network["create"],
                "type": "compute.v1.network",
                "properties": {"autoCreateSubnetworks": False},
            }
        )
        link = f"$(ref.{network['create']}.selfLink)"
    else:
        link = network["selfLink"]
    resources.append(
        {
            "name": f"{context.env['name']}-subnet",
            "type": "compute.v1.subnetwork",
            "properties": {
                "network": link,
                "region": properties["region"],
                "ipCidrRange": f"10.20.0.0/{prefix}",
            },
        }
    )
    return {"resources": resources}
