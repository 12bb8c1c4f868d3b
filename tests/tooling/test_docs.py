"""The README's generated Inputs/Outputs block: current, and really derived from the schemas."""

from __future__ import annotations

import shutil

import yaml

from dmlocal import inputs
from tests.conftest import REPO, copy_stack


def generated_block(readme_text: str) -> str:
    return readme_text.split(inputs.BEGIN, 1)[1].split(inputs.END, 1)[0].strip("\n")


def test_readme_inputs_table_is_current():
    assert generated_block((REPO / "README.md").read_text()) == inputs.tables(
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
    stale = text.replace(generated_block(text), "stale")
    readme.write_text(stale)

    assert inputs.refresh(readme, stack / "deployment.yaml") is True
    assert readme.read_text() == text
    assert inputs.refresh(readme, stack / "deployment.yaml") is False


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
