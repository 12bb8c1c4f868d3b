"""`dmlocal preview`, the engine behind `make preview`, run as operators run it."""

import shutil
import subprocess
from collections import Counter

import pytest
import yaml

from tests.conftest import REPO, copy_stack, run_dmlocal


def preview(*args: str) -> subprocess.CompletedProcess:
    return run_dmlocal("preview", *args)


def test_prints_the_full_expanded_stack():
    result = preview()
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert Counter(r["type"] for r in document["resources"]) == {
        "compute.v1.network": 1,
        "compute.v1.subnetwork": 1,
        "compute.v1.firewall": 6,
        "compute.v1.address": 1,
        "compute.v1.instance": 1,
        "gcp-types/monitoring-v3:projects.uptimeCheckConfigs": 1,
    }
    for resource in document["resources"]:
        assert set(resource) >= {"name", "type", "properties"}
    # deployment.yaml says $(ref.hello-vm.publicIp); DM shows vm.py's output substituted.
    assert document["outputs"] == [{"name": "publicIp", "value": "$(ref.hello-vm-ip.address)"}]


def test_renders_another_config(tmp_path):
    for name in ("network.py", "network.py.schema"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "other.yaml").write_text(
        "imports:\n  - path: network.py\nresources:\n"
        "  - name: lab\n    type: network.py\n"
        "    properties: {region: europe-west1, subnetCidr: 10.20.0.0/24}\n"
    )
    result = preview(str(tmp_path / "other.yaml"))
    assert result.returncode == 0, result.stderr
    names = [r["name"] for r in yaml.safe_load(result.stdout)["resources"]]
    assert names == ["lab", "lab-subnet"]


@pytest.fixture
def stack_copy(tmp_path):
    return copy_stack(tmp_path)


def test_bad_config_exits_1_naming_file_and_field(stack_copy):
    config = stack_copy / "deployment.yaml"
    config.write_text(config.read_text().replace("zone: us-central1-a", "zone: us-central1"))
    result = preview(str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{config}: resources[hello-vm].properties.zone:" in result.stderr


def test_missing_import_exits_1(stack_copy):
    (stack_copy / "app" / "hello@.service").unlink()
    imports = yaml.safe_load((stack_copy / "deployment.yaml").read_text())["imports"]
    index = [entry["path"] for entry in imports].index("app/hello@.service")
    result = preview(str(stack_copy / "deployment.yaml"))
    assert result.returncode == 1
    assert f"imports[{index}].path: file not found" in result.stderr
    assert "app/hello@.service" in result.stderr


def test_usage_error_exits_2():
    assert preview("--no-such-flag").returncode == 2
