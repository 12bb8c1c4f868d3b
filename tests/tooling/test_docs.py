"""The README's generated Inputs/Outputs block: current, and really derived from the schemas."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from dmlocal import freshness, inputs
from dmlocal.expand import default_env, expand_path
from tests.conftest import REPO, copy_stack


def test_readme_inputs_table_is_current():
    assert inputs.generated_block((REPO / "README.md").read_text()) == inputs.tables(
        REPO / "deployment.yaml"
    ), "README.md's inputs table is stale: run `make docs` and commit README.md"


def test_table_follows_a_schema_default_and_a_value_set_in_the_config(tmp_path):
    stack = copy_stack(tmp_path)
    schema_path = stack / "vm.py.schema"
    schema = yaml.safe_load(schema_path.read_text())
    schema["properties"]["bootDiskSizeGb"]["default"] = 20
    schema_path.write_text(yaml.safe_dump(schema))
    config_path = stack / "deployment.yaml"
    config_path.write_text(config_path.read_text().replace("e2-small", "e2-medium"))

    rows = {
        line.split("|")[1].strip(): line
        for line in inputs.tables(config_path).splitlines()
        if line.startswith("| `")
    }
    assert "| `20` |" in rows["`bootDiskSizeGb`"]
    assert "| `e2-medium` |" in rows["`machineType`"]


def test_refresh_rewrites_only_the_block(tmp_path):
    stack = copy_stack(tmp_path)
    readme = stack / "README.md"
    shutil.copy(REPO / "README.md", readme)
    text = readme.read_text()
    stale = text.replace(inputs.generated_block(text), "stale")
    readme.write_text(stale)

    assert inputs.refresh(readme, stack / "deployment.yaml") is True
    assert readme.read_text() == text
    assert inputs.refresh(readme, stack / "deployment.yaml") is False


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def docs_copy(tmp_path: Path) -> Path:
    """The stack with its docs and README, as a fork has them."""
    stack = copy_stack(tmp_path)
    shutil.copytree(REPO / "docs", stack / "docs")
    shutil.copy(REPO / "README.md", stack / "README.md")
    return stack


def test_readme_prose_names_only_what_the_config_sets():
    expansion = expand_path(REPO / "deployment.yaml", default_env())
    assert freshness.prose_drift((REPO / "README.md").read_text(), expansion) == [], (
        "README.md's prose no longer describes deployment.yaml: edit it"
    )
    assert freshness.generated_drift(REPO / "deployment.yaml", expansion) == []


def test_prose_check_fails_when_the_ssh_range_changes(tmp_path):
    stack = docs_copy(tmp_path)
    config = stack / "deployment.yaml"
    config.write_text(config.read_text().replace("- 104.154.0.0/15", "- 35.235.240.0/20"))
    drift = freshness.prose_drift(
        (stack / "README.md").read_text(), expand_path(config, default_env())
    )
    assert drift == [
        "names the IP range 104.154.0.0/15, which the config does not set",
        "does not name 35.235.240.0/20, which the firewall admits",
    ]


def test_make_preview_reminds_when_the_docs_no_longer_match(tmp_path):
    stack = docs_copy(tmp_path)
    command = ["make", "--no-print-directory", "preview", f"CONFIG={stack}/deployment.yaml"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}

    def notes() -> list[str]:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stderr.splitlines() if line.startswith("note:")]

    assert notes() == []  # the copy's docs match its config
    config = stack / "deployment.yaml"
    config.write_text(config.read_text().replace("machineType: e2-small", "machineType: e2-medium"))
    docs = stack / "docs"
    assert notes() == [
        f"note: the docs no longer match deployment.yaml ({docs}/architecture.dot, "
        f"{docs}/architecture.mmd, {docs}/architecture.svg, {stack}/README.md's inputs table): "
        "run `make docs` and commit the result"
    ]
