"""Deployment Manager's documented behaviour, case by case, through `dmlocal preview`.

tests/tooling/dm_corpus/ holds one small config per behaviour, written the way teams write
templates (nested templates, helper modules in sub-folders, CFT-style outputs, gcp-types
resources). Each folder's CASE.yaml records what DM does with the config, why, and the source:
Google's open-sourced DM expansion engine (expandybird/expansion/ in the helm/helm repository's
history: expansion.py, schema_validation.py, schema_validation_utils.py, sandbox_loader.py,
references.py), gcloud's importer (googlecloudsdk/command_lib/deployment_manager/importer.py in
the installed SDK) and the DM docs. Each case also lists mutations DM rejects, with the
`FILE: RESOURCE.FIELD: problem` message an operator must get instead.

Real: the `dmlocal` console script, run in a copy of the case folder as an operator runs it.
Nothing is emulated; what DM itself would answer is taken from the sources named in CASE.yaml,
not observed (no request reaches Google).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_dmlocal

CORPUS = Path(__file__).parent / "dm_corpus"
CASES = sorted(p.parent.name for p in CORPUS.glob("*/CASE.yaml"))


def case(name: str) -> dict:
    return yaml.safe_load((CORPUS / name / "CASE.yaml").read_text())


MUTATIONS = [(name, i) for name in CASES for i in range(len(case(name).get("mutations") or []))]


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(CORPUS / name, tmp_path / name))


def preview(folder: Path, *args: str):
    result = run_dmlocal("preview", "config.yaml", *args, cwd=folder)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def lookup(document: dict, check: dict):
    if "output" in check:
        outputs = {o["name"]: o["value"] for o in document.get("outputs") or []}
        return outputs[check["output"]]
    [resource] = [r for r in document["resources"] if r["name"] == check["resource"]]
    value = resource
    for part in check["path"].split("."):
        value = value[part]
    return value


def test_every_behaviour_has_a_case_and_a_mutation():
    numbers = {int(case(name)["behaviour"].split(".")[0]) for name in CASES}
    assert numbers == set(range(1, 13))
    assert {name for name, _ in MUTATIONS} == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_dm_accepts(name, tmp_path):
    record = case(name)
    folder = copy(name, tmp_path)
    result = preview(folder)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)  # stdout is the expansion and nothing else
    assert document["resources"]
    for check in record.get("expect") or []:
        if "stdout_lacks" in check:
            assert check["stdout_lacks"] not in result.stdout
        elif "stderr_has" in check:
            assert check["stderr_has"] in result.stderr
        elif "stderr_lacks" in check:
            assert check["stderr_lacks"] not in result.stderr
        elif "json_valid" in check:
            as_json = preview(folder, "--format", "json")
            assert json.loads(as_json.stdout)["valid"] is True
        elif "matches" in check:
            assert re.fullmatch(check["matches"], str(lookup(document, check))), check
        else:
            assert lookup(document, check) == check["equals"], check


@pytest.mark.parametrize(("name", "index"), MUTATIONS)
def test_dm_rejects_the_mutation(name, index, tmp_path):
    mutation = case(name)["mutations"][index]
    folder = copy(name, tmp_path)
    if "remove" in mutation:
        (folder / mutation["remove"]).unlink()
    if "edit" in mutation:
        edit = mutation["edit"]
        path = folder / edit["file"]
        text = path.read_text()
        assert text.count(edit["old"]) == 1, f"{edit['old']!r} must occur once in {edit['file']}"
        path.write_text(text.replace(edit["old"], edit["new"]))
    result = preview(folder)
    assert result.returncode == 1, f"{mutation['what']}: accepted\n{result.stderr}"
    for message in mutation.get("errors") or [mutation["error"]]:
        assert f"error: {message}" in result.stderr, mutation["what"]
