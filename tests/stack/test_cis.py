"""The CIS Google Cloud Foundations Benchmark network and VM items the stack meets, checked on the
deployment as `make preview` expands it (docs/security.md lists every item, including the ones
the stack deviates from and why).

Real: the templates, schemas and deployment.yaml expanded by dmlocal; firewall decisions made
with GCP's rule semantics (dmlocal.reachability). Nothing reaches Google.
"""

import pytest

from dmlocal.expand import expand_path
from dmlocal.reachability import evaluate, firewall_rules, resolver_for
from tests.conftest import REPO

INTERNET = "203.0.113.7"  # TEST-NET-3: stands for any address outside the allowed SSH range


@pytest.fixture(scope="module")
def expansion():
    return expand_path(REPO / "deployment.yaml")


@pytest.fixture(scope="module")
def instance(expansion):
    (vm,) = expansion.of_type("compute.v1.instance")
    return vm["properties"]


def metadata(instance):
    return {item["key"]: item["value"] for item in instance["metadata"]["items"]}


def from_internet(expansion, instance, port):
    return evaluate(
        firewall_rules(expansion.resources),
        INTERNET,
        "tcp",
        port,
        tags=instance["tags"]["items"],
        direction="INGRESS",
        resolve=resolver_for(expansion.resources, expansion.layout),
    )


def test_3_2_no_legacy_network(expansion):
    for network in expansion.of_type("compute.v1.network"):
        assert network["properties"]["autoCreateSubnetworks"] is False
        assert "IPv4Range" not in network["properties"]  # only legacy networks have one


def test_3_6_and_3_7_no_ssh_or_rdp_from_the_internet(expansion, instance):
    for port in (22, 3389):
        decision = from_internet(expansion, instance, port)
        assert not decision.allowed, decision


def test_3_8_every_subnet_has_flow_logs_as_cis_recommends(expansion):
    subnets = expansion.of_type("compute.v1.subnetwork")
    assert subnets
    for subnet in subnets:
        log_config = subnet["properties"]["logConfig"]
        assert log_config["enable"] is True
        # The benchmark's remediation: 5-second aggregation, every flow, all metadata, no filter.
        assert log_config["aggregationInterval"] == "INTERVAL_5_SEC"
        assert log_config["flowSampling"] == 1.0
        assert log_config["metadata"] == "INCLUDE_ALL_METADATA"
        assert "filterExpr" not in log_config


def test_4_1_and_4_2_no_default_service_account_nor_full_api_scopes(instance):
    assert instance["serviceAccounts"] == []


def test_4_3_project_wide_ssh_keys_are_blocked(instance):
    assert metadata(instance)["block-project-ssh-keys"] == "TRUE"


def test_4_4_os_login_is_on(instance):
    assert metadata(instance)["enable-oslogin"] == "TRUE"


def test_4_5_serial_port_access_stays_off(instance):
    # GCE's default is off; the stack must not turn it on.
    assert metadata(instance).get("serial-port-enable", "FALSE").upper() in ("FALSE", "0")


def test_4_6_ip_forwarding_is_off(instance):
    assert instance.get("canIpForward", False) is False


def test_4_8_shielded_vm(instance):
    shielded = instance["shieldedInstanceConfig"]
    assert shielded == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
