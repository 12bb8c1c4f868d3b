"""firewall.py: exactly the required rules, and what they let through under GCP's semantics.

Required: allow all egress; deny all other ingress, but allow TCP 80 and 443 from anywhere,
ICMP from anywhere, TCP 22 from 104.154.0.0/15 only, and all TCP/UDP inside the VPC.
"""

import pytest

from dmlocal.expand import expand_path
from dmlocal.reachability import evaluate, firewall_rules, resolver_for
from dmlocal.references import template_outputs
from tests.conftest import REPO, by_name, deployment_properties, render

SUBNET = "10.10.0.0/24"


def rules(**overrides) -> dict[str, dict]:
    properties = {**deployment_properties("hello-firewall"), **overrides}
    return {
        name: resource["properties"]
        for name, resource in by_name(render("firewall.py", "hello-firewall", properties)).items()
    }


def summary(rule: dict) -> tuple:
    """A rule reduced to what decides traffic: no descriptions, no ordering noise."""
    verdict = "allow" if "allowed" in rule else "deny"
    protocols = tuple(
        (entry["IPProtocol"], tuple(entry.get("ports", ())))
        for entry in rule.get("allowed", rule.get("denied"))
    )
    ranges = tuple(rule.get("sourceRanges", rule.get("destinationRanges")))
    return (
        rule["direction"],
        rule["priority"],
        verdict,
        protocols,
        ranges,
        tuple(rule.get("targetTags", ())),
    )


def test_exactly_the_required_rule_set():
    vpc_ranges = deployment_properties("hello-firewall")["vpcSourceRanges"]
    assert {name: summary(rule) for name, rule in rules().items()} == {
        "hello-firewall-allow-web": (
            "INGRESS",
            1000,
            "allow",
            (("tcp", ("80", "443")),),
            ("0.0.0.0/0",),
            ("hello-web",),
        ),
        "hello-firewall-allow-icmp": (
            "INGRESS",
            1000,
            "allow",
            (("icmp", ()),),
            ("0.0.0.0/0",),
            ("hello-web",),
        ),
        "hello-firewall-allow-ssh": (
            "INGRESS",
            1000,
            "allow",
            (("tcp", ("22",)),),
            ("104.154.0.0/15",),
            ("hello-web",),
        ),
        "hello-firewall-allow-internal": (
            "INGRESS",
            1000,
            "allow",
            (("tcp", ("0-65535",)), ("udp", ("0-65535",))),
            tuple(vpc_ranges),
            (),
        ),
        "hello-firewall-deny-ingress": (
            "INGRESS",
            65535,
            "deny",
            (("all", ()),),
            ("0.0.0.0/0",),
            (),
        ),
        "hello-firewall-allow-egress": (
            "EGRESS",
            65535,
            "allow",
            (("all", ()),),
            ("0.0.0.0/0",),
            (),
        ),
    }


def test_internal_rule_follows_the_vpcs_own_subnet():
    """Wired through the network template's output, which names the subnet's own range."""
    assert deployment_properties("hello-firewall")["vpcSourceRanges"] == [
        "$(ref.hello-vpc.subnetCidr)"
    ]
    outputs = template_outputs(expand_path(REPO / "deployment.yaml").layout)
    assert outputs["hello-vpc"]["subnetCidr"] == "$(ref.hello-vpc-subnet.ipCidrRange)"


def test_every_rule_is_in_the_stacks_network():
    assert {rule["network"] for rule in rules().values()} == {"$(ref.hello-vpc.network)"}
    outputs = template_outputs(expand_path(REPO / "deployment.yaml").layout)
    assert outputs["hello-vpc"]["network"] == "$(ref.hello-vpc.selfLink)"


def test_ssh_ranges_and_tag_are_configurable():
    changed = rules(sshSourceRanges=["203.0.113.0/24"], targetTag="blue")
    assert changed["hello-firewall-allow-ssh"]["sourceRanges"] == ["203.0.113.0/24"]
    assert changed["hello-firewall-allow-web"]["targetTags"] == ["blue"]


def test_rules_do_not_share_mutable_lists():
    rendered = rules()
    rendered["hello-firewall-allow-web"]["targetTags"].append("oops")
    assert rendered["hello-firewall-allow-ssh"]["targetTags"] == ["hello-web"]


# --- What the rules let through, evaluated with GCP's semantics (dmlocal.reachability) -------

MATRIX = [
    # (source, protocol, port, allowed?) for traffic into the web VM.
    ("203.0.113.7", "tcp", 80, True),
    ("203.0.113.7", "tcp", 443, True),
    ("203.0.113.7", "icmp", None, True),
    ("203.0.113.7", "tcp", 22, False),
    ("104.154.0.1", "tcp", 22, True),
    ("104.155.255.254", "tcp", 22, True),
    ("104.153.255.255", "tcp", 22, False),
    ("104.156.0.1", "tcp", 22, False),
    ("203.0.113.7", "tcp", 8080, False),
    ("203.0.113.7", "udp", 53, False),
    ("10.10.0.7", "udp", 53, True),
    ("10.10.0.7", "tcp", 5432, True),
    ("10.10.1.7", "tcp", 5432, False),
    ("192.168.1.5", "tcp", 5432, False),
    ("172.16.0.1", "udp", 53, False),
    ("10.10.0.7", "sctp", 9, False),
]


@pytest.fixture(scope="module")
def expansion():
    return expand_path(REPO / "deployment.yaml")


@pytest.fixture(scope="module")
def vm_tags(expansion):
    return expansion.resource("hello-vm")["properties"]["tags"]["items"]


def decide(expansion, remote, protocol, port, tags, direction="INGRESS"):
    """The deployment's own firewall rules, with their $(ref...) ranges resolved, on one packet."""
    return evaluate(
        firewall_rules(expansion.resources),
        remote,
        protocol,
        port,
        tags=tags,
        direction=direction,
        resolve=resolver_for(expansion.resources, expansion.layout),
    )


@pytest.mark.parametrize(("source", "protocol", "port", "allowed"), MATRIX)
def test_reachability_matrix(expansion, vm_tags, source, protocol, port, allowed):
    decision = decide(expansion, source, protocol, port, vm_tags)
    assert decision.allowed is allowed, decision


def test_denials_come_from_the_explicit_deny_rule_not_the_implied_one(expansion, vm_tags):
    decision = decide(expansion, "203.0.113.7", "tcp", 22, vm_tags)
    assert (decision.rule, decision.priority) == ("hello-firewall-deny-ingress", 65535)


def test_public_rules_do_not_reach_an_untagged_vm(expansion):
    assert not decide(expansion, "203.0.113.7", "tcp", 80, tags=[]).allowed


def test_all_egress_is_allowed(expansion, vm_tags):
    for remote, protocol, port in [("8.8.8.8", "udp", 53), ("151.101.0.1", "tcp", 443)]:
        decision = decide(expansion, remote, protocol, port, vm_tags, direction="EGRESS")
        assert decision.allowed, decision
