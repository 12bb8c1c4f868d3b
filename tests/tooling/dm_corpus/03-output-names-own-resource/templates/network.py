"""A VPC network named after the template resource, with the outputs other configs consume."""


def generate_config(context):
    name = context.properties.get("name") or context.env["name"]
    return {
        "resources": [
            {
                "name": context.env["name"],
                "type": "compute.v1.network",
                "properties": {
                    "name": name,
                    "autoCreateSubnetworks": context.properties.get("autoCreateSubnetworks", False),
                },
            }
        ],
        "outputs": [
            {"name": "name", "value": f"$(ref.{context.env['name']}.name)"},
            {"name": "selfLink", "value": f"$(ref.{context.env['name']}.selfLink)"},
        ],
    }
