"""`dmlocal terraform`: the Deployment Manager stack as Terraform JSON, checked against
the DM expansion of the real deployment.yaml, with alertEmail set so that the uptime check, the
email channel and the alert policy are all in it.

What is verified here: every DM leaf resource has exactly one Terraform resource of the matching
google provider type under the same GCE name; every `$(ref.NAME.FIELD)` became a Terraform
reference to the same resource and attribute; the firewall rules, converted back to DM's
property shape by a small helper below, mean exactly what the DM rules mean; the VM's arguments
(boot disk, NIC with the static NAT IP, Shielded VM, scheduling, tags, labels, deletion
protection, no service account) follow the DM properties; its metadata, read back as Terraform
would read a JSON template string, is byte-identical to app/ (startup-script included); import
blocks use the google provider's documented `projects/...` ID formats (none for the Monitoring
objects, whose names the server assigns); unsupported types and
properties are refused with the file, the resource and the field.

Argument names, nesting and value types are checked against the google provider's own schema
as captured in the npm package @cdktf/provider-google 16.12.1, which is generated from
hashicorp/google 6.50.0 (the version main.tf.json pins), by dmlocal/provider_schema.py (the same
check the Infrastructure Manager emulator runs on uploads); when its cache is empty and npm cannot
fetch the package, those tests are skipped and say so.

What is NOT verified here: Terraform itself and the google provider binary cannot be downloaded
in this sandbox (no network beyond PyPI, Debian and npm), so neither `terraform validate` nor
`terraform plan` runs against this output: the JSON syntax is written to HashiCorp's JSON
configuration rules but not parsed by Terraform, and nothing proves that importing into a real
project yields an empty plan. docs/migration.md has the real-project checks (an Infrastructure
Manager preview that must show 10 imports and no other change) that close this gap.
"""

from __future__ import annotations

import json
import re

import pytest

from dmlocal import provider_schema as provider_schema_module
from dmlocal.errors import ConfigError
from dmlocal.expand import default_env, expand_files, expand_path
from dmlocal.references import REFERENCE, follow, template_outputs
from dmlocal.terraform import GOOGLE_PROVIDER_VERSION, SERVER_NAMED, TF_TYPES, to_terraform
from tests.conftest import REPO, copy_stack, run_dmlocal

PROJECT = "hello-prod-1234"
TF_REF = re.compile(r"\$\{([a-z_]+)\.([-a-zA-Z0-9_]+)\.([a-z_]+)\}")


def alerting_expansion(directory):
    """deployment.yaml with alertEmail set, deployed to PROJECT: the stack with every resource
    type it can declare, the alert's channel and policy included."""
    config = copy_stack(directory) / "deployment.yaml"
    text = config.read_text()
    assert 'alertEmail: ""' in text
    config.write_text(text.replace('alertEmail: ""', "alertEmail: oncall@example.com"))
    return expand_path(config, default_env(project=PROJECT))


@pytest.fixture(scope="module")
def expansion(tmp_path_factory):
    return alerting_expansion(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def files(expansion):
    return to_terraform(expansion, PROJECT)


@pytest.fixture(scope="module")
def tf_resources(files) -> dict[str, tuple[str, dict]]:
    """Terraform resource label -> (resource type, arguments)."""
    found: dict[str, tuple[str, dict]] = {}
    for tf_type, by_label in files["main.tf.json"]["resource"].items():
        for label, body in by_label.items():
            assert label not in found, f"{label} appears twice"
            found[label] = (tf_type, body)
    return found


# -- test-side helpers: independent of dmlocal/terraform.py -------------------------------------


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.title() for word in rest)


def literal(template: str) -> str:
    """A Terraform JSON string with no interpolation, as the value Terraform will send."""
    unescaped = template.replace("$${", "").replace("%%{", "")
    assert "${" not in unescaped and "%{" not in unescaped, "would be interpolated: " + template
    return re.sub(r"([$%])\1\{", r"\1{", template)


def as_dm(value):
    """Terraform references back into DM references; literal strings unescaped."""
    if isinstance(value, str):
        if TF_REF.search(value):
            return TF_REF.sub(lambda m: f"$(ref.{m.group(2)}.{camel(m.group(3))})", value)
        return literal(value)
    if isinstance(value, list):
        return [as_dm(v) for v in value]
    if isinstance(value, dict):
        return {k: as_dm(v) for k, v in value.items()}
    return value


