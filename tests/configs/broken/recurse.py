"""Broken on purpose: returns a resource of its own type, so expansion never ends."""


def GenerateConfig(context):
    return {"resources": [{"name": context.env["name"] + "-x", "type": "recurse.py"}]}
