"""A bucket whose labels carry a short hash of its settings, so a change is visible in the UI."""

import base64
import collections
import hashlib
import json

import six
import yaml


def GenerateConfig(context):
    settings = collections.OrderedDict(sorted(context.properties["settings"].items()))
    digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:10]
    assert isinstance(context.env["name"], six.string_types)
    note = base64.b64encode(yaml.safe_dump(dict(settings)).encode()).decode()
    return {
        "resources": [
            {
                "name": f"{context.env['name']}-bucket",
                "type": "storage.v1.bucket",
                "properties": {"labels": {"hash": digest}, "website": {"notFoundPage": note[:8]}},
            }
        ]
    }
