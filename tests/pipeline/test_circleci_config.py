""".circleci/config.yml: valid for CircleCI, and it runs what the README tells people to run.

Real: check-jsonschema with the CircleCI schema it ships (vendor.circle-ci), the Makefile, the
README, and the local gcloud. Emulated: nothing. (CircleCI itself is not run here.)
"""

from __future__ import annotations

import hashlib
import os
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


INSTALL_GCLOUD = REPO / "scripts" / "install-gcloud.sh"


def pinned_gcloud() -> str:
    """The one statement of the gcloud version: scripts/install-gcloud.sh."""
    result = subprocess.run(
        ["bash", str(INSTALL_GCLOUD), "--version"], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def make_prerequisites(target: str) -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:([^#\n]*)", makefile, re.MULTILINE)
    assert match, f"make {target} is not in the Makefile"
    return set(match.group(1).replace("|", " ").split())


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs gcloud")
def test_ci_gcloud_is_the_version_the_offline_tests_ran():
    """CI deploys with the gcloud these tests exercised; bump both together."""
    version = pinned_gcloud()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    local = subprocess.run(["gcloud", "version"], capture_output=True, text=True, check=True)
    assert f"Google Cloud SDK {version}\n" in local.stdout
    # Every job step that runs gcloud gets it through a make target that installs that version.
    uses_gcloud = {
        target
        for _, command in run_commands(load())
        if (target := shlex.split(command)[1]) not in ("image-key", "preview", "smoke")
    }
    assert uses_gcloud == {"check", "e2e", "deploy-preview", "deploy"}
    for target in uses_gcloud:
        assert "gcloud" in make_prerequisites(target), f"make {target} does not install gcloud"


def test_executor_images_are_pinned_and_not_under_a_deleting_retention_policy():
    """Google's gcloud image registry deletes numbered tags after 365 days (cloud-sdk-docker's
    README), which is how a pinned 528.0.0-slim disappeared. CircleCI's cimg images are
    "generally" never removed once published (CircleCI convenience images support policy,
    "Image lifespan / EOL"); a floating tag (current, latest, edge) would not be reproducible.
    """
    images = [d["image"] for e in load()["executors"].values() for d in e.get("docker", [])]
    assert images
    for image in images:
        assert "cloudsdktool" not in image and "google-cloud-cli" not in image, image
        name, _, tag = image.partition(":")
        assert name.startswith("cimg/"), image
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{image}: pin an exact version"


@pytest.fixture
def bare_path(tmp_path) -> Path:
    """A PATH holding only the tools the installer uses: no gcloud on it."""
    bin_dir = tmp_path / "tools-bin"
    bin_dir.mkdir()
    for tool in ("bash", "curl", "sha256sum", "tar", "gzip", "mkdir", "rm", "ln", "mktemp",
                 "head", "cut", "id", "sudo", "printf", "env"):  # fmt: skip
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def run_installer(path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL_GCLOUD)],
        env={"PATH": str(path), "CI": "true", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_gcloud_fails_closed_without_a_recorded_checksum(tmp_path, bare_path):
    """With no gcloud on PATH and no SHA-256 recorded, the installer refuses before downloading
    anything (the file:// URL here does not exist, so a download would fail differently)."""
    result = run_installer(bare_path, GCLOUD_ARCHIVE_URL=f"file://{tmp_path}/missing.tar.gz")
    assert result.returncode == 1, result.stderr
    assert "refusing to install an unchecked download" in result.stderr


def test_install_gcloud_checks_the_archive_and_links_gcloud(tmp_path, bare_path):
    """The checksum really gates the install: a wrong SHA-256 leaves nothing installed, the
    right one unpacks google-cloud-sdk/ and links bin/gcloud. Real: curl (file://), sha256sum,
    tar. The archive is a stand-in whose gcloud prints the pinned version."""
    if os.getuid() != 0 and subprocess.run(["sudo", "-n", "true"]).returncode != 0:
        pytest.skip("the installer needs root or passwordless sudo")
    version = pinned_gcloud()
    sdk = tmp_path / "src" / "google-cloud-sdk" / "bin"
    sdk.mkdir(parents=True)
    (sdk / "gcloud").write_text(f"#!/bin/sh\necho 'Google Cloud SDK {version}'\n")
    (sdk / "gcloud").chmod(0o755)
    archive = tmp_path / "gcloud.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path / "src"), "."], check=True)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    settings = {
        "GCLOUD_ARCHIVE_URL": f"file://{archive}",
        "GCLOUD_PREFIX": str(tmp_path / "opt"),
        "GCLOUD_BIN_DIR": str(tmp_path / "bin"),
    }

    wrong = run_installer(bare_path, GCLOUD_SHA256="0" * 64, **settings)
    assert wrong.returncode == 1 and "checksum mismatch" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "bin" / "gcloud").exists()
    right = run_installer(bare_path, GCLOUD_SHA256=digest, **settings)
    assert right.returncode == 0, right.stderr
    linked = subprocess.run([str(tmp_path / "bin" / "gcloud")], capture_output=True, text=True)
    assert linked.stdout.strip() == f"Google Cloud SDK {version}"


def packages_installed_by(target: str) -> set[str]:
    """The Debian packages `make TARGET` asks for, from make's own dry run (-B: as if nothing
    were built yet, so the venv's recipe is included)."""
    dry_run = subprocess.run(
        ["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True
    )
    purposes = []
    for line in dry_run.stdout.splitlines():
        words = shlex.split(line)
        if words[:2] == ["bash", "scripts/install-system-deps.sh"]:
            purposes += words[2:]
    listed = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-system-deps.sh"), "--list", *purposes],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listed.stdout.split())


def test_make_check_installs_no_vm_packages_and_make_e2e_does():
    """CI's test job runs `make check`, which boots no VM: it must not spend minutes installing
    qemu, a browser and debootstrap. `make e2e` needs them."""
    vm = {"qemu-system-x86", "qemu-utils", "chromium", "debootstrap"}
    check = packages_installed_by("check")
    assert {"shellcheck", "python3-venv", "graphviz"} <= check
    assert not check & vm, check & vm
    assert vm <= packages_installed_by("e2e")
