"""The docs next to the config still describe it: docs/inputs.md's generated block is current
and really derived from the schemas, and the prose (README, docs/security.md, the schemas'
descriptions) names only values the config sets, each stale one with its file and line.

Real: the templates, schemas and docs of this checkout, `make preview`. Nothing is emulated."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from dmlocal import freshness, inputs
from dmlocal.expand import default_env, expand_path
from tests.conftest import REPO, copy_stack


def test_inputs_table_is_current():
    assert inputs.generated_block((REPO / inputs.PAGE).read_text()) == inputs.tables(
        REPO / "deployment.yaml"
    ), f"{inputs.PAGE} is stale: run `make docs` and commit it"


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
    page = stack / "inputs.md"
    shutil.copy(REPO / inputs.PAGE, page)
    text = page.read_text()
    stale = text.replace(inputs.generated_block(text), "stale")
    page.write_text(stale)

    assert inputs.refresh(page, stack / "deployment.yaml") is True
    assert page.read_text() == text
    assert inputs.refresh(page, stack / "deployment.yaml") is False


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def docs_copy(tmp_path: Path) -> Path:
    """The stack with its docs, README and the CI config and Makefile the diagram reads, as a
    fork has them."""
    stack = copy_stack(tmp_path)
    shutil.copytree(REPO / "docs", stack / "docs")
    shutil.copytree(REPO / ".circleci", stack / ".circleci")
    for name in ("README.md", "Makefile"):
        shutil.copy(REPO / name, stack / name)
    return stack


def test_prose_names_only_what_the_config_sets():
    expansion = expand_path(REPO / "deployment.yaml", default_env())
    assert freshness.prose_drift(REPO, expansion) == [], (
        "the prose no longer describes deployment.yaml: edit it"
    )
    assert freshness.generated_drift(REPO / "deployment.yaml", expansion) == []


def lines_naming(path: Path, text: str) -> list[int]:
    return [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]


def test_prose_check_names_each_stale_line_when_the_ssh_range_changes(tmp_path):
    """Every place that states the SSH range is found, with its line: README, docs/security.md
    and the schema's description (its default and pattern example are not prose)."""
    stack = docs_copy(tmp_path)
    config = stack / "deployment.yaml"
    config.write_text(config.read_text().replace("- 104.154.0.0/15", "- 35.235.240.0/20"))
    schema = stack / "firewall.py.schema"
    default = schema.read_text().replace("      - 104.154.0.0/15", "      - 35.235.240.0/20")
    schema.write_text(default)
    drift = freshness.prose_drift(stack, expand_path(config, default_env()))

    stale = "names the IP range 104.154.0.0/15, which the config does not set"
    expected = [
        f"{page}:{line}: {stale}"
        for page in (stack / "README.md", stack / "docs/security.md")
        for line in lines_naming(page, "104.154.0.0/15")
    ]
    expected.append(f"{schema}:{lines_naming(schema, 'Who may SSH')[0]}: {stale}")
    unnamed = "does not name 35.235.240.0/20, which the firewall admits"
    expected.append(f"{stack / 'README.md'}: {unnamed}")
    assert len(expected) >= 4  # README twice or more, security.md, the schema
    assert drift == expected


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
        f"{docs}/architecture.mmd, {docs}/architecture.svg, {docs}/inputs.md): "
        "run `make docs` and commit the result",
        *(
            f"note: {page}:{line}: names the machine type e2-small, which the config does not "
            "set: edit it"
            for page, line in (
                (docs / "security.md", lines_naming(docs / "security.md", "e2-small")[0]),
                (stack / "vm.py.schema", lines_naming(stack / "vm.py.schema", "e2-small (2")[0]),
            )
        ),
    ]
