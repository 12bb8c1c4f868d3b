""".circleci/config.yml: valid for CircleCI, and it runs what the README tells people to run.

Real: check-jsonschema with the CircleCI schema it ships (vendor.circle-ci), the Makefile, the
README, the local gcloud, and apt, dpkg and gpg running scripts/install-gcloud.sh. Emulated:
Google's apt repository, as a signed local one (below). CircleCI itself is not run here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


def workflow_jobs(workflow: dict) -> dict[str, dict]:
    jobs = {}
    for entry in workflow["jobs"]:
        name, settings = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        jobs[name] = settings or {}
    return jobs


def test_deploy_runs_on_master_only_after_the_tests_and_the_vm_boot_one_at_a_time():
    jobs = workflow_jobs(load()["workflows"]["test-preview-deploy"])
    deploy = jobs["deploy"]
    assert deploy["requires"] == ["test", "e2e"]
    assert deploy["filters"]["branches"] == {"only": "master"}
    assert deploy.get("serial-group")
    preview = jobs["preview"]
    assert preview["filters"]["branches"] == {"ignore": "master"}
    assert "test" in jobs and not jobs["test"].get("filters")


def holds(condition, values: dict[str, str]) -> bool:
    """A CircleCI logic statement (`when:`), evaluated as CircleCI documents it
    (circleci.com/docs/guides/orchestrate/pipeline-variables, "Logic statements"): and, or,
    not, equal, and a bare value is true unless empty, false or 0. `<< pipeline.X >>` are the
    pipeline values in `values`."""

    def value(v):
        if isinstance(v, str):
            return re.sub(r"<<\s*pipeline\.([\w.]+)\s*>>", lambda m: values.get(m.group(1), ""), v)
        return v

    if isinstance(condition, dict):
        ((op, arg),) = condition.items()
        if op == "and":
            return all(holds(c, values) for c in arg)
        if op == "or":
            return any(holds(c, values) for c in arg)
        if op == "not":
            return not holds(arg, values)
        if op == "equal":
            return len({str(value(v)) for v in arg}) == 1
        raise AssertionError(f"unknown logic operator {op}")
    return value(condition) not in ("", False, 0, None, "false")


def running_workflows(trigger_source: str, schedule: str = "") -> set[str]:
    values = {"trigger_source": trigger_source, "schedule.name": schedule}
    return {
        name
        for name, workflow in load()["workflows"].items()
        if holds(workflow.get("when", True), values)
    }


def test_the_drift_schedule_runs_the_drift_check_alone_and_pushes_never_run_it():
    """A schedule trigger runs every workflow unless `when` filters them (CircleCI, "Schedule
    triggers with multiple workflows"): the drift-check schedule runs the drift check and
    nothing else, a push or an API trigger runs everything but it, another schedule neither."""
    assert running_workflows("scheduled_pipeline", "drift-check") == {"drift-check"}
    for push in ("webhook", "api"):
        assert running_workflows(push) == {"test-preview-deploy"}
    assert running_workflows("scheduled_pipeline", "nightly") == set()


def test_the_drift_check_is_read_only_and_fails_red_with_its_report():
    """One job, `make drift` (non-zero on drift, so the job is red), in the gcp-drift context,
    whose account only reads (tests/pipeline/test_wif.py); nothing repairs or deploys on the
    schedule, and the JSON report is kept as an artifact."""
    config = load()
    jobs = workflow_jobs(config["workflows"]["drift-check"])
    assert list(jobs) == ["drift"] and jobs["drift"]["context"] == "gcp-drift"
    commands = [c for job, c in run_commands(config) if job == "drift"]
    assert [shlex.split(c)[:2] for c in commands] == [["make", "drift"]]
    (out,) = [w.split("=", 1)[1] for w in shlex.split(commands[0]) if w.startswith("JSON_OUT=")]
    artifacts = [s["store_artifacts"]["path"] for s in config["jobs"]["drift"]["steps"]
                 if "store_artifacts" in s]  # fmt: skip
    assert any(out.startswith(a + "/") for a in artifacts)
    assert "make drift" in (REPO / "docs" / "ci.md").read_text()


def test_the_deploy_job_rolls_back_only_after_a_failed_smoke_test_on_master():
    """The steps after `make deploy`: smoke; on success only, record the commit; on failure
    only, the rollback. The job is master's only and sits in the serial group, so the rollback
    never overlaps another deploy. That the rollback acts on a smoke failure and not on a
    failed deploy is scripts/rollback.sh's check of the file smoke writes
    (tests/pipeline/test_rollback.py runs these steps and that check)."""
    runs = [
        s["run"] for s in load()["jobs"]["deploy"]["steps"] if isinstance(s, dict) and "run" in s
    ]
    commands = [shlex.split(run["command"])[:2] for run in runs]
    assert commands == [
        ["make", "deploy"],
        ["make", "smoke"],
        ["make", "record-good"],
        ["make", "rollback"],
    ]
    assert [run.get("when", "on_success") for run in runs] == [
        "on_success",
        "on_success",
        "on_success",
        "on_fail",
    ]
    assert shlex.split(runs[-1]["command"])[2:] == ["AFTER_FAILED_SMOKE=1"]
    # What make runs for that step (-n: print, do not run).
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", *shlex.split(runs[-1]["command"])[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "scripts/rollback.sh" in dry_run.stdout
    assert "--after-failed-smoke" in dry_run.stdout
    workflow = next(iter(load()["workflows"].values()))
    deploy = next(e["deploy"] for e in workflow["jobs"] if isinstance(e, dict) and "deploy" in e)
    assert deploy["filters"]["branches"] == {"only": "master"}
    assert deploy.get("serial-group")


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
        if (target := shlex.split(command)[1])
        not in ("image-key", "image", "preview", "smoke", "drift")
    }
    assert uses_gcloud == {"check", "e2e", "deploy-preview", "deploy", "record-good", "rollback"}
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


# --- scripts/install-gcloud.sh against a local apt repository ---------------------------------
# Real: apt-get, apt-cache and dpkg (installing into a private root: APT_ROOT), gpg (a throwaway
# key signs the repository's InRelease), apt-ftparchive (Packages, Release), dpkg-deb, curl.
# Emulated: Google's repository, as a local directory laid out as Debian's repository format
# specifies (wiki.debian.org/DebianRepository/Format: dists/SUITE/InRelease, COMPONENT/binary-
# ARCH/Packages, pool/); its google-cloud-cli is a stand-in whose gcloud prints the pinned
# version. The host's apt configuration, package database and gcloud are never touched.

APT_REPO_TOOLS = ("apt-get", "apt-ftparchive", "dpkg-deb", "gpg", "curl")


def needs_root_for_apt():
    if not all(shutil.which(tool) for tool in APT_REPO_TOOLS):
        pytest.skip(f"needs {', '.join(APT_REPO_TOOLS)} (apt-ftparchive: apt-utils)")
    if os.getuid() != 0 and subprocess.run(["sudo", "-n", "true"]).returncode != 0:
        pytest.skip("dpkg installs (even into a private root) only as root or with sudo")


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """Two throwaway signing keys: the repository's, and a stranger's. Returns each one's
    GNUPGHOME (for signing) and armored public key (what the installer downloads)."""
    keys = {}
    for name in ("repository", "stranger"):
        home = tmp_path_factory.mktemp(f"gpg-{name}")
        home.chmod(0o700)
        env = {**os.environ, "GNUPGHOME": str(home)}
        gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", f"{name} <{name}@example.invalid>", "ed25519",
                        "sign", "never"], env=env, check=True)  # fmt: skip
        public = home / "public.asc"
        public.write_bytes(subprocess.run([*gpg, "--armor", "--export"], env=env,
                                          capture_output=True, check=True).stdout)  # fmt: skip
        keys[name] = home
    yield keys
    for home in keys.values():
        subprocess.run(
            ["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)}
        )


def stand_in_deb(pool: Path, version: str) -> Path:
    """google-cloud-cli_VERSION-0_all.deb laid out as Google's: /usr/lib/google-cloud-sdk with a
    VERSION file, /usr/bin/gcloud linking to it."""
    tree = pool.parent / f"tree-{version}"
    sdk = tree / "usr" / "lib" / "google-cloud-sdk"
    (sdk / "bin").mkdir(parents=True)
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text(
        f"Package: google-cloud-cli\nVersion: {version}-0\nArchitecture: all\n"
        "Maintainer: Test <test@example.invalid>\nDescription: stand-in for Google's package\n"
    )
    (sdk / "VERSION").write_text(f"{version}\n")
    (sdk / "bin" / "gcloud").write_text(f"#!/bin/sh\necho 'Google Cloud SDK {version}'\n")
    (sdk / "bin" / "gcloud").chmod(0o755)
    (tree / "usr" / "bin").mkdir()
    (tree / "usr" / "bin" / "gcloud").symlink_to("../lib/google-cloud-sdk/bin/gcloud")
    deb = pool / f"google-cloud-cli_{version}-0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
                   capture_output=True, check=True)  # fmt: skip
    shutil.rmtree(tree)
    return deb


def local_apt_repo(root: Path, gnupghome: Path, *versions: str) -> Path:
    """A signed apt repository with suite cloud-sdk, component main, holding google-cloud-cli at
    each version; returns its directory."""
    pool = root / "pool"
    pool.mkdir(parents=True)
    for version in versions:
        stand_in_deb(pool, version)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    dist = root / "dists" / "cloud-sdk"
    binary = dist / "main" / f"binary-{arch}"
    binary.mkdir(parents=True)
    ftparchive = ["apt-ftparchive", "-o", "APT::FTPArchive::Release::Suite=cloud-sdk",
                  "-o", "APT::FTPArchive::Release::Components=main",
                  "-o", f"APT::FTPArchive::Release::Architectures={arch}"]  # fmt: skip
    packages = subprocess.run([*ftparchive, "packages", "pool"], cwd=root, capture_output=True,
                              check=True).stdout  # fmt: skip
    (binary / "Packages").write_bytes(packages)
    release = subprocess.run([*ftparchive, "release", "."], cwd=dist, capture_output=True,
                             check=True).stdout  # fmt: skip
    (dist / "Release").write_bytes(release)
    subprocess.run(["gpg", "--batch", "--yes", "--clearsign", "-o", str(dist / "InRelease"),
                    str(dist / "Release")], env={**os.environ, "GNUPGHOME": str(gnupghome)},
                   check=True)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def path_without_gcloud(tmp_path_factory) -> str:
    """This machine's PATH with every command but gcloud: the installer sees no gcloud."""
    bin_dir = tmp_path_factory.mktemp("path-without-gcloud")
    for directory in os.environ["PATH"].split(os.pathsep):
        for command in Path(directory).glob("*") if Path(directory).is_dir() else ():
            link = bin_dir / command.name
            if command.name != "gcloud" and not link.exists() and not link.is_symlink():
                link.symlink_to(command)
    return str(bin_dir)


def run_installer(path: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL_GCLOUD), *args],
        env={"PATH": path, "CI": "true", "HOME": os.environ.get("HOME", "/"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def install_from(repo: Path, key_home: Path, apt_root: Path, path: str):
    return run_installer(
        path,
        GCLOUD_APT_REPO=f"file://{repo}",
        GCLOUD_APT_KEY=f"file://{key_home / 'public.asc'}",
        APT_ROOT=str(apt_root),
    )


def host_apt_state() -> dict[str, bytes]:
    files = ["/var/lib/dpkg/status", "/etc/apt/sources.list.d/google-cloud-sdk.list",
             "/usr/share/keyrings/cloud.google.gpg"]  # fmt: skip
    return {f: Path(f).read_bytes() if Path(f).exists() else b"" for f in files}


def test_install_gcloud_installs_the_pinned_version_from_a_signed_repository(
    tmp_path, signing_keys, path_without_gcloud
):
    """apt verifies the repository's signature with the downloaded key, installs exactly
    google-cloud-cli=VERSION-0 (the repository also offers a newer one), and the installed gcloud
    reports the pinned version. Where apt later upgraded it, a second run (CI) puts the pinned
    version back. The host's package database and apt sources are unchanged."""
    needs_root_for_apt()
    version = pinned_gcloud()
    newer = f"{int(version.split('.')[0]) + 1}.0.0"
    repo = local_apt_repo(tmp_path / "repo", signing_keys["repository"], version, newer)
    apt_root = tmp_path / "apt"
    gcloud = apt_root / "usr" / "bin" / "gcloud"
    status = apt_root / "var" / "lib" / "dpkg" / "status"
    before = host_apt_state()

    def installed() -> tuple[str, str]:
        package = re.search(r"^Package: google-cloud-cli\n(?:\S.*\n)*?Version: (.*)$",
                            status.read_text(), re.MULTILINE)  # fmt: skip
        reported = subprocess.run([gcloud], capture_output=True, text=True).stdout
        return (package.group(1) if package else "", reported)

    first = install_from(repo, signing_keys["repository"], apt_root, path_without_gcloud)
    assert first.returncode == 0, first.stdout + first.stderr
    assert installed() == (f"{version}-0", f"Google Cloud SDK {version}\n")
    assert "Status: install ok installed" in status.read_text()

    as_root = [] if os.getuid() == 0 else ["sudo"]
    subprocess.run([*as_root, "env", f"APT_CONFIG={apt_root}/etc/apt/apt.conf", "apt-get",
                    "install", "-y", "-qq", "google-cloud-cli"], capture_output=True,
                   check=True)  # fmt: skip
    assert installed() == (f"{newer}-0", f"Google Cloud SDK {newer}\n")
    again = install_from(repo, signing_keys["repository"], apt_root, path_without_gcloud)
    assert again.returncode == 0, again.stdout + again.stderr
    assert installed() == (f"{version}-0", f"Google Cloud SDK {version}\n")
    assert host_apt_state() == before


def test_install_gcloud_refuses_a_repository_signed_by_another_key(
    tmp_path, signing_keys, path_without_gcloud
):
    needs_root_for_apt()
    repo = local_apt_repo(tmp_path / "repo", signing_keys["stranger"], pinned_gcloud())

    result = install_from(repo, signing_keys["repository"], tmp_path / "apt", path_without_gcloud)

    assert result.returncode != 0
    assert "is not signed" in result.stderr and "NO_PUBKEY" in result.stderr, result.stderr
    assert not (tmp_path / "apt" / "usr" / "bin" / "gcloud").exists()


def test_install_gcloud_refuses_a_package_changed_after_the_index_was_signed(
    tmp_path, signing_keys, path_without_gcloud
):
    """Same size, one byte different: only the SHA-256 in the signed index can catch it."""
    needs_root_for_apt()
    version = pinned_gcloud()
    repo = local_apt_repo(tmp_path / "repo", signing_keys["repository"], version)
    deb = repo / "pool" / f"google-cloud-cli_{version}-0_all.deb"
    data = bytearray(deb.read_bytes())
    data[-10] ^= 0xFF
    deb.write_bytes(bytes(data))

    result = install_from(repo, signing_keys["repository"], tmp_path / "apt", path_without_gcloud)

    assert result.returncode != 0
    assert "Hash Sum mismatch" in result.stderr, result.stderr
    assert not (tmp_path / "apt" / "usr" / "bin" / "gcloud").exists()


def test_install_gcloud_names_the_version_a_repository_lacks(
    tmp_path, signing_keys, path_without_gcloud
):
    needs_root_for_apt()
    version = pinned_gcloud()
    older = f"{int(version.split('.')[0]) - 1}.0.0"
    repo = local_apt_repo(tmp_path / "repo", signing_keys["repository"], older)

    result = install_from(repo, signing_keys["repository"], tmp_path / "apt", path_without_gcloud)

    assert result.returncode == 1
    assert f"google-cloud-cli {version}-0 (gcloud {version}) is not in file://{repo}" in (
        result.stderr
    )
    assert f"it offers: {older}-0" in result.stderr
    assert not (tmp_path / "apt" / "usr" / "bin" / "gcloud").exists()


def dry_run_commands(path: str, **env: str) -> list[list[str]]:
    result = run_installer(path, "--dry-run", **env)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_install_gcloud_dry_run_shows_google_repository_pinned_version_and_key(
    tmp_path, path_without_gcloud
):
    """The real path (no overrides) is what Google documents for Debian/Ubuntu
    (cloud.google.com/sdk/docs/install#deb): the key from apt-key.gpg dearmored into
    /usr/share/keyrings/cloud.google.gpg, the cloud-sdk suite signed by it, then
    `apt-get install google-cloud-cli=VERSION-0`, without recommended components. The tested
    private-root run differs only in where apt keeps its files (APT_CONFIG)."""
    version = pinned_gcloud()
    before = host_apt_state()
    result = run_installer(path_without_gcloud, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert host_apt_state() == before
    keyring = "/usr/share/keyrings/cloud.google.gpg"
    assert (
        f"deb [signed-by={keyring}] https://packages.cloud.google.com/apt cloud-sdk main\n"
        in result.stdout
    )
    commands = dry_run_commands(path_without_gcloud)
    assert commands[0][-1] == "https://packages.cloud.google.com/apt/doc/apt-key.gpg"
    assert any(c[-4:-2] == ["--dearmor", "-o"] and c[-2] == keyring for c in commands), commands
    install = [c for c in commands if "install" in c and "apt-get" in c]
    assert len(install) == 1
    assert install[0][-2:] == ["--allow-downgrades", f"google-cloud-cli={version}-0"]
    assert "--no-install-recommends" in install[0]

    private = dry_run_commands(path_without_gcloud, APT_ROOT=str(tmp_path / "apt"))
    private_install = [c for c in private if "install" in c and "apt-get" in c]
    assert [w for w in private_install[0] if not w.startswith("APT_CONFIG=")] == install[0]


def test_install_gcloud_leaves_a_matching_or_personal_gcloud_alone(tmp_path, path_without_gcloud):
    """Pinned version on PATH: nothing to do, even in CI. Another version: a person's gcloud is
    kept with a warning; CI replaces it. The other-version SDK here is a directory with a
    VERSION file, which is all the installer reads."""
    version = pinned_gcloud()
    other = tmp_path / "sdk" / "google-cloud-sdk"
    (other / "bin").mkdir(parents=True)
    (other / "VERSION").write_text("1.0.0\n")
    (other / "bin" / "gcloud").write_text("#!/bin/sh\nexit 1\n")
    (other / "bin" / "gcloud").chmod(0o755)
    path = f"{other / 'bin'}:{path_without_gcloud}"

    person = run_installer(path, CI="false")
    assert person.returncode == 0 and person.stdout == ""
    assert f"using Google Cloud SDK 1.0.0 from PATH; this repo is tested with {version}" in (
        person.stderr
    )
    ci = run_installer(path, "--dry-run")
    assert ci.returncode == 0 and f"google-cloud-cli={version}-0" in ci.stdout

    (other / "VERSION").write_text(f"{version}\n")
    pinned = run_installer(path, "--dry-run")
    assert pinned.returncode == 0 and pinned.stdout == "", pinned.stdout


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs gcloud")
def test_make_gcloud_does_nothing_where_the_tested_gcloud_is_installed():
    """`make check`, `make e2e` and `make pytest` run `make gcloud` first; on a machine with the
    pinned gcloud it must neither print nor change anything."""
    local = subprocess.run(["gcloud", "version"], capture_output=True, text=True, check=True)
    if f"Google Cloud SDK {pinned_gcloud()}\n" not in local.stdout:
        pytest.skip("the gcloud on PATH is not the pinned version")
    for target in ("check", "e2e", "pytest"):
        assert "gcloud" in make_prerequisites(target)
    before = host_apt_state()
    result = subprocess.run(["make", "-s", "gcloud"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "CI": "true"})  # fmt: skip
    assert result.returncode == 0 and result.stdout == result.stderr == "", result
    assert host_apt_state() == before


def packages_installed_by(target: str) -> set[str]:
    """The Debian packages `make TARGET` asks for, from make's own dry run (-B: as if nothing
    were built yet, so the venv's recipe is included)."""
    dry_run = subprocess.run(
        ["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True
    )
    purposes = []
    for line in dry_run.stdout.splitlines():
        # Only these lines are parsed: a recipe's continued lines are not whole commands.
        if line.startswith("bash scripts/install-system-deps.sh "):
            purposes += shlex.split(line)[2:]
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
    vm = {"qemu-system-x86", "qemu-utils", "chromium", "mmdebstrap"}
    check = packages_installed_by("check")
    assert {"shellcheck", "python3-venv", "graphviz", "apt-utils"} <= check
    assert not check & vm, check & vm
    assert vm <= packages_installed_by("e2e")
