"""A zonal persistent disk for data, sized and typed by the schema's definitions."""


def generate_config(context):
    properties = context.properties
    zone = properties["zone"]
    return {
        "resources": [
            {
                "name": f"{context.env['name']}-disk",
                "type": "compute.v1.disk",
                "properties": {
                    "zone": zone,
                    "sizeGb": properties["sizeGb"],
                    "type": f"zones/{zone}/diskTypes/{properties['diskType']}",
                },
            }
        ]
    }
