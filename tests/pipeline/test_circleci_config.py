""".circleci/config.yml: valid for CircleCI, and it runs what the README tells people to run.

Real: check-jsonschema with the CircleCI schema it ships (vendor.circle-ci), the Makefile, the
README, and the local gcloud. Emulated: nothing. (CircleCI itself is not run here.)
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CONFIG = REPO / ".circleci" / "config.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"


def load() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def check_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.circle-ci", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_commands(config: dict) -> list[tuple[str, str]]:
    commands = []
    for job_name, job in config["jobs"].items():
        for step in job["steps"]:
            if isinstance(step, dict) and "run" in step:
                run = step["run"]
                commands.append((job_name, run["command"] if isinstance(run, dict) else run))
    return commands


def test_config_validates_against_circleci_schema():
    result = check_schema(CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_config(tmp_path):
    """The validator really validates: a job with a misspelled key fails it."""
    config = load()
    config["jobs"]["test"]["stepz"] = config["jobs"]["test"].pop("steps")
    broken = tmp_path / "config.yml"
    broken.write_text(yaml.safe_dump(config))
    assert check_schema(broken).returncode != 0


def test_every_ci_command_is_a_make_target_the_readme_documents():
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][\w-]*)\s*:(?!=)", makefile, re.MULTILINE))
    commands = run_commands(load())
    assert commands
    for job, command in commands:
        words = shlex.split(command)
        assert words[0] == "make", f"{job}: {command!r} is not a make target"
        target = words[1]
        assert target in targets, f"{job}: make {target} is not in the Makefile"
        assert f"make {target}" in readme, f"{job}: the README never mentions `make {target}`"


def test_deploy_runs_on_master_only_after_the_tests_and_the_vm_boot_one_at_a_time():
    workflow = next(iter(load()["workflows"].values()))
    jobs = {}
    for entry in workflow["jobs"]:
        name, settings = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        jobs[name] = settings or {}
    deploy = jobs["deploy"]
    assert deploy["requires"] == ["test", "e2e"]
    assert deploy["filters"]["branches"] == {"only": "master"}
    assert deploy.get("serial-group")
    preview = jobs["preview"]
    assert preview["filters"]["branches"] == {"ignore": "master"}
    assert "test" in jobs and not jobs["test"].get("filters")


def test_test_job_keeps_results_manifest_and_a_pip_cache_keyed_on_requirements():
    steps = load()["jobs"]["test"]["steps"]
    restore = next(s["restore_cache"] for s in steps if "restore_cache" in s)
    save = next(s["save_cache"] for s in steps if "save_cache" in s)
    for requirements in ("tools/requirements.txt", "app/requirements.txt"):
        assert (REPO / requirements).exists()
        assert f'checksum "{requirements}"' in save["key"]
        assert save["key"] in restore["keys"]
    assert any("store_test_results" in s for s in steps)
    artifacts = [s["store_artifacts"]["path"] for s in steps if "store_artifacts" in s]
    assert "manifest.yaml" in artifacts
    assert any("--junitxml=build/test-results" in c for _, c in run_commands(load()))


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs gcloud")
def test_ci_gcloud_is_the_version_the_offline_tests_ran():
    """CI deploys with the gcloud these tests exercised; bump both together."""
    images = [d["image"] for e in load()["executors"].values() for d in e.get("docker", [])]
    (image,) = [i for i in images if "cloudsdktool/google-cloud-cli" in i]
    pinned = re.fullmatch(r".*:(\d+\.\d+\.\d+)(-\w+)?", image)
    assert pinned, f"{image} is not pinned to a version"
    local = subprocess.run(["gcloud", "version"], capture_output=True, text=True, check=True)
    assert f"Google Cloud SDK {pinned.group(1)}\n" in local.stdout
