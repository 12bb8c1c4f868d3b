"""How one resource points at another: `$(ref.NAME.FIELD)`, template outputs, resource URLs.

Deployment Manager substitutes `$(ref.NAME.FIELD)` at deploy time with FIELD of resource NAME,
or with the output FIELD of template resource NAME
(https://cloud.google.com/deployment-manager/docs/configuration/use-references,
https://cloud.google.com/deployment-manager/docs/configuration/expose-information-outputs).
Everything that reads references (the renderer, the checks, the firewall evaluator, the diagram,
the Terraform translation) uses these definitions, so they agree on what a reference is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# NAME cannot contain a dot (FIELD may: `networkInterfaces.0.networkIP`); neither holds
# whitespace or parentheses, so a reference ends at the first `)`.
REFERENCE = re.compile(r"\$\(ref\.([^.()\s]+)\.([^()\s]+)\)")
# Compute Engine names (RFC 1035): 1-63 characters, lowercase letters, digits and hyphens,
# starting with a letter and not ending with a hyphen. Network tags follow the same rule.
RESOURCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


# DM's own type for a Compute Engine v1 resource and the type provider's spelling of the same
# API collection (https://cloud.google.com/deployment-manager/docs/configuration/
# supported-gcp-types): `compute.v1.firewall` and `gcp-types/compute-v1:firewalls`.
COMPUTE_V1_TYPE = re.compile(r"^compute\.v1\.([a-zA-Z]+)$")
COMPUTE_V1_PROVIDER = re.compile(r"^gcp-types/compute-v1:([a-zA-Z]+)$")


def singular(collection: str) -> str:
    """English singular of an API collection name, the way DM names its types."""
    if collection.endswith("ies"):
        return collection[:-3] + "y"
    if collection.endswith(("sses", "shes", "ches", "xes", "zes")):
        return collection[:-2]
    return collection[:-1] if collection.endswith("s") else collection


def compute_v1_type(type_: str) -> str:
    """`gcp-types/compute-v1:firewalls` -> `compute.v1.firewall`; any other type unchanged, so
    both spellings get the same checks."""
    m = COMPUTE_V1_PROVIDER.match(type_)
    return f"compute.v1.{singular(m.group(1))}" if m else type_


def is_compute(type_: str) -> bool:
    """A Compute Engine resource (any API version, either spelling): GCE names and labels."""
    return type_.startswith(("compute.", "gcp-types/compute-"))


def template_outputs(layout: Mapping | None) -> dict[str, dict[str, object]]:
    """{template resource name: {output name: value}} from an Expansion's layout tree.

    DM scopes outputs to the level that declares the template, so two templates in different
    parents may share a name; which one a reference means depends on where it is written, which
    the expander resolves. Such a name is left out here, so callers treat it as unknown rather
    than follow the wrong template.
    """
    found: dict[str, dict[str, object]] = {}
    ambiguous: set[str] = set()

    def walk(nodes) -> None:
        for node in nodes or []:
            if "resources" in node:
                outputs = {o["name"]: o["value"] for o in node.get("outputs") or []}
                if found.setdefault(node["name"], outputs) != outputs:
                    ambiguous.add(node["name"])
                walk(node["resources"])

    walk((layout or {}).get("resources"))
    return {name: outputs for name, outputs in found.items() if name not in ambiguous}


def follow(value: object, outputs: Mapping[str, Mapping[str, object]], limit: int = 20) -> object:
    """Replace a whole-string reference to a template's output by that output's value, repeatedly.

    `$(ref.hello-vpc.subnetwork)` becomes `$(ref.hello-vpc-subnet.selfLink)` when template
    `hello-vpc` declares that output, so callers can reach the leaf resource behind it.
    """
    for _ in range(limit):
        m = REFERENCE.fullmatch(value.strip()) if isinstance(value, str) else None
        if not m or m.group(1) not in outputs:
            return value
        name, field = m.groups()
        head = field.split(".")[0]
        if head not in outputs[name]:
            return value
        value = outputs[name][head]
    return value


def last_segment(url: object) -> str:
    """`.../zones/us-central1-a/machineTypes/e2-small` -> `e2-small` (a bare name stays as is)."""
    return str(url or "?").rstrip("/").rsplit("/", 1)[-1]
