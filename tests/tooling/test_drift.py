"""The drift comparison, its firewall meanings and its report, as pure functions.

Real: deployment.yaml and the templates expanded by dmlocal, the compute.v1 discovery document
(output-only fields, defaults), the dry run's firewall evaluator. Emulated: the live side, built
here the way Compute Engine's `get` returns a resource created from the expanded config (full
URLs for scopes and references, server fields such as id, selfLink and fingerprints, a NIC's
network filled in, `initializeParams` not returned); then one out-of-band change per test.
No API is called here; the same checks against the emulated API are in test_drift_api.py.
"""

from __future__ import annotations

import copy
import json

import pytest

from dmlocal.expand import default_env, expand_path
from dmlocal.reachability import GOOGLE_SSH_RANGE, KNOWN_RANGES
from drift import cli, compare, meaning, report
from drift.compare import CHANGED, DELETED, UNOWNED, LiveState
from tests.conftest import REPO

PROJECT = "drift-project"
# How the report names the two source ranges it meets most (the dry run's labels).
INTERNET = f"0.0.0.0/0 ({KNOWN_RANGES['0.0.0.0/0']})"
SSH = f"{GOOGLE_SSH_RANGE} ({KNOWN_RANGES[GOOGLE_SSH_RANGE]})"
BASE = f"https://compute.googleapis.com/compute/v1/projects/{PROJECT}"


@pytest.fixture(scope="module")
def expansion():
    return expand_path(REPO / "deployment.yaml", default_env(project=PROJECT))


def self_link(resource: dict) -> str:
    props = resource["properties"]
    kind = resource["type"].split(".")[-1]
    plural = "addresses" if kind == "address" else f"{kind}s"
    if "zone" in props:
        return f"{BASE}/zones/{props['zone']}/{plural}/{resource['name']}"
    if "region" in props:
        return f"{BASE}/regions/{props['region']}/{plural}/{resource['name']}"
    return f"{BASE}/global/{plural}/{resource['name']}"


def as_created(expansion) -> LiveState:
    """What Compute Engine returns for each resource once DM created it from the config."""
    state = LiveState({r["name"]: None for r in compare.compute_resources(expansion)})
    for index, resource in enumerate(compare.compute_resources(expansion)):
        name = resource["name"]
        declared = compare.resolve(resource["properties"], expansion, state)
        body = copy.deepcopy(declared)
        body.update(name=name, id=str(1000 + index), selfLink=self_link(resource),
                    creationTimestamp="2026-12-01T00:00:00.000-08:00")  # fmt: skip
        if "zone" in body:
            body["zone"] = f"{BASE}/zones/{body['zone']}"
        if "region" in body:
            body["region"] = f"{BASE}/regions/{body['region']}"
        if resource["type"] == "compute.v1.address":
            body.update(address="203.0.113.10", status="RESERVED")
        if resource["type"] == "compute.v1.instance":
            body["machineType"] = f"{BASE}/{body['machineType']}"
            body["tags"]["fingerprint"] = "tags-fp"
            body["metadata"]["fingerprint"] = "meta-fp"
            body["status"] = "RUNNING"
            for disk in body["disks"]:
                disk.pop("initializeParams")
                disk["source"] = f"{BASE}/zones/us-central1-a/disks/{name}"
            network = state.resources["hello-vpc"]["selfLink"]
            for nic in body["networkInterfaces"]:
                nic.update(network=network, networkIP="10.10.0.2", name="nic0")
            body.pop("serviceAccounts")  # [] is the zero value: the API leaves it out
        if body.get("direction") == "INGRESS":
            body.pop("direction")  # the documented default: the API may leave it out
        state.resources[name] = body
    return state


def live_after(expansion, change) -> tuple[LiveState, list[compare.Difference]]:
    state = as_created(expansion)
    change(state)
    return state, compare.compare(expansion, state)


def test_a_stack_as_created_has_no_drift(expansion):
    """Server fields, full URLs, omitted defaults and input-only fields are not drift."""
    assert compare.compare(expansion, as_created(expansion)) == []


