"""GCP firewall semantics in dmlocal.reachability, on hand-written rule sets (no templates needed).

Each test builds the smallest rule set where the semantic it names decides the outcome, so a
broken evaluator (wrong priority order, allow winning a tie, tags ignored, ranges misparsed)
produces a different decision.
"""

import pytest

from dmlocal.reachability import (
    IMPLIED_ALLOW_EGRESS,
    IMPLIED_DENY_INGRESS,
    ReachabilityError,
    evaluate,
    firewall_rules,
    is_allowed,
    normalize_protocol,
    parse_port_range,
    resolver_for,
)


def rule(name, action="allow", priority=1000, proto="tcp", ports=None, **extra):
    entry = {"IPProtocol": proto}
    if ports is not None:
        entry["ports"] = ports
    body = {"name": name, "priority": priority, "direction": "INGRESS", **extra}
    body["allowed" if action == "allow" else "denied"] = [entry]
    return body


def test_no_rules_falls_to_implied_deny_ingress_and_allow_egress():
    d = evaluate([], "203.0.113.7", "tcp", 22)
    assert (d.allowed, d.rule, d.priority) == (False, IMPLIED_DENY_INGRESS, 65535)
    e = evaluate([], "203.0.113.7", "tcp", 443, direction="EGRESS")
    assert (e.allowed, e.rule, e.priority) == (True, IMPLIED_ALLOW_EGRESS, 65535)


def test_lowest_priority_number_wins_regardless_of_order():
    rules = [
        rule("deny-ssh", "deny", 2000, ports=["22"], sourceRanges=["0.0.0.0/0"]),
        rule("allow-ssh", "allow", 1000, ports=["22"], sourceRanges=["0.0.0.0/0"]),
    ]
    for ordered in (rules, rules[::-1]):
        d = evaluate(ordered, "198.51.100.1", "tcp", 22)
        assert (d.allowed, d.rule, d.priority) == (True, "allow-ssh", 1000)
    rules[0]["priority"] = 999
    d = evaluate(rules, "198.51.100.1", "tcp", 22)
    assert (d.allowed, d.rule, d.priority) == (False, "deny-ssh", 999)


def test_deny_beats_allow_at_equal_priority():
    rules = [
        rule("allow-web", "allow", 500, ports=["80"], sourceRanges=["0.0.0.0/0"]),
        rule("deny-web", "deny", 500, ports=["80"], sourceRanges=["0.0.0.0/0"]),
    ]
    for ordered in (rules, rules[::-1]):
        d = evaluate(ordered, "198.51.100.1", "tcp", 80)
        assert (d.allowed, d.rule) == (False, "deny-web")


def test_explicit_allow_at_65535_loses_to_implied_deny():
    rules = [rule("too-low", "allow", 65535, ports=["80"])]
    assert evaluate(rules, "198.51.100.1", "tcp", 80).rule == IMPLIED_DENY_INGRESS
    rules[0]["priority"] = 65534
    assert evaluate(rules, "198.51.100.1", "tcp", 80).rule == "too-low"


def test_explicit_deny_all_is_reported_instead_of_the_implied_rule():
    rules = [rule("deny-all-ingress", "deny", 65535, proto="all", sourceRanges=["0.0.0.0/0"])]
    d = evaluate(rules, "198.51.100.1", "udp", 53)
    assert (d.allowed, d.rule, d.priority) == (False, "deny-all-ingress", 65535)


def test_target_tags_must_intersect_vm_tags():
    rules = [rule("allow-web", ports=["80"], sourceRanges=["0.0.0.0/0"], targetTags=["web"])]
    assert evaluate(rules, "198.51.100.1", "tcp", 80, tags=["web", "x"]).rule == "allow-web"
    assert evaluate(rules, "198.51.100.1", "tcp", 80, tags=["db"]).rule == IMPLIED_DENY_INGRESS
    assert evaluate(rules, "198.51.100.1", "tcp", 80).rule == IMPLIED_DENY_INGRESS
    # A rule with no targetTags applies to every VM of the network.
    del rules[0]["targetTags"]
    assert evaluate(rules, "198.51.100.1", "tcp", 80, tags=["db"]).rule == "allow-web"


def test_target_tagged_deny_does_not_shadow_untagged_vm():
    rules = [
        rule("deny-ssh-bastion", "deny", 10, ports=["22"], targetTags=["bastion"]),
        rule("allow-ssh", "allow", 1000, ports=["22"], sourceRanges=["104.154.0.0/15"]),
    ]
    assert evaluate(rules, "104.154.0.1", "tcp", 22, tags=["web"]).allowed
    assert not evaluate(rules, "104.154.0.1", "tcp", 22, tags=["bastion"]).allowed


@pytest.mark.parametrize(
    ("port", "expected"),
    [(79, False), (80, True), (85, True), (90, True), (91, False), (443, True), (444, False)],
)
def test_port_ranges_are_inclusive(port, expected):
    rules = [rule("web", ports=["80-90", "443"], sourceRanges=["0.0.0.0/0"])]
    assert is_allowed(rules, "198.51.100.1", "tcp", port) is expected


