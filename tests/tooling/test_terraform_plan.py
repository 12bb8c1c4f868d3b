"""The Infrastructure Manager emulator's Terraform run (emulators/terraform_plan.py), directly.

Its materialised resources must be what Deployment Manager creates from the same config, or a
DM-to-IM adoption would show changes that are artefacts of the emulator: so the Terraform
arguments `dmlocal terraform` writes, turned back into compute.v1 properties here, must equal
the DM expansion's properties (references aside), for every resource of the real stack. And it
must be as strict as Terraform where these tests say so. No Terraform binary runs here.
"""

from __future__ import annotations

import json
import re

import pytest

from dmlocal import provider_schema
from dmlocal.terraform import SERVER_NAMED, TF_TYPES, to_terraform
from emulators import terraform_plan
from emulators.terraform_plan import TerraformError, gce_properties, read_module, run
from tests.conftest import REPO
from tests.tooling.test_terraform import alerting_expansion, through_outputs

PROJECT = "hello-prod-1234"


@pytest.fixture(scope="module")
def expansion(tmp_path_factory):
    return alerting_expansion(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def schema():
    try:
        provider_schema.schema_dir()
    except provider_schema.SchemaUnavailable as error:
        pytest.skip(str(error))


def files_of(documents: dict[str, dict]) -> dict[str, bytes]:
    return {name: json.dumps(doc).encode() for name, doc in documents.items()}


def test_terraform_arguments_materialise_as_the_dm_properties(expansion):
    """Both sides with the same values behind every reference: DM's $(ref.NAME.FIELD) and
    Terraform's ${TYPE.NAME.ATTR} read the same fake resource."""
    fake = {
        r["name"]: {
            "name": r["name"],
            "selfLink": f"https://example.invalid/{r['name']}",
            "address": f"address-of-{r['name']}",
            "ipCidrRange": f"range-of-{r['name']}",
        }
        for r in expansion.resources
    }
    resources = to_terraform(expansion, PROJECT)["main.tf.json"]["resource"]
    scope = terraform_plan.Scope(
        {"project": PROJECT},
        {f"{TF_TYPES[r['type']]}.{r['name']}": fake[r["name"]] for r in expansion.resources},
    )
    for resource in expansion.resources:
        tf_type = TF_TYPES[resource["type"]]
        arguments = scope.evaluate(resources[tf_type][resource["name"]])
        got = gce_properties(tf_type, arguments, PROJECT)
        named = {} if tf_type in SERVER_NAMED else {"name": resource["name"]}
        dm = re.sub(
            r"\$\(ref\.([^.()\s]+)\.(\w+)\)",
            lambda m: fake[m[1]][m[2]],
            json.dumps({**named, **through_outputs(resource["properties"], expansion)}),
        )
        assert got == json.loads(dm), resource["name"]


def test_the_real_module_plans_a_create_per_resource_and_its_output(expansion, schema):
    files = files_of(to_terraform(expansion))
    module = read_module(files, {"project": PROJECT})
    cloud: dict = {}

    def materialize(dm_type, name, properties, existing):
        link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/x/{name}"
        return {**properties, "name": name, "selfLink": link, "address": "192.0.2.7"}

    plan, state = run(module, {}, cloud, False, materialize)
    assert [c.actions for c in plan.changes] == [["create"]] * len(expansion.resources)
    assert plan.outputs == {"publicIp": "192.0.2.7"}
    assert len(state) == len(expansion.resources) == 13
    vm = cloud["compute.v1.instance"]["hello-vm"]
    assert {i["key"]: i["value"] for i in vm["metadata"]["items"]}["startup-script"] == (
        REPO / "app" / "startup.sh"
    ).read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.update({"main.tf": b"resource {}"}), "HCL is not read"),
        (
            lambda f: f.update({"x.tf.json": b'{"modules": {}}'}),
            'Unsupported block type: "modules"',
        ),
        (lambda f: f.update({"x.tf.json": b"{"}), "invalid JSON"),
    ],
)
def test_configuration_errors_terraform_would_report(expansion, schema, edit, message):
    files = files_of(to_terraform(expansion))
    edit(files)
    with pytest.raises(TerraformError, match=message):
        read_module(files, {"project": PROJECT})


