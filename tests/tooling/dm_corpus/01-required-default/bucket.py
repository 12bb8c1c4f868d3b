"""One Cloud Storage bucket, named after the deployment."""


def GenerateConfig(context):
    properties = context.properties
    return {
        "resources": [
            {
                "name": context.env["name"],
                "type": "storage.v1.bucket",
                "properties": {
                    "name": f"{context.env['deployment']}-{context.env['name']}",
                    "location": properties["location"],
                    "storageClass": properties["storageClass"],
                },
            }
        ]
    }