def test_a_deleted_firewall_rule_is_drift_and_says_what_closes(expansion):
    def delete(state):
        state.resources["hello-firewall-allow-web"] = None

    state, found = live_after(expansion, delete)
    assert [(d.kind, d.resource) for d in found] == [(DELETED, "hello-firewall-allow-web")]
    means = cli.explainer(expansion, state)(found[0])
    assert any(
        line.startswith(f"tcp:80, tcp:443 from {INTERNET} to hello-vm is now CLOSED")
        for line in means
    ), means


def test_a_widened_ssh_range_is_drift_and_opens_ssh_to_the_internet(expansion):
    def widen(state):
        state.resources["hello-firewall-allow-ssh"]["sourceRanges"] = ["0.0.0.0/0"]

    state, found = live_after(expansion, widen)
    assert [(d.kind, d.field, d.declared, d.live) for d in found] == [
        (CHANGED, "sourceRanges", ["104.154.0.0/15"], ["0.0.0.0/0"])
    ]
    means = cli.explainer(expansion, state)(found[0])
    assert means == [
        f"tcp:22 from {INTERNET} to hello-vm is now OPEN (live rule "
        "hello-firewall-allow-ssh); the config denies it (hello-firewall-deny-ingress)"
    ]


def test_a_disabled_rule_is_drift_though_the_config_never_sets_disabled(expansion):
    def disable(state):
        state.resources["hello-firewall-allow-ssh"]["disabled"] = True

    state, found = live_after(expansion, disable)
    assert [(d.kind, d.field, d.declared, d.live) for d in found] == [
        (CHANGED, "disabled", None, True)
    ]
    means = cli.explainer(expansion, state)(found[0])
    assert any(m.startswith(f"tcp:22 from {SSH} to hello-vm is now "
                            "CLOSED") for m in means), means  # fmt: skip


def test_an_added_allow_all_rule_is_reported_as_not_ours_with_what_it_opens(expansion):
    def add(state):
        state.neighbours.append(("compute.v1.firewall", {
            "name": "allow-all-temp", "network": state.resources["hello-vpc"]["selfLink"],
            "sourceRanges": ["0.0.0.0/0"], "priority": 100, "allowed": [{"IPProtocol": "all"}],
        }))  # fmt: skip

    state, found = live_after(expansion, add)
    assert [(d.kind, d.resource) for d in found] == [(UNOWNED, "allow-all-temp")]
    means = cli.explainer(expansion, state)(found[0])
    opened = [m for m in means if f"from {INTERNET} to hello-vm is now OPEN" in m]
    assert opened and "tcp:22" in opened[0] and "allow-all-temp" in opened[0], means


def test_a_removed_tag_is_drift_and_closes_the_public_ports(expansion):
    def untag(state):
        state.resources["hello-vm"]["tags"] = {"fingerprint": "new-fp"}

    state, found = live_after(expansion, untag)
    assert [(d.kind, d.field, d.declared, d.live) for d in found] == [
        (CHANGED, "tags.items", ["hello-web"], None)
    ]
    means = cli.explainer(expansion, state)(found[0])
    assert any(m.startswith(f"tcp:80, tcp:443 from {INTERNET} to hello-vm is now CLOSED")
               for m in means), means  # fmt: skip


def test_edited_and_added_metadata_are_drift_by_key(expansion):
    def edit(state):
        items = state.resources["hello-vm"]["metadata"]["items"]
        next(i for i in items if i["key"] == "block-project-ssh-keys")["value"] = "FALSE"
        items.append({"key": "ssh-keys", "value": "mallory:ssh-ed25519 AAAA"})

    _state, found = live_after(expansion, edit)
    assert [(d.field, d.declared, d.live) for d in found] == [
        ("metadata.items[block-project-ssh-keys]", "TRUE", "FALSE"),
        ("metadata.items[ssh-keys]", None, "mallory:ssh-ed25519 AAAA"),
    ]


def test_labels_a_person_adds_are_drift_and_googles_own_are_not(expansion):
    def label(state):
        state.resources["hello-vm"]["labels"].update({"goog-dm": "hello", "owner": "mallory"})

    _state, found = live_after(expansion, label)
    assert [(d.field, d.declared, d.live) for d in found] == [("labels.owner", None, "mallory")]


