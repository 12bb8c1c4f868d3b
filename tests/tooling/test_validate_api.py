"""dmlocal.compute_api and dmlocal.checks on hand-made resources.

The API check is driven by the real Compute Engine v1 discovery document inside
google-api-python-client (nothing emulated). Each test feeds the smallest resource that shows
one behaviour, and the valid counterpart, so a check that accepts everything or rejects
everything fails here.
"""

from __future__ import annotations

import pytest

from dmlocal.checks import semantic_checks
from dmlocal.compute_api import check_resource, discovery, method_for
from dmlocal.errors import Finding

IMAGE = "projects/debian-cloud/global/images/family/debian-12"


def instance(**props) -> dict:
    base = {
        "zone": "us-central1-a",
        "machineType": "zones/us-central1-a/machineTypes/e2-small",
        "disks": [{"boot": True, "initializeParams": {"sourceImage": IMAGE}}],
        "networkInterfaces": [{"subnetwork": "$(ref.sub.selfLink)"}],
    }
    base.update(props)
    return {"name": "vm", "type": "compute.v1.instance", "properties": base}


def messages(findings: list[Finding]) -> list[str]:
    return [f"{f.path}: {f.message}" for f in findings]


@pytest.mark.parametrize(
    ("dm_type", "collection", "schema", "path_params"),
    [
        ("compute.v1.instance", "instances", "Instance", ("zone",)),
        ("compute.v1.address", "addresses", "Address", ("region",)),
        ("compute.v1.firewall", "firewalls", "Firewall", ()),
        ("compute.v1.network", "networks", "Network", ()),
        ("compute.v1.subnetwork", "subnetworks", "Subnetwork", ("region",)),
        ("compute.v1.globalAddress", "globalAddresses", "Address", ()),
    ],
)
def test_dm_types_map_to_their_insert_method(dm_type, collection, schema, path_params):
    method = method_for(dm_type)
    assert (method.collection, method.schema, method.path_params) == (
        collection,
        schema,
        path_params,
    )
    # The insert URL in the discovery document carries exactly those path parameters.
    path = discovery()["resources"][collection]["methods"]["insert"]["path"]
    assert all("{" + p + "}" in path for p in path_params)


def test_unknown_compute_type_gets_a_suggestion():
    [f] = check_resource({"name": "x", "type": "compute.v1.instanc", "properties": {}}, "c.yaml")
    assert f.field == "type"
    assert "did you mean 'compute.v1.instance'?" in f.message
    assert check_resource({"name": "x", "type": "storage.v1.bucket"}, "c.yaml") == []


def test_valid_instance_has_no_findings():
    assert check_resource(instance(), "vm.py") == []


def test_unknown_nested_field_has_full_path_and_suggestion():
    nic = {"subnetwork": "s", "accessConfig": [{"natIP": "1.2.3.4"}]}
    [f] = check_resource(instance(networkInterfaces=[nic]), "vm.py")
    assert f.path == "vm.networkInterfaces[0].accessConfig"
    assert "did you mean 'accessConfigs'?" in f.message


def test_small_message_lists_every_valid_field():
    [f] = check_resource(instance(tags={"item": ["web"]}), "vm.py")
    assert f.path == "vm.tags.item"
    assert f.message.endswith("did you mean 'items'? valid fields of Tags: fingerprint, items")


def test_wrong_json_types():
    got = messages(
        check_resource(
            instance(
                canIpForward="yes",
                tags={"items": "web"},
                disks=[{"boot": True, "initializeParams": {"sourceImage": IMAGE}}],
                scheduling={"automaticRestart": True, "availabilityDomain": "two"},
            ),
            "vm.py",
        )
    )
    assert got == [
        "vm.canIpForward: must be true or false (a YAML boolean), not string 'yes'",
        "vm.tags.items: must be a list, not a string ('web'); wrap it in [ ]",
        "vm.scheduling.availabilityDomain: must be an integer, not string 'two'",
    ]


