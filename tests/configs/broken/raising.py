"""Broken on purpose: indexes a property that is missing, as templates without schemas do."""


def GenerateConfig(context):
    region = context.properties["region"]
    return {
        "resources": [{"name": "x", "type": "compute.v1.address", "properties": {"region": region}}]
    }