def test_protocol_must_match_and_all_matches_everything():
    rules = [rule("tcp-only", ports=["53"], sourceRanges=["10.0.0.0/8"])]
    assert is_allowed(rules, "10.1.2.3", "tcp", 53)
    assert not is_allowed(rules, "10.1.2.3", "udp", 53)
    rules = [rule("any", proto="all", sourceRanges=["10.0.0.0/8"])]
    assert is_allowed(rules, "10.1.2.3", "udp", 53)
    assert is_allowed(rules, "10.1.2.3", "icmp")
    # A protocol number in the rule matches its name in the query.
    rules = [rule("six", proto="6", ports=["22"], sourceRanges=["10.0.0.0/8"])]
    assert is_allowed(rules, "10.1.2.3", "tcp", 22)


def test_rule_without_ports_opens_every_port_and_icmp_ignores_port():
    rules = [rule("all-tcp", sourceRanges=["0.0.0.0/0"])]
    assert is_allowed(rules, "198.51.100.1", "tcp", 5432)
    rules = [rule("ping", proto="icmp", sourceRanges=["0.0.0.0/0"])]
    assert is_allowed(rules, "198.51.100.1", "icmp")
    assert not is_allowed(rules, "198.51.100.1", "tcp", 7)


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("104.154.0.0", True),
        ("104.155.255.254", True),
        ("104.153.255.255", False),
        ("104.156.0.1", False),
        ("203.0.113.7", False),
    ],
)
def test_source_range_boundaries(src, expected):
    rules = [rule("ssh", ports=["22"], sourceRanges=["104.154.0.0/15"])]
    assert is_allowed(rules, src, "tcp", 22) is expected


def test_ingress_without_source_defaults_to_anywhere_but_source_tags_do_not():
    assert is_allowed([rule("open", ports=["80"])], "198.51.100.1", "tcp", 80)
    tagged = [rule("from-web", ports=["5432"], sourceTags=["web"])]
    assert not is_allowed(tagged, "10.0.0.5", "tcp", 5432)
    assert is_allowed(tagged, "10.0.0.5", "tcp", 5432, source_tags=["web"])


def test_egress_uses_destination_ranges_and_direction():
    rules = [
        {
            "name": "deny-smtp-out",
            "direction": "EGRESS",
            "priority": 100,
            "destinationRanges": ["0.0.0.0/0"],
            "denied": [{"IPProtocol": "tcp", "ports": ["25"]}],
        }
    ]
    d = evaluate(rules, "198.51.100.1", "tcp", 25, direction="EGRESS")
    assert (d.allowed, d.rule) == (False, "deny-smtp-out")
    assert evaluate(rules, "198.51.100.1", "tcp", 443, direction="EGRESS").rule == (
        IMPLIED_ALLOW_EGRESS
    )
    # An egress rule never decides ingress.
    assert evaluate(rules, "198.51.100.1", "tcp", 25).rule == IMPLIED_DENY_INGRESS


def test_disabled_rule_and_other_network_are_ignored():
    rules = [rule("off", ports=["80"], disabled=True)]
    assert not is_allowed(rules, "198.51.100.1", "tcp", 80)
    rules = [rule("other", ports=["80"], network="nets/other")]
    assert not is_allowed(rules, "198.51.100.1", "tcp", 80, network="nets/mine")
    assert is_allowed(rules, "198.51.100.1", "tcp", 80, network="nets/other")


def test_ref_source_ranges_resolve_against_the_expansion():
    resources = [
        {"name": "vpc-subnet", "type": "compute.v1.subnetwork",
         "properties": {"ipCidrRange": "10.10.0.0/24", "region": "us-east1"}},
        {"name": "allow-internal", "type": "compute.v1.firewall",
         "properties": {"network": "$(ref.vpc.selfLink)",
                        "sourceRanges": ["$(ref.vpc-subnet.ipCidrRange)"],
                        "allowed": [{"IPProtocol": "udp"}]}},
    ]  # fmt: skip
    rules = firewall_rules(resources)
    assert [r["name"] for r in rules] == ["allow-internal"]
    resolve = resolver_for(resources)
    assert is_allowed(rules, "10.10.0.9", "udp", 53, resolve=resolve)
    assert not is_allowed(rules, "10.10.1.9", "udp", 53, resolve=resolve)
    with pytest.raises(ReachabilityError, match="no resolver"):
        evaluate(rules, "10.10.0.9", "udp", 53)
    broken = resolver_for(resources[1:])
    with pytest.raises(ReachabilityError, match="no resource named 'vpc-subnet'"):
        evaluate(rules, "10.10.0.9", "udp", 53, resolve=broken)
    with pytest.raises(ReachabilityError, match="no property 'selfLink'"):
        resolve("$(ref.vpc-subnet.selfLink)")


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ReachabilityError, match="unknown protocol 'TCP '"):
        normalize_protocol("TCP ")
    assert normalize_protocol("TCP") == "tcp"
    with pytest.raises(ReachabilityError, match="invalid port '8O'"):
        parse_port_range("8O")
    with pytest.raises(ReachabilityError, match="invalid port '90-80'"):
        parse_port_range("90-80")
    assert parse_port_range("0-65535") == (0, 65535)
    with pytest.raises(ReachabilityError, match="invalid IP address"):
        evaluate([], "300.1.1.1", "tcp", 22)
    with pytest.raises(ReachabilityError, match="invalid IP range"):
        evaluate([rule("x", sourceRanges=["10.0.0.0/33"])], "10.0.0.1", "tcp", 22)