def test_int64_fields_accept_numbers_and_numeric_strings_only():
    def disk(size):
        return [{"boot": True, "initializeParams": {"sourceImage": IMAGE, "diskSizeGb": size}}]

    assert check_resource(instance(disks=disk("10")), "vm.py") == []
    assert check_resource(instance(disks=disk(10)), "vm.py") == []
    [f] = check_resource(instance(disks=disk("10GB")), "vm.py")
    assert f.path == "vm.disks[0].initializeParams.diskSizeGb"


def test_enum_values_and_refs():
    bad = {"name": "fw", "type": "compute.v1.firewall", "properties": {"direction": "IN"}}
    [f] = check_resource(bad, "fw.py")
    assert f.message.startswith("'IN' is not a valid value: ")
    assert f.message.endswith("valid: EGRESS, INGRESS")
    ref = {"name": "fw", "type": "compute.v1.firewall", "properties": {"direction": "$(ref.x.d)"}}
    assert check_resource(ref, "fw.py") == []


def test_refs_are_accepted_where_a_string_goes():
    nic = {"subnetwork": "$(ref.sub.selfLink)", "accessConfigs": [{"natIP": "$(ref.ip.address)"}]}
    assert check_resource(instance(networkInterfaces=[nic]), "vm.py") == []


def test_output_only_field_is_a_warning():
    [f] = check_resource(instance(selfLink="x"), "vm.py")
    assert (f.severity, f.path) == ("warning", "vm.selfLink")


def test_path_parameters_are_not_body_fields_but_are_required():
    # Instance.zone is output-only in the body; as a DM property it is the URL's zone: no finding.
    assert check_resource(instance(), "vm.py") == []
    res = instance()
    del res["properties"]["zone"]
    [f] = check_resource(res, "vm.py")
    assert (f.path, f.message.split(":")[0]) == ("vm.zone", "is required")
    address = {"name": "ip", "type": "compute.v1.address", "properties": {"region": 5}}
    [f] = check_resource(address, "vm.py")
    assert f.path == "ip.region"


# -- semantic checks ----------------------------------------------------------------------------


def subnet(name, cidr, network="$(ref.vpc.selfLink)", region="us-central1"):
    return {
        "name": name,
        "type": "compute.v1.subnetwork",
        "properties": {"network": network, "region": region, "ipCidrRange": cidr},
    }


def test_overlap_only_within_one_network():
    assert messages(semantic_checks([subnet("a", "10.0.0.0/16"), subnet("b", "10.0.1.0/24")])) == [
        "b.ipCidrRange: 10.0.1.0/24 overlaps 10.0.0.0/16 (a.ipCidrRange) in the same VPC; subnet "
        "ranges of one network must be disjoint"
    ]
    other_vpc = subnet("b", "10.0.1.0/24", network="$(ref.vpc2.selfLink)")
    assert semantic_checks([subnet("a", "10.0.0.0/16"), other_vpc]) == []
    assert semantic_checks([subnet("a", "10.0.0.0/24"), subnet("b", "10.0.1.0/24")]) == []


def test_subnet_prefix_limits():
    assert messages(semantic_checks([subnet("a", "10.0.0.0/30")])) == [
        "a.ipCidrRange: '10.0.0.0/30': an IPv4 subnet's prefix must be /8 to /29"
    ]
    assert semantic_checks([subnet("a", "10.0.0.0/29")]) == []


def test_zone_region_checks_for_subnet_and_static_ip():
    resources = [
        subnet("sub", "10.0.0.0/24", region="us-central1"),
        {"name": "ip", "type": "compute.v1.address", "properties": {"region": "us-east1"}},
        instance(
            networkInterfaces=[
                {
                    "subnetwork": "$(ref.sub.selfLink)",
                    "accessConfigs": [{"natIP": "$(ref.ip.address)"}],
                }
            ]
        ),
    ]
    assert messages(semantic_checks(resources)) == [
        "vm.networkInterfaces[0].accessConfigs[0].natIP: address 'ip' is in region us-east1, the "
        "VM in us-central1: a static external IP must be in the VM's region"
    ]
    resources[1]["properties"]["region"] = "us-central1"
    assert semantic_checks(resources) == []