def test_deletion_protection_off_is_drift(expansion):
    def unprotect(state):
        state.resources["hello-vm"]["deletionProtection"] = False

    _state, found = live_after(expansion, unprotect)
    assert [(d.resource, d.field, d.declared, d.live) for d in found] == [
        ("hello-vm", "deletionProtection", True, False)
    ]


def test_a_deleted_vm_is_drift_and_nothing_else_is(expansion):
    def delete(state):
        state.resources["hello-vm"] = None

    _state, found = live_after(expansion, delete)
    assert [(d.kind, d.resource, d.type) for d in found] == [
        (DELETED, "hello-vm", "compute.v1.instance")
    ]


def test_a_deleted_network_does_not_report_its_dependants_fields(expansion):
    """References into a deleted resource are unknown, not drift: the deletion is the news."""

    for gone in ("hello-vpc", "hello-vpc-subnet"):

        def delete(state, gone=gone):
            state.resources[gone] = None

        _state, found = live_after(expansion, delete)
        assert [(d.kind, d.resource) for d in found] == [(DELETED, gone)]


def test_output_only_and_defaults_come_from_the_discovery_document():
    schema = compare.resource_schema("compute.v1.firewall")
    fields = schema["properties"]
    assert compare.output_only(fields["selfLink"]) and compare.output_only(fields["id"])
    assert not compare.output_only(fields["sourceRanges"])
    # Declared and absent live: equal only when it is the documented default.
    declared = {"priority": 1000, "direction": "INGRESS"}
    assert list(compare.compare_resource("r", "compute.v1.firewall", declared, {})) == []
    changed = list(compare.compare_resource("r", "compute.v1.firewall", {"priority": 900}, {}))
    assert [(d.field, d.declared, d.live) for d in changed] == [("priority", 900, None)]


def test_same_scalar_matches_names_and_partial_urls_to_full_urls_only():
    assert compare.same_scalar("us-central1-a", f"{BASE}/zones/us-central1-a")
    assert compare.same_scalar(
        "zones/z/machineTypes/e2-small", f"{BASE}/zones/z/machineTypes/e2-small"
    )
    assert compare.same_scalar("10", 10)
    assert not compare.same_scalar("e2-small", f"{BASE}/zones/z/machineTypes/e2-medium")
    assert not compare.same_scalar(True, "True")


def test_text_report_lines_and_json(expansion):
    def widen(state):
        state.resources["hello-firewall-allow-ssh"]["sourceRanges"] = ["0.0.0.0/0"]
        state.resources["hello-vm"]["metadata"]["items"][0]["value"] = "#!/bin/sh\necho owned\n"

    state, found = live_after(expansion, widen)
    explain = cli.explainer(expansion, state)
    text = report.text(found, explain, lambda d: "rm", "header")
    lines = text.splitlines()
    assert lines[0] == "header"
    assert "DRIFT hello-firewall-allow-ssh (compute.v1.firewall): changed" in lines
    assert '  sourceRanges: declared ["104.154.0.0/15"], live ["0.0.0.0/0"]' in lines
    script = next(line for line in lines if "metadata.items[startup-script]" in line)
    assert "bytes, sha256" in script and "echo owned" not in script
    assert lines[-1].startswith("drift: 2 difference(s) in 2 resource(s); `make repair` puts")
    data = json.loads(report.as_json(found, explain, lambda d: "rm", project=PROJECT))
    assert data["drift"] is True and data["project"] == PROJECT
    assert [d["field"] for d in data["differences"]] == [
        "sourceRanges",
        "metadata.items[startup-script]",
    ]
    assert data["differences"][0]["means"] == explain(found[0])


def test_no_drift_report_says_so():
    assert report.text([], lambda d: [], lambda d: "", "h") == (
        "h\nno drift: every Compute Engine resource matches the config\n"
    )


def test_resources_of_other_apis_are_named_as_not_checked(expansion):
    """The uptime check is Cloud Monitoring's: drift reads the Compute Engine API only."""
    others = compare.not_compute(expansion)
    assert others and all(not r["type"].startswith("compute.") for r in others)
    assert {r["name"] for r in others}.isdisjoint(
        r["name"] for r in compare.compute_resources(expansion)
    )
    shown = report.text([], lambda d: [], lambda d: "", "h", others).splitlines()
    assert shown[1].startswith("not checked (not Compute Engine resources): ")
    assert all(f"{r['name']} ({r['type']})" in shown[1] for r in others)