def firewall_as_dm(body: dict) -> dict:
    """A google_compute_firewall's arguments in compute.v1.firewall's property shape."""
    names = {
        "description": "description",
        "network": "network",
        "direction": "direction",
        "priority": "priority",
        "source_ranges": "sourceRanges",
        "destination_ranges": "destinationRanges",
        "target_tags": "targetTags",
        "source_tags": "sourceTags",
    }
    result = {names[k]: as_dm(v) for k, v in body.items() if k in names}
    for block, key in (("allow", "allowed"), ("deny", "denied")):
        if block in body:
            result[key] = [
                {"IPProtocol": r["protocol"], **({"ports": r["ports"]} if "ports" in r else {})}
                for r in body[block]
            ]
    return result


def dm_refs(value) -> set[tuple[str, str]]:
    return set(REFERENCE.findall(json.dumps(value)))


def through_outputs(value, expansion):
    """`value` with each reference to a template output replaced by the leaf reference it names:
    the leaf resource and field Terraform must point at."""
    outputs = template_outputs(expansion.layout)
    if isinstance(value, dict):
        return {key: through_outputs(item, expansion) for key, item in value.items()}
    if isinstance(value, list):
        return [through_outputs(item, expansion) for item in value]
    return follow(value, outputs)


def tf_refs(value) -> set[tuple[str, str, str]]:
    return set(TF_REF.findall(json.dumps(value)))


# -- resources ----------------------------------------------------------------------------------


def test_every_dm_resource_has_exactly_one_terraform_resource_with_its_gce_name(
    expansion, tf_resources
):
    assert sorted(tf_resources) == sorted(r["name"] for r in expansion.resources)
    for resource in expansion.resources:
        tf_type, body = tf_resources[resource["name"]]
        assert tf_type == TF_TYPES[resource["type"]]
        if resource["type"].startswith("compute.v1."):
            assert body["name"] == resource["name"]
            # compute.v1.subnetwork -> google_compute_subnetwork, etc.
            assert tf_type == "google_compute_" + resource["type"].rsplit(".", 1)[1]
        else:  # Monitoring names the object; the label alone carries the DM name
            assert "name" not in body
    assert len(expansion.resources) == 13  # the stack as documented in the templates


def test_references_point_at_the_same_resources_and_fields(expansion, tf_resources, files):
    text = json.dumps(files)
    assert "$(ref." not in text
    for resource in expansion.resources:
        _, body = tf_resources[resource["name"]]
        translated = {(name, camel(attr)) for _, name, attr in tf_refs(body)}
        wanted = dm_refs(through_outputs(resource["properties"], expansion))
        assert translated == wanted, resource["name"]
    for tf_type, name, _ in tf_refs(files["main.tf.json"]):
        assert tf_resources[name][0] == tf_type, f"{tf_type}.{name} is not a resource"
    wanted = {
        "${google_compute_network.hello-vpc.self_link}",
        "${google_compute_subnetwork.hello-vpc-subnet.self_link}",
        "${google_compute_subnetwork.hello-vpc-subnet.ip_cidr_range}",
        "${google_compute_address.hello-vm-ip.address}",
    }
    assert all(reference in text for reference in wanted)


def test_template_output_reference_becomes_the_address_it_names(expansion, files):
    # deployment.yaml's output is $(ref.hello-vm.publicIp), a vm.py output naming the address;
    # the expansion holds it substituted, as DM does.
    assert [o["value"] for o in expansion.outputs] == ["$(ref.hello-vm-ip.address)"]
    assert files["main.tf.json"]["output"] == {
        "publicIp": {"value": "${google_compute_address.hello-vm-ip.address}"}
    }


def test_firewall_rules_mean_what_the_dm_rules_mean(expansion, tf_resources):
    rules = expansion.of_type("compute.v1.firewall")
    assert len(rules) == 6
    for rule in rules:
        tf_type, body = tf_resources[rule["name"]]
        assert tf_type == "google_compute_firewall"
        assert firewall_as_dm(body) == through_outputs(rule["properties"], expansion), rule["name"]