@pytest.mark.parametrize(
    "image",
    [
        IMAGE,
        "projects/debian-cloud/global/images/debian-12-bookworm-v20251111",
        "https://www.googleapis.com/compute/v1/projects/debian-cloud/global/images/family/debian-12",
        "global/images/my-golden-image",
    ],
)
def test_well_formed_image_urls(image):
    res = instance(disks=[{"boot": True, "initializeParams": {"sourceImage": image}}])
    assert semantic_checks([res]) == []


@pytest.mark.parametrize(
    "image",
    ["debian-12", "projects/debian-cloud/images/family/debian-12", "projects/x/global/images/"],
)
def test_malformed_image_urls(image):
    res = instance(disks=[{"boot": True, "initializeParams": {"sourceImage": image}}])
    [f] = semantic_checks([res])
    assert f.path == "vm.disks[0].initializeParams.sourceImage"
    assert IMAGE in f.message


@pytest.mark.parametrize(
    ("machine_type", "problem"),
    [
        ("zones/us-central1-a/machineTypes/e2-small", None),
        ("zones/us-central1-a/machineTypes/n2-standard-4", None),
        ("zones/us-central1-a/machineTypes/e2-custom-2-4096", None),
        ("projects/p/zones/us-central1-a/machineTypes/e2-small", None),
        ("zones/us-central1-b/machineTypes/e2-small", "names zone us-central1-b"),
        ("zones/us-central1-a/machineTypes/E2_SMALL", "is not a machine type name"),
        ("e2-small", "write zones/us-central1-a/machineTypes/e2-small"),
    ],
)
def test_machine_type_urls(machine_type, problem):
    findings = semantic_checks([instance(machineType=machine_type)])
    if problem is None:
        assert findings == []
    else:
        [f] = findings
        assert problem in f.message


def test_egress_rule_with_source_ranges_and_missing_action():
    rule = {
        "name": "out",
        "type": "compute.v1.firewall",
        "properties": {"direction": "EGRESS", "sourceRanges": ["10.0.0.0/8"]},
    }
    assert messages(semantic_checks([rule])) == [
        "out.sourceRanges: an EGRESS rule matches destinationRanges; sourceRanges is ingress",
        "out.allowed: a firewall rule needs exactly one of `allowed` or `denied` (a non-empty list "
        "of {IPProtocol, ports})",
    ]


@pytest.mark.parametrize(
    ("proto", "expected"),
    [
        ("tcp", None),
        ("6", None),
        ("all", None),
        ("TCP", "works (the API stores 'tcp')"),  # a warning: only the style differs
        (" udp", "has stray whitespace: did you mean 'udp'?"),
        ("tpc", "valid: icmp, igmp, ipip, tcp, udp, esp, ah, sctp, all"),
        ("300", "valid: icmp"),
    ],
)
def test_protocol_names(proto, expected):
    rule = {
        "name": "r",
        "type": "compute.v1.firewall",
        "properties": {"allowed": [{"IPProtocol": proto}]},
    }
    findings = semantic_checks([rule])
    if expected is None:
        assert findings == []
    else:
        [f] = findings
        assert f.path == "r.allowed[0].IPProtocol"
        assert expected in f.message


def test_cached_subset_keeps_every_field_type_and_enum_of_the_discovery_doc():
    import json

    from dmlocal.compute_api import discovery_path

    full = json.loads(discovery_path().read_text())["schemas"]
    subset = discovery()["schemas"]
    assert set(full) == set(subset)

    def shape(node):
        if isinstance(node, dict):
            keep = {k: shape(v) for k, v in node.items() if k in ("type", "enum", "$ref", "format")}
            for key in ("properties", "additionalProperties", "items"):
                if key in node:
                    keep[key] = (
                        {n: shape(f) for n, f in node[key].items()}
                        if key == "properties"
                        else shape(node[key])
                    )
            return keep
        return node

    for name in ("Instance", "Firewall", "Network", "Subnetwork", "Address", "AttachedDisk"):
        assert shape(subset[name]) == shape(full[name])


