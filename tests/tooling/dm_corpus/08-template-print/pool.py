"""N static addresses for a worker pool (a template that prints while it works)."""

import sys


def GenerateConfig(context):
    print("expanding worker pool of", context.properties["size"])
    size = context.properties["size"]
    sys.stdout.write(f"debug: size={size}\n")
    return {
        "resources": [
            {
                "name": f"{context.env['name']}-pool-{index}",
                "type": "compute.v1.address",
                "properties": {"region": context.properties["region"]},
            }
            for index in range(1, size + 1)
        ]
    }