def test_network_subnet_and_address_carry_every_dm_property(expansion, tf_resources):
    for dm_type in ("compute.v1.network", "compute.v1.subnetwork", "compute.v1.address"):
        for resource in expansion.of_type(dm_type):
            _, body = tf_resources[resource["name"]]
            back = {camel(k): as_dm(v) for k, v in body.items() if k != "name"}
            if "routingMode" in back:
                back["routingConfig"] = {"routingMode": back.pop("routingMode")}
            if "logConfig" in back:  # the provider enables flow logs by the block's presence
                (block,) = back["logConfig"]
                back["logConfig"] = {"enable": True, **{camel(k): v for k, v in block.items()}}
            assert back == resource["properties"], resource["name"]


def test_vm_arguments_follow_the_dm_instance(expansion, tf_resources):
    (instance,) = expansion.of_type("compute.v1.instance")
    dm = instance["properties"]
    _, vm = tf_resources[instance["name"]]
    assert vm["zone"] == dm["zone"]
    assert dm["machineType"].endswith("/" + vm["machine_type"])
    assert vm["deletion_protection"] is dm["deletionProtection"] is True
    assert vm["labels"] == dm["labels"]
    assert vm["tags"] == dm["tags"]["items"]
    assert dm["serviceAccounts"] == [] and "service_account" not in vm
    (disk,) = dm["disks"]
    (boot,) = vm["boot_disk"]
    (params,) = boot["initialize_params"]
    assert (boot["device_name"], boot["auto_delete"]) == (disk["deviceName"], disk["autoDelete"])
    assert params["image"] == disk["initializeParams"]["sourceImage"]
    assert str(params["size"]) == disk["initializeParams"]["diskSizeGb"]
    assert disk["initializeParams"]["diskType"].endswith("/" + params["type"])
    (nic,) = dm["networkInterfaces"]
    (tf_nic,) = vm["network_interface"]
    assert as_dm(tf_nic["subnetwork"]) == through_outputs(nic["subnetwork"], expansion)
    (access,) = nic["accessConfigs"]
    assert [as_dm(c) for c in tf_nic["access_config"]] == [
        {"nat_ip": access["natIP"], "network_tier": access["networkTier"]}
    ]
    assert vm["shielded_instance_config"] == [
        {
            "enable_secure_boot": dm["shieldedInstanceConfig"]["enableSecureBoot"],
            "enable_vtpm": dm["shieldedInstanceConfig"]["enableVtpm"],
            "enable_integrity_monitoring": dm["shieldedInstanceConfig"][
                "enableIntegrityMonitoring"
            ],
        }
    ]
    assert vm["scheduling"] == [
        {
            "automatic_restart": dm["scheduling"]["automaticRestart"],
            "on_host_maintenance": dm["scheduling"]["onHostMaintenance"],
        }
    ]


def test_metadata_is_byte_identical_to_the_app_files(expansion, tf_resources):
    (instance,) = expansion.of_type("compute.v1.instance")
    _, vm = tf_resources[instance["name"]]
    assert "metadata_startup_script" not in vm  # it would force a recreate on import
    startup = (REPO / "app" / "startup.sh").read_text()
    assert "${" in startup  # so the escaping below is exercised, not vacuous
    assert literal(vm["metadata"]["startup-script"]) == startup
    assert {k: literal(v) for k, v in vm["metadata"].items()} == {
        item["key"]: item["value"] for item in instance["properties"]["metadata"]["items"]
    }


# -- provider, variables, imports -------------------------------------------------------------


def test_provider_is_pinned_exactly_and_project_is_a_variable(files):
    main = files["main.tf.json"]
    google = main["terraform"]["required_providers"]["google"]
    assert google["source"] == "hashicorp/google"
    assert re.fullmatch(r"\d+\.\d+\.\d+", google["version"])
    assert main["provider"]["google"]["project"] == "${var.project}"
    assert main["variable"]["project"]["default"] == PROJECT
    (validation,) = main["variable"]["project"]["validation"]
    assert validation["condition"] == '${var.project == "' + PROJECT + '"}'


IMPORT_ID = {
    "google_compute_network": r"projects/(?P<p>[^/]+)/global/networks/(?P<n>[^/]+)",
    "google_compute_firewall": r"projects/(?P<p>[^/]+)/global/firewalls/(?P<n>[^/]+)",
    "google_compute_subnetwork": (
        r"projects/(?P<p>[^/]+)/regions/(?P<region>[^/]+)/subnetworks/(?P<n>[^/]+)"
    ),
    "google_compute_address": (
        r"projects/(?P<p>[^/]+)/regions/(?P<region>[^/]+)/addresses/(?P<n>[^/]+)"
    ),
    "google_compute_instance": (
        r"projects/(?P<p>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<n>[^/]+)"
    ),
}


