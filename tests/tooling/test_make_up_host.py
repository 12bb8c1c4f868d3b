"""`localvm up` (what `make up` runs) on the host, with a stand-in for qemu: the first run, then
the operator's inner loop on the running stack (edit app.py, `make up`, look).

Real: localvm's orchestration and output, the local cloud process (localvm.cloud) with its
emulated Google APIs, the real `gcloud` and scripts/deploy.sh deploying into it, pebble, qemu-img.
Stand-ins: Google's servers (emulated, as everywhere), and the VM: tests/fake_qemu.py answers as
a guest would (QMP, /healthz with the version of the files in its metadata, a refused version
for an app that fails to import) without booting anything, so the VM's own converge, HTTPS and
rollback are not tested here (tests/e2e/test_make_up.py boots the real one). The image is an
empty stand-in in a private cache (LOCALVM_CACHE), so nothing is built.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from localvm.image import recipe_key
from localvm.stack import checkout_version
from tests.conftest import REPO, copy_stack

pytestmark = [
    pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the real gcloud"),
    pytest.mark.skipif(shutil.which("pebble") is None, reason="needs Debian's pebble"),
]


@pytest.fixture
def host(tmp_path):
    """PATH with the qemu stand-in first, an image cache holding an empty image, and a state
    directory of the test's own (the clone's may hold a real `make up` stack)."""
    image = tmp_path / "cache" / recipe_key()
    image.mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img", "manifest.json"):
        (image / name).write_text("")
    subprocess.run(["truncate", "-s", "1M", str(image / "disk.raw")], check=True)
    fake = tmp_path / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/bash\n"
        f"export FAKE_GUEST_PYTHON={sys.executable}\n"
        f'exec -a qemu-system-x86_64 {sys.executable} {REPO / "tests" / "fake_qemu.py"} "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GCP_"))},
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "LOCALVM_CACHE": str(tmp_path / "cache"),
        "LOCALVM_STATE": str(tmp_path / "state" / "localvm"),
        # The stand-in serves no HTTPS: this bounds the wait for it.
        "LOCALVM_BOOT_TIMEOUT": "15",
    }
    yield env
    subprocess.run([sys.executable, "-m", "localvm", "down"], env=env, check=False)


def localvm_up(env: dict[str, str], config: Path) -> subprocess.CompletedProcess:
    """`localvm up CONFIG`, exit status and output kept (a refusal is an expected result)."""
    command = [sys.executable, "-m", "localvm", "up", str(config)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_make_up_boots_then_redeploys_the_checkout_and_names_a_refusal(host, tmp_path):
    (tmp_path / "stack").mkdir()
    stack = copy_stack(tmp_path / "stack")
    config = stack / "deployment.yaml"
    first = localvm_up(host, config)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    print(first.stdout)
    assert len(lines) <= 40
    assert [line.split(":")[0] for line in lines[:5]] == [
        "==> app",
        "==> host",
        "==> CA",
        "==> cloud",
        "==> deploy",
    ]
    assert (
        "deploy: scripts/deploy.sh with the real gcloud, DEPLOY_ENGINE=dm: deployment "
        in (lines[4])
    )
    assert f"the VM serves version {checkout_version(stack)}" in first.stdout
    assert lines[-1].startswith("https://127.0.0.1:")
    assert len([line for line in lines if "203.0.113." in line]) == 1

    # The inner loop: edit app.py, `make up`, look.
    app = stack / "app" / "app.py"
    original = app.read_text()
    app.write_text(original.replace("Hello World from BenchSci!", "Hello from the loop"))
    changed = checkout_version(stack)
    again = localvm_up(host, config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == lines[-1]
    assert f"converge: the VM serves version {changed}" in again.stdout
    assert len(again.stdout.splitlines()) <= 25

    app.write_text(original + "import a_module_that_is_not_there\n")
    refused = localvm_up(host, config)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert (
        f"the VM refused version {checkout_version(stack)}: app.py failed to import: "
        "ModuleNotFoundError: No module named 'a_module_that_is_not_there'; it still serves "
        f"version {changed}"
    ) in refused.stderr

    app.write_text("def broken(:\n")
    broken = localvm_up(host, config)
    assert broken.returncode == 1
    assert "app/app.py, line 1: " in broken.stderr and "Traceback" not in broken.stderr
