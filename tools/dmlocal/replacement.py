"""Which changes Deployment Manager can apply to a live resource in place, and which need a new one.

DM updates an existing resource through the Compute Engine API's update/patch/set* methods; a
field those methods cannot change makes the update fail with a resource error, and the resource
must be replaced instead (a new resource, under a new name, then the old one removed). The facts
come from the Compute Engine v1 discovery document google-api-python-client ships, not from a
hand-kept list:

  * the insert path's location parameters (`projects/{project}/zones/{zone}/instances`): a zonal
    or regional resource's zone/region is part of its URL, so it cannot move;
  * field descriptions saying so, e.g. Subnetwork.ipCidrRange "This field is set at resource
    creation time", Subnetwork.network "This field can be set only at resource creation time";
  * the collection's update methods: networks.patch "Only routingConfig can be modified.";
    addresses has no update or patch at all, only setLabels.

`dmlocal changes CONFIG --against MANIFEST` prints the comparison against the last deployed
manifest (`gcloud deployment-manager manifests describe --deployment NAME` saved to a file, or
any YAML with a top-level `resources:` list).
"""

from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dmlocal.compute_api import discovery_path
from dmlocal.errors import ConfigError
from dmlocal.expand import expand_path

DM_TYPE = re.compile(r"^compute\.v1\.([a-zA-Z]+)$")
# The discovery text wraps lines anywhere ("set only\nat resource creation time"): any run of
# whitespace stands between the words.
CREATION_ONLY = re.compile(
    r"[^.]*(set\s+only\s+at\s+resource\s+creation\s+time|is\s+set\s+at\s+resource\s+creation"
    r"\s+time|immutable)[^.]*\.",
    re.IGNORECASE,
)
# instances.setMachineType "Changes the machine type for a stopped instance ...", setScheduling
# "You can only call this method on a stopped instance": the methods a running instance refuses.
STOPPED_ONLY = re.compile(r"[^.]*stopped\s+(VM\s+)?instance[^.]*\.", re.IGNORECASE)
ONLY_MODIFIABLE = re.compile(r"Only (\w+) can be modified")


@dataclass(frozen=True)
class Change:
    resource: str
    type: str
    field: str
    old: Any
    new: Any
    replace: str | None  # why the resource must be replaced; None = DM applies it in place
    stop: str | None = None  # why the instance must be stopped first; None = changes running


@functools.cache
def _compute() -> dict:
    return json.loads(discovery_path().read_text())


def _collection(dm_type: str) -> tuple[str, dict, dict] | None:
    """(collection name, its methods, the resource's schema) for a compute.v1 type."""
    match = DM_TYPE.match(dm_type)
    if not match:
        return None
    kind = match.group(1)
    doc = _compute()
    for name, collection in doc["resources"].items():
        insert = collection.get("methods", {}).get("insert")
        if not insert or "request" not in insert:
            continue
        schema = insert["request"]["$ref"]
        if schema[:1].lower() + schema[1:] == kind:
            return name, collection["methods"], doc["schemas"][schema]
    return None


def replacement_reason(dm_type: str, field: str) -> str | None:
    """Why changing top-level `field` of a live `dm_type` needs a new resource, or None."""
    found = _collection(dm_type)
    if found is None:
        return None
    name, methods, schema = found
    insert = methods["insert"]
    if field in insert.get("parameterOrder", []):
        return (
            f"'{field}' is part of the resource's URL ({insert['path']}/NAME in the Compute "
            "Engine API): the resource cannot move"
        )
    description = (schema["properties"].get(field) or {}).get("description", "")
    described = CREATION_ONLY.search(description)
    if described:
        quoted = " ".join(described.group(0).split())
        return f"the Compute Engine API says of {schema['id']}.{field}: {quoted!r}"
    patch = methods.get("patch") or methods.get("update")
    if patch:
        only = ONLY_MODIFIABLE.search(patch.get("description", ""))
        if only and field != only.group(1):
            return f"{name}.{patch['id'].rsplit('.', 1)[-1]}: {only.group(0)!r}"
        return None
    setter = "set" + field[:1].upper() + field[1:]
    if setter not in methods:
        setters = sorted(m for m in methods if m.startswith("set"))
        return (
            f"{name} has no update or patch method (only {', '.join(setters) or 'none'}), so "
            f"'{field}' cannot change on a live resource"
        )
    return None