def test_reference_fields_are_checked_against_the_target_schema():
    from types import SimpleNamespace

    from dmlocal.compute_api import check_references

    def expansion(ref: str):
        vm = instance()
        fw = {
            "name": "fw",
            "type": "compute.v1.firewall",
            "properties": {"sourceRanges": [ref], "allowed": [{"IPProtocol": "tcp"}]},
        }
        return SimpleNamespace(
            config_file="c.yaml",
            resources=[vm, fw],
            outputs=[],
            layout={"resources": [vm, fw]},
            origins={"vm": "vm.py", "fw": "fw.py"},
        )

    # Output-only fields and indexed paths exist in the API's response schema.
    for ok in ("$(ref.vm.selfLink)", "$(ref.vm.networkInterfaces[0].accessConfigs[0].natIP)",
               "$(ref.vm.networkInterfaces.0.networkIP)", "$(ref.vm.labels.team)"):  # fmt: skip
        assert check_references(expansion(ok)) == [], ok
    [f] = check_references(expansion("$(ref.vm.networkInterfaces[0].accessConfig[0].natIP)"))
    assert (f.file, f.path) == ("fw.py", "fw.sourceRanges[0]")
    assert "has no field 'accessConfig' (NetworkInterface): did you mean 'accessConfigs'?" in (
        f.message
    )


def test_integers_where_the_api_declares_strings_are_a_warning_as_deployment_manager_accepts():
    """Google's own Deployment Manager samples pass integers where the Compute Engine API
    declares strings, and DM deploys them: GoogleCloudPlatform/deploymentmanager-samples
    examples/v2/step_by_step_guide/step6_use_multiple_templates/python/firewall-template.py
    (`'ports': [80]`), google/resource-snippets/compute-v1/global_forwarding_rule.jinja
    (`portRange: 80`), examples/v2/build_configuration/use_outputs/template_with_outputs.jinja
    (`value: 88`). The dry run warns; it refuses what DM refuses (a boolean, a list)."""
    firewall = {
        "name": "fw",
        "type": "compute.v1.firewall",
        "properties": {
            "network": "$(ref.net.selfLink)",
            "allowed": [{"IPProtocol": "tcp", "ports": [80, "443"]}],
        },
    }
    rule = {
        "name": "fr",
        "type": "compute.v1.globalForwardingRule",
        "properties": {"portRange": 80, "target": "$(ref.proxy.selfLink)"},
    }
    vm = instance(metadata={"items": [{"key": "answer", "value": 88}]})
    findings = [f for r in (firewall, rule, vm) for f in check_resource(r, "c.yaml")]
    assert {f.severity for f in findings} == {"warning"}
    assert messages(findings) == [
        "fw.allowed[0].ports[0]: is a string in the API; Deployment Manager accepts the "
        'integer 80 as "80", quote it to say so',
        "fr.portRange: is a string in the API; Deployment Manager accepts the integer 80 as "
        '"80", quote it to say so',
        "vm.metadata.items[0].value: is a string in the API; Deployment Manager accepts the "
        'integer 88 as "88", quote it to say so',
    ]
    assert semantic_checks([firewall]) == []  # 80 is a port either way

    firewall["properties"]["allowed"][0]["ports"] = [True, [22]]
    got = messages(check_resource(firewall, "c.yaml"))
    assert got == [
        "fw.allowed[0].ports[0]: must be a string, not boolean True; quote it in YAML",
        "fw.allowed[0].ports[1]: must be a string, not list [22]; quote it in YAML",
    ]
