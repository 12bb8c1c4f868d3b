"""A regional static address named after the template resource plus `-ip`."""


def GenerateConfig(context):
    name = f"{context.env['name']}-ip"
    return {
        "resources": [
            {
                "name": name,
                "type": "compute.v1.address",
                "properties": {"region": context.properties["region"]},
            }
        ],
        "outputs": [{"name": "address", "value": f"$(ref.{name}.address)"}],
    }
