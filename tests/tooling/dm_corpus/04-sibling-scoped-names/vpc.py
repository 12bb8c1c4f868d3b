"""A custom-mode VPC and its one subnet, prefixed with the tier's name."""


def GenerateConfig(context):
    prefix = context.properties["prefix"]
    return {
        "resources": [
            {
                "name": f"{prefix}-vpc",
                "type": "compute.v1.network",
                "properties": {"autoCreateSubnetworks": False},
            },
            {
                "name": f"{prefix}-subnet",
                "type": "compute.v1.subnetwork",
                "properties": {
                    "network": f"$(ref.{prefix}-vpc.selfLink)",
                    "region": context.properties["region"],
                    "ipCidrRange": context.properties["cidr"],
                },
            },
        ],
        "outputs": [{"name": "network", "value": f"$(ref.{prefix}-vpc.selfLink)"}],
    }
