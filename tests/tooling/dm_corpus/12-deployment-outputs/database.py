"""The database's reserved internal address, and the outputs clients connect with."""


def GenerateConfig(context):
    name = context.env["name"]
    port = context.properties["port"]
    return {
        "resources": [
            {
                "name": f"{name}-ip",
                "type": "compute.v1.address",
                "properties": {
                    "region": context.properties["region"],
                    "addressType": "INTERNAL",
                },
            }
        ],
        "outputs": [
            {"name": "ip", "value": f"$(ref.{name}-ip.address)"},
            {"name": "port", "value": port},
            {"name": "url", "value": f"postgres://$(ref.{name}-ip.address):{port}/app"},
        ],
    }