def stop_reason(dm_type: str, field: str) -> str | None:
    """Why changing top-level `field` of a running `dm_type` needs it stopped first, or None.

    Compute Engine changes such a field only through a `set<Field>`/`update<Field>` method whose
    description says it works on a stopped instance (instances.setMachineType, setScheduling,
    setMinCpuPlatform, updateShieldedInstanceConfig, ...)."""
    found = _collection(dm_type)
    if found is None:
        return None
    name, methods, schema = found
    if field not in schema["properties"]:
        return None
    suffix = field[:1].upper() + field[1:]
    for verb in ("set", "update"):
        method = methods.get(verb + suffix)
        said = STOPPED_ONLY.search(method.get("description", "")) if method else None
        if said:
            return f"{name}.{verb}{suffix}: {' '.join(said.group(0).split())!r}"
    return None


def compare(old: list[dict], new: list[dict]) -> list[Change]:
    """Every top-level property change of a resource present in both lists, in `new`'s order."""
    before = {r["name"]: r for r in old}
    changes = []
    for resource in new:
        previous = before.get(resource["name"])
        if previous is None or previous["type"] != resource["type"]:
            continue
        old_props = previous.get("properties") or {}
        new_props = resource.get("properties") or {}
        for field in sorted(old_props.keys() | new_props.keys()):
            if old_props.get(field) != new_props.get(field):
                changes.append(
                    Change(
                        resource["name"],
                        resource["type"],
                        field,
                        old_props.get(field),
                        new_props.get(field),
                        replacement_reason(resource["type"], field),
                        stop_reason(resource["type"], field),
                    )
                )
    return changes


def load_manifest(path: Path) -> list[dict]:
    """The resources of a saved manifest: DM's manifest (expandedConfig) or `resources:` YAML."""
    document = yaml.safe_load(path.read_text()) or {}
    if isinstance(document, dict) and "expandedConfig" in document:
        document = yaml.safe_load(document["expandedConfig"]) or {}
    resources = document.get("resources") if isinstance(document, dict) else None
    if not isinstance(resources, list):
        raise ConfigError(
            str(path),
            "resources",
            "not a manifest: expected `expandedConfig` (gcloud deployment-manager manifests "
            "describe --deployment NAME) or a top-level `resources:` list",
        )
    return resources


def report(old: list[dict], new: list[dict]) -> tuple[str, bool]:
    """The human summary, and whether any change needs a replacement."""
    old_names = {r["name"] for r in old}
    new_names = {r["name"] for r in new}
    lines = []
    for name in sorted(new_names - old_names):
        lines.append(f"  create   {name}")
    for name in sorted(old_names - new_names):
        lines.append(f"  delete   {name}")
    changes = compare(old, new)
    for change in changes:
        verb = "REPLACE " if change.replace else "STOP    " if change.stop else "in place"
        lines.append(
            f"  {verb} {change.resource}.{change.field}: {_short(change.old)} -> "
            f"{_short(change.new)}"
        )
        if change.replace or change.stop:
            lines.append(f"           why: {change.replace or change.stop}")
    blocked = [c for c in changes if c.replace]
    if blocked:
        names = ", ".join(sorted({c.resource for c in blocked}))
        lines.append(
            f"Deployment Manager cannot apply the change to {names} in place: the update would "
            "fail at that resource after applying the ones before it. To do it safely, give the "
            "resource a new name in deployment.yaml (DM creates the new one and deletes the old), "
            "or add the new resource beside the old one, move what references it, then remove "
            "the old one in a second deploy."
        )
    stopped = sorted({c.resource for c in changes if c.stop and not c.replace})
    if stopped:
        lines.append(
            f"warning: Compute Engine changes this on {', '.join(stopped)} only while the "
            "instance is stopped: Deployment Manager's update fails at that resource on a "
            "running VM. Stop it (gcloud compute instances stop NAME --zone ZONE), deploy, then "
            "start it; the app is down meanwhile."
        )
    if not lines:
        lines.append("  no changes")
    return "\n".join(lines), bool(blocked)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if value is not None else "(unset)"
    return text if len(text) <= 60 else text[:57] + "..."


def add_command(commands) -> None:
    parser = commands.add_parser(
        "changes",
        help="compare CONFIG with the last deployed manifest: in place or needs replacement",
    )
    parser.add_argument("config", nargs="?", default="deployment.yaml")
    parser.add_argument(
        "--against",
        required=True,
        type=Path,
        help="the live manifest, saved with: gcloud deployment-manager manifests describe "
        "--deployment NAME > live.yaml",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    """Exit 0: every change applies in place; 3: a change needs a replacement; 1: bad input."""
    try:
        old = load_manifest(args.against)
        new = expand_path(args.config).resources
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text, blocked = report(old, new)
    print(f"Changes against {args.against}:\n{text}")
    return 3 if blocked else 0
