"""The three schemas: defaults, rejection of the inputs an operator could get wrong, and the
outputs through which deployment.yaml wires the templates together."""

import pytest
import yaml

from dmlocal.errors import ConfigError
from dmlocal.expand import expand_path
from dmlocal.references import REFERENCE, template_outputs
from dmlocal.schema import apply_schema, load_schema
from tests.conftest import REPO, deployment_properties, render

TEMPLATES = {"network.py": "hello-vpc", "firewall.py": "hello-firewall", "vm.py": "hello-vm"}


def check(template: str, properties: dict) -> dict:
    schema_file = f"{template}.schema"
    schema = load_schema((REPO / schema_file).read_text(), schema_file)
    return apply_schema(
        schema, properties, config_file="deployment.yaml", resource="r", schema_file=schema_file
    )


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_deployment_yaml_properties_are_valid(template):
    check(template, deployment_properties(TEMPLATES[template]))


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_property_is_typed_and_described_and_typos_are_rejected(template):
    schema = yaml.safe_load((REPO / f"{template}.schema").read_text())
    assert schema["additionalProperties"] is False
    for name, spec in schema["properties"].items():
        assert spec.get("type"), f"{template}.schema: {name} has no type"
        assert spec.get("description"), f"{template}.schema: {name} has no description"
    for name in schema.get("required", []):
        assert "default" not in schema["properties"][name], f"{name} is required yet defaulted"


def test_defaults_are_filled_in():
    filled = check("vm.py", {"zone": "us-east1-b", "subnetwork": "$(ref.s.selfLink)"})
    assert filled["machineType"] == "e2-small"
    assert filled["deletionProtection"] is True
    assert filled["image"] == "projects/debian-cloud/global/images/family/debian-12"
    firewall = check(
        "firewall.py", {"network": "$(ref.n.selfLink)", "vpcSourceRanges": ["10.0.0.0/8"]}
    )
    assert firewall["sshSourceRanges"] == ["104.154.0.0/15"]


@pytest.mark.parametrize(
    ("template", "change", "field", "says"),
    [
        ("vm.py", {"zonee": "us-central1-a"}, ".properties", "did you mean 'zone'"),
        ("vm.py", {"zone": "us-central1"}, ".properties.zone", " must be "),
        ("vm.py", {"deletionProtection": "yes"}, ".properties.deletionProtection", "boolean"),
        ("vm.py", {"bootDiskSizeGb": 5}, ".properties.bootDiskSizeGb", "minimum"),
        ("vm.py", {"labels": {"Team": "Dev Ops"}}, ".properties.labels.Team", " must be "),
        ("network.py", {"subnetCidr": "10.10.0.0/33"}, ".properties.subnetCidr", " must be "),
        ("network.py", {"subnetCidr": "10.10.0.0"}, ".properties.subnetCidr", " must be "),
        ("network.py", {"region": "us-central1-a"}, ".properties.region", " must be "),
        (
            "firewall.py",
            {"sshSourceRanges": "104.154.0.0/15"},
            ".properties.sshSourceRanges",
            "array",
        ),
        ("firewall.py", {"sshSourceRanges": []}, ".properties.sshSourceRanges", "non-empty"),
        (
            "firewall.py",
            {"vpcSourceRanges": ["10.10.0.0/24 "]},
            ".vpcSourceRanges[0]",
            "has a trailing space: write '10.10.0.0/24'",
        ),
        ("firewall.py", {"targetTag": "Hello_Web"}, ".properties.targetTag", " must be "),
    ],
)
def test_bad_values_are_rejected_with_field_and_fix(template, change, field, says):
    properties = {**deployment_properties(TEMPLATES[template]), **change}
    with pytest.raises(ConfigError) as raised:
        check(template, properties)
    assert raised.value.file == "deployment.yaml"
    assert raised.value.field.startswith("resources[r].properties")
    assert field in raised.value.field
    assert says in str(raised.value)


@pytest.mark.parametrize(
    ("cidr", "private"),
    [
        ("10.0.0.0/8", True),
        ("10.10.0.0/24", True),
        ("172.16.0.0/12", True),
        ("172.31.255.0/24", True),
        ("192.168.0.0/16", True),
        ("192.168.10.0/29", True),
        # Google's own public range, not RFC 1918 although it starts with 172.
        ("172.217.0.0/24", False),
        ("172.15.0.0/24", False),
        ("172.32.0.0/24", False),
        ("172.16.0.0/11", False),
        ("192.169.0.0/24", False),
        ("192.168.0.0/15", False),
        ("11.0.0.0/24", False),
        ("100.64.0.0/24", False),
    ],
)
def test_subnet_cidr_is_an_rfc_1918_block_as_its_description_says(cidr, private):
    """RFC 1918 section 3: 10/8, 172.16/12 and 192.168/16 are the private blocks."""
    properties = {**deployment_properties("hello-vpc"), "subnetCidr": cidr}
    if private:
        check("network.py", properties)
        return
    with pytest.raises(ConfigError) as raised:
        check("network.py", properties)
    assert raised.value.field.endswith(".properties.subnetCidr")
    assert "RFC 1918" in str(raised.value)


@pytest.mark.parametrize(("template", "required"), [("vm.py", "zone"), ("network.py", "region")])
def test_missing_required_property_is_named(template, required):
    properties = dict(deployment_properties(TEMPLATES[template]))
    del properties[required]
    with pytest.raises(ConfigError) as raised:
        check(template, properties)
    assert raised.value.field == f"resources[r].properties.{required}"
    assert "required" in raised.value.message


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_schema_documents_exactly_the_outputs_its_template_returns(template):
    """A template's outputs are its interface (like terraform-google-modules' Outputs table):
    each one the template returns is typed and described in its schema, and none is invented."""
    schema = yaml.safe_load((REPO / f"{template}.schema").read_text())
    documented = schema.get("outputs") or {}
    returned = render(template, TEMPLATES[template], deployment_properties(TEMPLATES[template]))
    assert sorted(documented) == sorted(o["name"] for o in returned.get("outputs") or [])
    for name, spec in documented.items():
        assert spec.get("type") and spec.get("description"), f"{template}.schema: {name}"


def test_deployment_wires_templates_only_through_their_outputs():
    """deployment.yaml never names a resource a template creates inside itself: it references
    template outputs, `$(ref.TEMPLATE_RESOURCE.OUTPUT)`, which Deployment Manager documents for
    exactly this, a sibling resource's properties consuming a template's output
    (https://cloud.google.com/deployment-manager/docs/configuration/expose-information-outputs:
    a compute.v1.instance beside template `my_mongo` sets `databaseIp: $(ref.my_mongo.databaseIp)`).
    Every template output is used, so none is dead."""
    expansion = expand_path(REPO / "deployment.yaml")
    outputs = template_outputs(expansion.layout)
    config = yaml.safe_load((REPO / "deployment.yaml").read_text())
    used = set()
    for value in [r.get("properties") for r in config["resources"]] + [config["outputs"]]:
        for target, field in REFERENCE.findall(yaml.safe_dump(value)):
            assert field in outputs.get(target, {}), f"$(ref.{target}.{field}) is not an output"
            used.add((target, field))
    assert used == {(name, o) for name, declared in outputs.items() for o in declared}