def test_meaning_of_a_changed_rule_beside_other_rules_uses_priorities():
    """A live deny at a lower priority number than an allow closes the port; evaluated by the
    dry run's semantics, not by a rule-by-rule comparison."""
    declared = {
        "allow": {"sourceRanges": ["0.0.0.0/0"],
                  "allowed": [{"IPProtocol": "tcp", "ports": ["80"]}]},
        "deny": {"sourceRanges": ["198.51.100.0/24"], "priority": 2000,
                 "denied": [{"IPProtocol": "tcp", "ports": ["80"]}]},
    }  # fmt: skip
    live = {"deny": {**declared["deny"], "priority": 10}}
    difference = compare.Difference(CHANGED, "deny", "compute.v1.firewall", "priority", 2000, 10)
    means = meaning.meaning(difference, declared, live, [meaning.Target("vm", ())])
    assert means == [
        "tcp:80 from 198.51.100.0/24 to vm is now CLOSED (live: deny); "
        "the config allows it (rule allow)"
    ]


# --- the command line: usage, credentials and API errors, each with its exit code ------------


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    """No Google settings from the caller's shell; the repository as the working directory."""
    import os

    for name in list(os.environ):
        if name.startswith(("CLOUDSDK_", "GOOGLE_", "GCP_", "CIRCLE_OIDC")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    return monkeypatch


def test_usage_errors_exit_2(bare_env, capsys):
    with pytest.raises(SystemExit) as help_:
        cli.main(["check", "--help"])
    assert help_.value.code == 0 and "--json" in capsys.readouterr().out
    with pytest.raises(SystemExit) as unknown:
        cli.main(["check", "--no-such-flag"])
    assert unknown.value.code == cli.EXIT_USAGE
    assert cli.main(["check"]) == cli.EXIT_USAGE
    assert "GCP_PROJECT is not set" in capsys.readouterr().err
    bare_env.setenv("GCP_PROJECT", PROJECT)
    assert cli.main(["check", "missing.yaml"]) == cli.EXIT_USAGE
    assert "config not found: missing.yaml" in capsys.readouterr().err


def test_no_credentials_exit_3(bare_env, capsys):
    """Real google-auth: a key file that is not there, and WIF settings without a token."""
    bare_env.setenv("GCP_PROJECT", PROJECT)
    assert cli.main(["check"]) == cli.EXIT_AUTH
    assert "no usable credentials" in capsys.readouterr().err
    provider = "projects/1/locations/global/workloadIdentityPools/p/providers/p"
    bare_env.setenv("GCP_WIF_PROVIDER", provider)
    bare_env.setenv("GCP_DEPLOYER_SA", "drift@p.iam.gserviceaccount.com")
    assert cli.main(["check"]) == cli.EXIT_AUTH
    assert "no OIDC token: CIRCLE_OIDC_TOKEN_V2 is empty" in capsys.readouterr().err


def test_repair_reports_a_field_the_api_cannot_change_in_place_and_calls_nothing(expansion):
    """A subnet's range is set at creation (the discovery document says so): repair names it and
    what to do, and makes no API call (no client is given)."""
    from drift.repair import repair

    state = as_created(expansion)
    state.resources["hello-vpc-subnet"]["ipCidrRange"] = "10.20.0.0/24"
    found = compare.compare(expansion, state)
    # The internal rule declares the subnet's range by reference, so it follows the live one.
    assert [(d.resource, d.field) for d in found] == [
        ("hello-vpc-subnet", "ipCidrRange"),
        ("hello-firewall-allow-internal", "sourceRanges"),
    ]
    left = repair(None, PROJECT, expansion, state, found[:1], log=print)
    assert left == [
        "hello-vpc-subnet (compute.v1.subnetwork): ipCidrRange cannot change on a live resource "
        "(the Compute Engine API says of Subnetwork.ipCidrRange: 'This field is set at resource "
        "creation time.'); delete it and run make repair to recreate it from the config"
    ]
