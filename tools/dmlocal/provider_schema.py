"""Checks Terraform JSON arguments against the pinned google provider's own schema, offline.

The provider binary cannot be downloaded here, so its schema comes from the npm package
@cdktf/provider-google 16.12.1, which is generated from hashicorp/google 6.50.0 (the version
`dmlocal terraform` pins). Eight files of it hold the schemas of our eight resource types; they
are cached under /var/cache/hello-stack (HELLO_STACK_CACHE overrides) and fetched with
`npm pack` when missing.

What this checks, per resource: every argument name exists, nested blocks hold only their own
arguments, and literal values have the schema's type (string, number, bool, list or map of
those). A `${...}` reference is left to Terraform's plan. It does not check required arguments,
conflicts between arguments, or value ranges: the provider's Go code holds those.

`tests/tooling/test_terraform.py` runs it on `dmlocal terraform`'s output, and the
Infrastructure Manager emulator runs it on every uploaded configuration.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from functools import cache
from pathlib import Path

CDKTF_PACKAGE = "@cdktf/provider-google@16.12.1"
SCHEMA_VERSION = "6.50.0"
SCHEMA_CACHE = Path(os.environ.get("HELLO_STACK_CACHE", "/var/cache/hello-stack")) / (
    "cdktf-provider-google-16.12.1"
)
SCHEMA_FILES = ["package/package.json"] + [
    f"package/lib/{kind}/index.js"
    for kind in (
        "compute-network",
        "compute-subnetwork",
        "compute-firewall",
        "compute-address",
        "compute-instance",
        "monitoring-uptime-check-config",
        "monitoring-notification-channel",
        "monitoring-alert-policy",
    )
]
# cdktf's generated code lists every argument as `name: {value: ..., isBlock, type,
# storageClassType}`; nested blocks' values call the block's own *ToHclTerraform function.
SCHEMA_ARGUMENT = re.compile(
    r"(\w+): \{\s*value: (.*?),\s*isBlock: (true|false),\s*type: \"\w+\","
    r"\s*storageClassType: \"(\w+)\",\s*\}",
    re.S,
)
SCALARS = {"string": str, "number": (int, float), "boolean": bool}


class SchemaUnavailable(RuntimeError):
    """The provider schema is neither cached nor fetchable."""


def schema_dir() -> Path:
    """The cached package directory, fetched with npm on first use."""
    if not all((SCHEMA_CACHE / name).is_file() for name in SCHEMA_FILES):
        npm = shutil.which("npm")
        if npm is None:
            raise SchemaUnavailable(
                f"no npm to fetch {CDKTF_PACKAGE} and no cache in {SCHEMA_CACHE}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            packed = subprocess.run(
                [npm, "pack", CDKTF_PACKAGE, "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            if packed.returncode != 0:
                raise SchemaUnavailable(
                    f"npm pack {CDKTF_PACKAGE} failed: {packed.stderr.strip()[-300:]}"
                )
            staging = Path(tmp) / "cache"
            with tarfile.open(Path(tmp) / packed.stdout.split()[-1]) as archive:
                archive.extractall(
                    staging, members=[archive.getmember(n) for n in SCHEMA_FILES], filter="data"
                )
            SCHEMA_CACHE.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(SCHEMA_CACHE, ignore_errors=True)
            shutil.move(staging, SCHEMA_CACHE)
    return SCHEMA_CACHE / "package"


def captured_version() -> str:
    """The google provider version the cached schema was generated from."""
    package = json.loads((schema_dir() / "package.json").read_text())
    return package["cdktf"]["provider"]["version"]


def _arguments(text: str) -> dict[str, tuple[bool, str, str | None]]:
    """argument -> (is a block, storage type, the block's *ToHclTerraform function)."""
    found = {}
    for name, value, is_block, storage in SCHEMA_ARGUMENT.findall(text):
        function = re.search(r"(\w+ToHclTerraform)", value) if is_block == "true" else None
        found[name] = (is_block == "true", storage, function and function.group(1))
    return found


@cache
def _resource_schema(tf_type: str) -> tuple[dict, dict[str, str]] | None:
    source = schema_dir() / "lib" / tf_type.replace("google_", "").replace("_", "-") / "index.js"
    if not source.is_file():
        return None
    text = source.read_text()
    top = re.search(r"synthesizeHclAttributes\(\) \{(.*?)\n    \}", text, re.S).group(1)
    functions = dict(re.findall(r"function (\w+ToHclTerraform)\(struct\) \{(.*?)\n\}", text, re.S))
    arguments = _arguments(top)
    if "project" not in arguments:
        raise SchemaUnavailable(f"schema parsing found nothing in {source}: the layout changed")
    return arguments, functions


def _value_problems(value, spec, functions: dict[str, str], path: str) -> list[str]:
    is_block, storage, function = spec
    if is_block:
        arguments = _arguments(functions[function])
        problems = []
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            if not isinstance(item, dict):
                problems.append(f"{path}[{index}]: a block must be an object, not {item!r:.40}")
                continue
            for key, inner in item.items():
                where = f"{path}[{index}].{key}"
                if key not in arguments:
                    problems.append(f"{where}: no such argument")
                else:
                    problems += _value_problems(inner, arguments[key], functions, where)
        return problems
    if isinstance(value, str) and value.startswith("${"):
        return []  # a reference: Terraform checks its type at plan time
    if storage in SCALARS:
        ok = isinstance(value, SCALARS[storage])
    elif storage.endswith("List"):
        ok = isinstance(value, list) and all(
            isinstance(v, SCALARS[storage[:-4]]) or str(v).startswith("${") for v in value
        )
    elif storage.endswith("Map"):
        ok = isinstance(value, dict) and all(
            isinstance(v, SCALARS[storage[:-3]]) for v in value.values()
        )
    else:
        ok = False
    return [] if ok else [f"{path}: {value!r:.40} is not {storage}"]


def resource_problems(tf_type: str, label: str, body: dict) -> list[str]:
    """What in one resource's arguments the provider schema does not allow."""
    schema = _resource_schema(tf_type)
    if schema is None:
        return [f"{tf_type}.{label}: no schema for resource type {tf_type} here"]
    arguments, functions = schema
    problems = []
    for key, value in body.items():
        where = f"{tf_type}.{label}.{key}"
        if key not in arguments:
            problems.append(f"{where}: no such argument")
        else:
            problems += _value_problems(value, arguments[key], functions, where)
    return problems


def module_problems(resources: dict[str, dict[str, dict]]) -> tuple[list[str], int]:
    """Problems in a module's `resource` block, and how many arguments were checked."""
    problems: list[str] = []
    checked = 0
    for tf_type, by_label in resources.items():
        for label, body in by_label.items():
            checked += len(body)
            problems += resource_problems(tf_type, label, body)
    return problems, checked