def test_variables_are_checked_like_terraform(expansion, schema):
    files = files_of(to_terraform(expansion, PROJECT))
    with pytest.raises(TerraformError, match="undeclared variable"):
        read_module(files, {"project": PROJECT, "region": "x"})
    with pytest.raises(TerraformError, match="Invalid value for variable project"):
        read_module(files, {"project": "someone-else"})
    without_default = files_of(to_terraform(expansion))
    with pytest.raises(TerraformError, match='No value for required variable "project"'):
        read_module(without_default, {})


def test_an_import_of_a_missing_object_fails(expansion, schema):
    module = read_module(files_of(to_terraform(expansion, PROJECT)), {})
    with pytest.raises(TerraformError, match="Cannot import non-existent remote object"):
        run(module, {}, {}, False, lambda *a: {})


def _applied(expansion):
    """The real module applied to an empty cloud: (documents, state, cloud, materialize)."""
    documents = to_terraform(expansion)
    files = files_of(documents)
    cloud: dict = {}

    def materialize(dm_type, name, properties, existing):
        link = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/x/{name}"
        held = {**(existing or {}), **properties, "name": name, "selfLink": link}
        return {"address": "192.0.2.7", **held}

    _, state = run(read_module(files, {"project": PROJECT}), {}, cloud, False, materialize)
    return documents, state, cloud, materialize


def test_a_machine_type_change_needs_allow_stopping_for_update_on_a_running_instance(
    expansion, schema
):
    """The google provider refuses to change machine_type on a started instance unless
    allow_stopping_for_update is true ("Changing the machine_type, ... on a started instance
    requires stopping it. To acknowledge this, please set allow_stopping_for_update = true in
    your config"). The export sets it false on purpose, so the apply fails; with true, or on a
    stopped instance, it updates in place."""
    documents, state, cloud, materialize = _applied(expansion)
    vm = documents["main.tf.json"]["resource"]["google_compute_instance"]["hello-vm"]
    assert vm["allow_stopping_for_update"] is False
    vm["machine_type"] = "e2-medium"
    module = read_module(files_of(documents), {"project": PROJECT})
    with pytest.raises(TerraformError, match="requires stopping it") as refused:
        run(module, state, cloud, False, materialize)
    assert "machine_type" in str(refused.value)
    assert "allow_stopping_for_update = true" in str(refused.value)

    vm["allow_stopping_for_update"] = True
    module = read_module(files_of(documents), {"project": PROJECT})
    plan, _ = run(module, state, cloud, False, materialize)
    assert [c.actions for c in plan.changes if c.address.endswith("hello-vm")] == [["update"]]

    vm.update(allow_stopping_for_update=False, machine_type="e2-standard-2")
    cloud["compute.v1.instance"]["hello-vm"]["status"] = "TERMINATED"
    module = read_module(files_of(documents), {"project": PROJECT})
    plan, _ = run(module, state, cloud, False, materialize)
    assert [c.actions for c in plan.changes if c.address.endswith("hello-vm")] == [["update"]]


def test_the_module_runs_only_on_the_terraform_it_requires(expansion, schema):
    """Terraform refuses a configuration whose required_version excludes it ("Unsupported
    Terraform Core version"); the export asks for the 1.5 line Infrastructure Manager runs."""
    module = read_module(files_of(to_terraform(expansion)), {"project": PROJECT})
    assert module.required_versions == ["~> 1.5.7"]
    module.check_core("1.5.7")
    for older in ("1.4.7", "1.3.10"):
        with pytest.raises(TerraformError, match=f"does not support Terraform version {older}"):
            module.check_core(older)