def test_import_blocks_adopt_each_resource_by_a_well_formed_id(files, tf_resources):
    imports = files["imports.tf.json"]["import"]
    # Monitoring's server-assigned names cannot be known before the objects exist.
    adoptable = sorted(n for n, (t, _) in tf_resources.items() if t not in SERVER_NAMED)
    assert sorted(block["to"].split(".", 1)[1] for block in imports) == adoptable
    assert len(adoptable) == 10
    for block in imports:
        tf_type, label = block["to"].split(".", 1)
        assert "${" not in block["to"] + block["id"]  # Terraform 1.5 wants literals here
        assert tf_resources[label][0] == tf_type
        match = re.fullmatch(IMPORT_ID[tf_type], block["id"])
        assert match, block["id"]
        _, body = tf_resources[label]
        assert match["p"] == PROJECT and match["n"] == body["name"]
        for location in ("region", "zone"):
            if location in match.groupdict():
                assert match[location] == body[location]


def test_without_a_project_there_are_no_import_blocks(expansion):
    files = to_terraform(expansion)
    assert set(files) == {"main.tf.json"}
    assert "default" not in files["main.tf.json"]["variable"]["project"]


# -- refusals -----------------------------------------------------------------------------------


def expand_inline(resources: str):
    return expand_files({"inline.yaml": "resources:\n" + resources}, "inline.yaml")


def test_unknown_resource_type_is_refused_with_file_resource_and_type():
    expansion = expand_inline(
        "  - name: logs\n    type: storage.v1.bucket\n    properties: {location: US}\n"
    )
    with pytest.raises(ConfigError) as error:
        to_terraform(expansion, PROJECT)
    assert error.value.file == "inline.yaml"
    assert error.value.field == "resources[logs].type"
    assert "storage.v1.bucket" in error.value.message


def test_untranslated_property_is_refused_not_dropped():
    expansion = expand_inline(
        "  - name: net\n    type: compute.v1.network\n"
        "    properties: {autoCreateSubnetworks: false, enableUlaInternalIpv6: true}\n"
    )
    with pytest.raises(ConfigError) as error:
        to_terraform(expansion, PROJECT)
    assert error.value.field == "resources[net].properties.enableUlaInternalIpv6"


def test_cli_writes_the_module_and_reports_errors(tmp_path):
    def run(*args):
        return run_dmlocal("terraform", *args)

    out = tmp_path / "tf"
    result = run("deployment.yaml", "--out", str(out), "--project", PROJECT)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["imports.tf.json", "main.tf.json"]
    assert json.loads((out / "main.tf.json").read_text())["resource"]
    result = run("deployment.yaml", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["main.tf.json"]  # stale imports removed
    assert "no import blocks" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  - name: logs\n    type: storage.v1.bucket\n")
    result = run(str(bad), "--out", str(out))
    assert result.returncode == 1
    assert "resources[logs].type" in result.stderr


# -- the provider's schema ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider_schema() -> None:
    try:
        provider_schema_module.schema_dir()
    except provider_schema_module.SchemaUnavailable as error:
        pytest.skip(str(error))


def test_arguments_exist_in_the_pinned_google_provider_schema(provider_schema, files):
    assert provider_schema_module.captured_version() == GOOGLE_PROVIDER_VERSION, (
        "the schema checked here is not the pinned provider's: update CDKTF_PACKAGE in "
        "dmlocal/provider_schema.py, or if no package captures the new version, say in this "
        "docstring what is no longer checked"
    )
    problems, checked = provider_schema_module.module_problems(files["main.tf.json"]["resource"])
    assert checked > 60
    assert problems == []


def test_the_schema_check_finds_a_misnamed_argument_and_a_wrong_type(provider_schema, files):
    resources = json.loads(json.dumps(files["main.tf.json"]["resource"]))
    vm = resources["google_compute_instance"]["hello-vm"]
    vm["machine_typ"] = vm.pop("machine_type")
    vm["boot_disk"][0]["initialize_params"][0]["size"] = "ten"
    problems, _ = provider_schema_module.module_problems(resources)
    assert sorted(problems) == [
        "google_compute_instance.hello-vm.boot_disk[0].initialize_params[0].size: "
        "'ten' is not number",
        "google_compute_instance.hello-vm.machine_typ: no such argument",
    ]
