"""The expansion engine on configs that use DM features the hello stack does not.

tests/configs/nested/ has templates that expand into templates, imports renamed with `name:`
from a subdirectory, a helper module and a file reached only through a schema's own `imports:`,
outputs at every level, references across templates (to leaves and to template outputs),
`metadata.dependsOn`, a YAML-string result, and a template with both generate_config and
GenerateConfig. tests/configs/broken/ holds configs each broken in one way; more broken variants
are made by editing a copy of the nested config. Everything runs through the same entry points
operators use (`expand_path` and `dmlocal preview`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dmlocal.errors import ConfigError
from dmlocal.expand import default_env, expand_path
from dmlocal.reachability import evaluate, firewall_rules, resolver_for
from dmlocal.references import follow, template_outputs
from dmlocal.validate import validate
from tests.conftest import REPO, run_dmlocal

CONFIGS = REPO / "tests" / "configs"
NESTED = CONFIGS / "nested"


def preview(config: Path) -> subprocess.CompletedProcess:
    return run_dmlocal("preview", str(config))


@pytest.fixture(scope="module")
def nested():
    return expand_path(NESTED / "config.yaml", default_env("lab-deploy", "lab-project"))


@pytest.fixture
def nested_copy(tmp_path) -> Path:
    shutil.copytree(NESTED, tmp_path / "nested")
    return tmp_path / "nested"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path.name}"
    path.write_text(text.replace(old, new))


def test_nested_templates_expand_to_leaves_only(nested):
    assert [(r["name"], r["type"]) for r in nested.resources] == [
        ("lab-net-vpc", "compute.v1.network"),
        ("lab-net-subnet", "compute.v1.subnetwork"),
        ("lab-web-ip", "compute.v1.address"),
        ("lab-web", "compute.v1.instance"),
        ("lab-web-allow-http", "compute.v1.firewall"),
        ("lab-audit-ip", "compute.v1.address"),
    ]
    # The layout keeps the template tree: lab (stack.py) -> lab-net (net.py), lab-web (web.py).
    [lab, audit] = nested.layout["resources"]
    assert (lab["name"], lab["type"], audit["name"]) == ("lab", "stack.py", "lab-audit-ip")
    assert [(c["name"], c["type"]) for c in lab["resources"]] == [
        ("lab-net", "net.py"),
        ("lab-web", "web.py"),
    ]


def test_generate_config_wins_and_schema_defaults_apply(nested):
    # stack.py's GenerateConfig raises; expansion succeeding proves generate_config ran.
    vm = next(r for r in nested.resources if r["name"] == "lab-web")
    assert vm["properties"]["machineType"] == "zones/europe-west1-b/machineTypes/e2-micro"


def test_env_keys_imports_and_schema_imports_reach_the_template(nested):
    vm = next(r for r in nested.resources if r["name"] == "lab-web")
    assert vm["properties"]["description"] == (
        "deployment=lab-deploy,name=lab-web,project=lab-project,project_number=123456789012,"
        "type=web.py,username=operator@example.com"
    )
    assert vm["properties"]["labels"]["created"].isdigit()  # context.env["current_time"]
    [motd] = vm["properties"]["metadata"]["items"]
    assert motd["value"] == (NESTED / "files" / "motd.txt").read_text()
    # naming.py is imported only by web.py.schema; web.py used it to name these.
    assert {"lab-web-ip", "lab-web-allow-http"} <= {r["name"] for r in nested.resources}


def test_outputs_and_creation_order_follow_references(nested):
    assert nested.outputs == [
        {"name": "webIp", "value": "$(ref.lab-web-ip.address)"},
        {"name": "network", "value": "$(ref.lab-net-vpc.selfLink)"},
        {"name": "auditIp", "value": "$(ref.lab-audit-ip.address)"},
    ]
    order = nested.creation_order
    # lab-web refers to lab-net's output subnetLink -> lab-net-subnet; and to its own address.
    assert order.index("lab-net-subnet") < order.index("lab-web")
    assert order.index("lab-web-ip") < order.index("lab-web")
    assert order.index("lab-net-vpc") < order.index("lab-web-allow-http")
    # dependsOn: the audit address waits for the VM.
    assert order.index("lab-web") < order.index("lab-audit-ip")
    assert set(nested.dependencies["lab-web"]) >= {"lab-net-subnet", "lab-web-ip"}


def test_nested_config_validates_and_firewall_follows_cross_template_refs(nested):
    assert validate(nested) == []
    rules = firewall_rules(nested.resources)
    resolve = resolver_for(nested.resources, nested.layout)
    inside = evaluate(rules, "10.30.0.9", "tcp", 80, tags=["lab-web"], resolve=resolve)
    assert (inside.allowed, inside.rule) == (True, "lab-web-allow-http")
    assert not evaluate(rules, "10.30.0.9", "tcp", 22, tags=["lab-web"], resolve=resolve).allowed


def test_nested_config_through_the_cli():
    result = preview(NESTED / "config.yaml")
    assert result.returncode == 0, result.stderr
    assert len(yaml.safe_load(result.stdout)["resources"]) == 6
    assert "  from inside the VPC (10.30.0.0/24)  deny      allow" in result.stderr


# -- broken variants of the nested config -------------------------------------------------------


def test_enum_violation_in_a_nested_template_names_the_calling_template(nested_copy):
    edit(
        nested_copy / "templates" / "stack.py",
        '"internalRange": f"$(ref.{name}-net-subnet.ipCidrRange)",',
        '"internalRange": f"$(ref.{name}-net-subnet.ipCidrRange)",\n'
        '                    "machineType": "e2-huge",',
    )
    with pytest.raises(ConfigError) as caught:
        expand_path(nested_copy / "config.yaml")
    assert caught.value.file == "stack.py"
    assert caught.value.field == "resources[lab-web].properties.machineType"
    assert "'e2-huge' is not one of 'e2-micro', 'e2-small', 'e2-medium'" in caught.value.message


def test_reference_to_a_missing_template_output(nested_copy):
    edit(nested_copy / "templates" / "stack.py", "net.subnetLink)", "net.subnet)")
    with pytest.raises(ConfigError) as caught:
        expand_path(nested_copy / "config.yaml")
    assert caught.value.file == "web.py"
    assert "template resource 'lab-net' (net.py) has no output 'subnet'" in caught.value.message
    assert "its outputs: network, subnetLink" in caught.value.message


def test_config_output_pointing_at_a_missing_output(nested_copy):
    edit(nested_copy / "config.yaml", "$(ref.lab.webIp)", "$(ref.lab.webAddress)")
    with pytest.raises(ConfigError) as caught:
        expand_path(nested_copy / "config.yaml")
    assert caught.value.field == "outputs[webIp]"
    assert "has no output 'webAddress'; its outputs: webIp" in caught.value.message


def test_cycle_across_templates(nested_copy):
    edit(
        nested_copy / "templates" / "net.py",
        '"ipCidrRange": context.properties["cidr"],\n                },',
        '"ipCidrRange": context.properties["cidr"],\n                },\n'
        '                "metadata": {"dependsOn": ["lab-web"]},',
    )
    with pytest.raises(ConfigError) as caught:
        expand_path(nested_copy / "config.yaml")
    assert "references form a cycle" in caught.value.message
    assert "lab-net-subnet -> lab-web -> lab-net-subnet" in caught.value.message


def test_schema_import_that_is_missing(nested_copy):
    (nested_copy / "templates" / "naming.py").unlink()
    with pytest.raises(ConfigError) as caught:
        expand_path(nested_copy / "config.yaml")
    assert caught.value.file.endswith("web.py.schema")
    assert caught.value.field == "imports[0].path"
    assert "file not found" in caught.value.message


def test_without_generate_config_the_raising_GenerateConfig_runs(nested_copy):
    # The counterpart of test_generate_config_wins...: proves that test can fail.
    edit(nested_copy / "templates" / "stack.py", "def generate_config(", "def unused_config(")
    with pytest.raises(ConfigError) as caught:
        expand_path(nested_copy / "config.yaml")
    assert caught.value.file.startswith("stack.py:")
    assert "GenerateConfig must not run" in caught.value.message


# -- standalone broken configs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "cycle.yaml",
            "broken/cycle.yaml: resources[addr-a]: references form a cycle, so nothing could be "
            "created first: addr-a -> addr-b -> addr-a",
        ),
        (
            "depends-on-missing.yaml",
            "broken/depends-on-missing.yaml: resources[addr-a].metadata.dependsOn: 'addr-z' is "
            "not a resource in this deployment",
        ),
        ("jinja.yaml", "resources[thing].type: 'thing.jinja' is a Jinja template"),
        ("self-nesting.yaml", "templates nest deeper than 20 levels"),
        ("raising.yaml", "error: raising.py:5: resources[boom]: the template failed: KeyError"),
        ("duplicate-name.yaml", "resources[addr].name: 'addr' is already used by a resource"),
        ("bad-gce-name.yaml", "'Web_Server' is not a valid Compute Engine name"),
        ("missing-import.yaml", "imports[0].path: file not found"),
    ],
)
def test_broken_config_is_refused_with_its_reason(config, message):
    result = preview(CONFIGS / "broken" / config)
    assert result.returncode == 1
    assert result.stdout == ""
    assert message in result.stderr


def test_template_output_wins_over_a_same_named_resource_field(tmp_path):
    """A template that names its main resource after itself (as vm.py does with `hello-vm`):
    `$(ref.T.OUTPUT)` means the template's output, and waits for what the output refers to."""
    (tmp_path / "t.py").write_text(
        "def GenerateConfig(context):\n"
        "    name = context.env['name']\n"
        "    return {'resources': [\n"
        "        {'name': name, 'type': 'compute.v1.network', 'properties': {}},\n"
        "        {'name': name + '-ip', 'type': 'compute.v1.address', 'properties': {}}],\n"
        "        'outputs': [{'name': 'ip', 'value': '$(ref.' + name + '-ip.address)'}]}\n"
    )
    (tmp_path / "c.yaml").write_text(
        "imports: [{path: t.py}]\n"
        "resources:\n"
        "  - {name: t, type: t.py}\n"
        "  - {name: user, type: compute.v1.firewall, properties: {description: $(ref.t.ip)}}\n"
        "  - {name: other, type: compute.v1.firewall, properties: {network: $(ref.t.selfLink)}}\n"
    )
    expansion = expand_path(tmp_path / "c.yaml")
    assert expansion.dependencies["user"] == ["t-ip"]
    assert expansion.dependencies["other"] == ["t"]


def test_a_template_name_used_in_two_parents_is_not_followed_globally():
    """Outputs are scoped per level (expandybird/expansion/expansion.py, _BuildOutputMap): the
    checks that follow a reference through template outputs by name alone must not pick the
    other parent's `net`."""
    net = {"name": "net", "resources": []}
    layout = {
        "resources": [
            {"name": "web", "resources": [{**net, "outputs": [{"name": "n", "value": "A"}]}]},
            {"name": "api", "resources": [{**net, "outputs": [{"name": "n", "value": "B"}]}]},
        ]
    }
    outputs = template_outputs(layout)
    assert set(outputs) == {"web", "api"}
    assert follow("$(ref.net.n)", outputs) == "$(ref.net.n)"
