"""Realistic operator mistakes, each caught by `dmlocal preview` with a useful message.

Every test copies the real stack (deployment.yaml, the three templates and schemas, app/) into a
temporary directory, makes ONE edit an operator could plausibly make, runs the CLI as a
subprocess exactly as `make preview` does, and asserts the exit code and the message line: the
file, the resource, the field and what would be valid. Expected lines are written out in full so
a vaguer message fails the test. The unedited stack is checked first, so a test cannot pass just
because the stack was already broken.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, copy_stack, run_dmlocal

# A second firewall rule an operator might add for a load balancer's health checks. Variants of
# it carry the mistakes that only a resource written directly in deployment.yaml can have.
EXTRA_RULE = """
  - name: allow-health-checks
    type: compute.v1.firewall
    properties:
      network: $(ref.hello-vpc.selfLink)
      direction: INGRESS
      priority: 900
      sourceRanges:
        - 35.191.0.0/16
      targetTags:
        - hello-web
      allowed:
        - IPProtocol: tcp
          ports:
            - "80"
"""


class Stack:
    """A private copy of the stack, edited one realistic change at a time."""

    def __init__(self, root: Path):
        self.root = copy_stack(root)

    @property
    def config(self) -> str:
        return str(self.root / "deployment.yaml")

    def edit(self, file: str, old: str, new: str) -> None:
        path = self.root / file
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} must occur exactly once in {file}"
        path.write_text(text.replace(old, new))

    def add_resource(self, yaml_text: str) -> None:
        self.edit("deployment.yaml", "\noutputs:", yaml_text + "\noutputs:")

    def line_of(self, text: str, file: str = "deployment.yaml") -> int:
        lines = (self.root / file).read_text().splitlines()
        return next(i for i, line in enumerate(lines, 1) if text in line)

    def at(self, text: str) -> str:
        """The suffix naming the config line of a resource declared in the config itself."""
        return f" [set at {self.config}:{self.line_of(text)}]"

    def preview(self, *extra: str) -> subprocess.CompletedProcess:
        return run_dmlocal("preview", self.config, *extra, cwd=self.root)


@pytest.fixture(scope="module")
def clean_stack_is_valid(tmp_path_factory) -> None:
    """The unedited copy passes, so each mistake below is what makes its test fail."""
    clean = Stack(tmp_path_factory.mktemp("clean")).preview()
    assert clean.returncode == 0, clean.stderr
    assert "valid: 0 error(s), 0 warning(s)" in clean.stderr


@pytest.fixture
def stack(tmp_path, clean_stack_is_valid) -> Stack:
    return Stack(tmp_path)


def assert_invalid(result: subprocess.CompletedProcess, *lines: str) -> None:
    assert result.returncode == 1, result.stderr
    got = result.stderr.splitlines()
    for line in lines:
        assert line in got, f"missing line:\n{line}\nstderr was:\n{result.stderr}"


# -- mistakes in deployment.yaml caught by the templates' schemas (engine) -----------------------


def test_property_name_typo(stack):
    stack.edit("deployment.yaml", "machineType: e2-small", "machinetype: e2-small")
    result = stack.preview()
    assert result.returncode == 1
    assert result.stdout == ""
    assert (
        f"error: {stack.config}: resources[hello-vm].properties: unknown property 'machinetype': "
        "did you mean 'machineType'?"
    ) in result.stderr


def test_missing_required_property(stack):
    stack.edit("deployment.yaml", "      subnetwork: $(ref.hello-vpc.subnetwork)\n", "")
    result = stack.preview()
    assert result.returncode == 1
    assert (
        f"error: {stack.config}: resources[hello-vm].properties.subnetwork: required property "
        "is missing"
    ) in result.stderr


def test_cidr_typo_rejected_by_schema_pattern(stack):
    stack.edit("deployment.yaml", "subnetCidr: 10.10.0.0/24", "subnetCidr: 10.10.0/24")
    result = stack.preview()
    assert result.returncode == 1
    assert (
        f"error: {stack.config}: resources[hello-vpc].properties.subnetCidr: '10.10.0/24' is not "
        "valid here"
    ) in result.stderr
    assert (
        "10.10.0 is not an IPv4 address (four numbers 0-255 separated by dots); subnetCidr "
        "must be a private IPv4 block"
    ) in result.stderr


def test_reference_to_a_resource_that_does_not_exist(stack):
    stack.edit("deployment.yaml", "$(ref.hello-vpc.subnetwork)", "$(ref.hello-vcp.subnetwork)")
    result = stack.preview()
    assert result.returncode == 1
    assert (
        "error: vm.py: resources[hello-vm].properties.networkInterfaces[0].subnetwork: "
        "$(ref.hello-vcp.subnetwork) points to no resource in this deployment: "
        "did you mean 'hello-vpc'?"
    ) in result.stderr


def test_boolean_written_as_a_word(stack):
    stack.edit("deployment.yaml", "deletionProtection: true", 'deletionProtection: "no"')
    result = stack.preview()
    assert result.returncode == 1
    assert (
        f"error: {stack.config}: resources[hello-vm].properties.deletionProtection: 'no' is text, "
        "not a boolean: write true or false, without quotes"
    ) in result.stderr


# -- mistakes the schemas let through, caught by the validator's semantic checks ----------------


def test_cidr_octet_out_of_range(stack):
    stack.edit("deployment.yaml", "subnetCidr: 10.10.0.0/24", "subnetCidr: 10.10.0.300/24")
    line = stack.line_of("subnetCidr:")
    assert_invalid(
        stack.preview(),
        "error: network.py: hello-vpc-subnet.ipCidrRange: '10.10.0.300/24' is not a CIDR range: "
        "10.10.0.300 is not an IPv4 address (four numbers 0-255 separated by dots); "
        "write ADDRESS/PREFIX, e.g. 10.10.0.0/24 or 203.0.113.7/32 "
        f"[set at {stack.config}:{line} (hello-vpc.subnetCidr)]",
    )


def test_subnet_cidr_with_host_bits(stack):
    stack.edit("deployment.yaml", "subnetCidr: 10.10.0.0/24", "subnetCidr: 10.10.0.1/24")
    line = stack.line_of("subnetCidr:")
    assert_invalid(
        stack.preview(),
        "error: network.py: hello-vpc-subnet.ipCidrRange: '10.10.0.1/24' has host bits set: the "
        f"range is 10.10.0.0/24 [set at {stack.config}:{line} (hello-vpc.subnetCidr)]",
    )


def test_ssh_range_prefix_typo(stack):
    stack.edit("deployment.yaml", "- 104.154.0.0/15", "- 104.154.0.0/51")
    line = stack.line_of("104.154.0.0/51")
    assert_invalid(
        stack.preview(),
        "error: firewall.py: hello-firewall-allow-ssh.sourceRanges[0]: '104.154.0.0/51' is not a "
        "CIDR range: the prefix length /51 is out of range for IPv4 (/0 to /32); "
        "write ADDRESS/PREFIX, e.g. 10.10.0.0/24 or 203.0.113.7/32 "
        f"[set at {stack.config}:{line} (hello-firewall.sshSourceRanges[0])]",
    )


def test_zone_outside_the_subnet_region(stack):
    stack.edit("deployment.yaml", "zone: us-central1-a", "zone: us-east1-b")
    line = stack.line_of("zone: us-east1-b")
    assert_invalid(
        stack.preview(),
        "error: vm.py: hello-vm.zone: zone us-east1-b is in region us-east1, but "
        "networkInterfaces[0] uses subnet 'hello-vpc-subnet' in us-central1: pick a zone of "
        "us-central1 (e.g. us-central1-a) or a subnet in us-east1 "
        f"[set at {stack.config}:{line} (hello-vm.zone)]",
    )


def test_overlapping_subnet_in_the_same_vpc(stack):
    stack.add_resource(
        """
  - name: hello-db-subnet
    type: compute.v1.subnetwork
    properties:
      network: $(ref.hello-vpc.selfLink)
      region: us-central1
      ipCidrRange: 10.10.0.128/25
"""
    )
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: hello-db-subnet.ipCidrRange: 10.10.0.128/25 overlaps 10.10.0.0/24 "
        "(hello-vpc-subnet.ipCidrRange) in the same VPC; subnet ranges of one network must be "
        f"disjoint{stack.at('10.10.0.128/25')}",
    )


def test_uppercase_label_key(stack):
    stack.edit(
        "deployment.yaml",
        "        app: hello-benchsci",
        "        Owner: platform\n        app: hello-benchsci",
    )
    line = stack.line_of("Owner: platform")
    message = (
        "label key 'Owner' is invalid: lowercase letters, digits, '_' and '-', 1-63 characters, "
        f"starting with a letter (e.g. 'owner') [set at {stack.config}:{line} "
        "(hello-vm.labels.Owner)]"
    )
    assert_invalid(
        stack.preview(),
        f"error: vm.py: hello-vm.labels.Owner: {message}",
        f"error: vm.py: hello-vm-ip.labels.Owner: {message}",
    )


def test_output_name_typo_on_a_template_sharing_its_vms_name(stack):
    # `hello-vm` is both the vm.py template and its instance, so the engine sees a resource;
    # only the field check knows neither has `publicIpp`.
    stack.edit("deployment.yaml", "$(ref.hello-vm.publicIp)", "$(ref.hello-vm.publicIpp)")
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: outputs.publicIp: $(ref.hello-vm.publicIpp): "
        "compute.v1.instance 'hello-vm' has no field 'publicIpp' (Instance): did you mean "
        "'publicIp'? see https://cloud.google.com/compute/docs/reference/rest/v1/instances; "
        "template 'hello-vm' outputs: publicIp",
    )


# -- mistakes in an edited template -------------------------------------------------------------


def test_reference_to_a_field_the_subnet_does_not_have(stack):
    stack.edit("firewall.py", 'sourceRanges=list(properties["vpcSourceRanges"]),',
               'sourceRanges=["$(ref.hello-vpc-subnet.ipCidrRnge)"],')  # fmt: skip
    assert_invalid(
        stack.preview(),
        "error: firewall.py: hello-firewall-allow-internal.sourceRanges[0]: "
        "$(ref.hello-vpc-subnet.ipCidrRnge): compute.v1.subnetwork 'hello-vpc-subnet' has no "
        "field 'ipCidrRnge' (Subnetwork): did you mean 'ipCidrRange'? see "
        "https://cloud.google.com/compute/docs/reference/rest/v1/subnetworks "
        f"[set at firewall.py:{stack.line_of('ipCidrRnge', 'firewall.py')}]",
    )


def test_port_with_letter_o_instead_of_zero(stack):
    stack.edit("firewall.py", '"ports": ["80", "443"]', '"ports": ["8O", "443"]')
    line = stack.line_of('"8O"', "firewall.py")
    assert_invalid(
        stack.preview(),
        "error: firewall.py: hello-firewall-allow-web.allowed[0].ports[0]: '8O' is not a port: "
        "did you mean '80'? a port is a number 0-65535 or a range like '8000-8080' "
        f"[set at firewall.py:{line}]",
    )


def test_protocol_with_trailing_space(stack):
    stack.edit(
        "firewall.py",
        'allowed=[{"IPProtocol": "tcp", "ports": ["22"]}]',
        'allowed=[{"IPProtocol": "TCP ", "ports": ["22"]}]',
    )
    assert_invalid(
        stack.preview(),
        "error: firewall.py: hello-firewall-allow-ssh.allowed[0].IPProtocol: 'TCP ' is not a "
        "protocol GCP accepts; has stray whitespace: did you mean 'tcp'? "
        f"[set at firewall.py:{stack.line_of('TCP ', 'firewall.py')}]",
    )


def test_api_field_typo_with_full_path(stack):
    stack.edit("vm.py", '"accessConfigs": [', '"accessConfig": [')
    assert_invalid(
        stack.preview(),
        "error: vm.py: hello-vm.networkInterfaces[0].accessConfig: unknown field 'accessConfig' "
        "in the Compute Engine v1 API: did you mean 'accessConfigs'? NetworkInterface has "
        f"{settable('NetworkInterface')} settable fields, listed at "
        "https://cloud.google.com/compute/docs/reference/rest/v1/instances/insert",
    )


def test_api_enum_in_wrong_case(stack):
    stack.edit("vm.py", '"onHostMaintenance": "MIGRATE"', '"onHostMaintenance": "migrate"')
    assert_invalid(
        stack.preview(),
        "error: vm.py: hello-vm.scheduling.onHostMaintenance: 'migrate' is not a valid value: "
        "did you mean 'MIGRATE'? valid: MIGRATE, TERMINATE "
        f"[set at vm.py:{stack.line_of('migrate', 'vm.py')}]",
    )


def test_machine_type_url_missing_zone_segment(stack):
    stack.edit(
        "vm.py",
        '"machineType": f"zones/{zone}/machineTypes/{properties[\'machineType\']}"',
        '"machineType": f"{zone}/machineTypes/{properties[\'machineType\']}"',
    )
    assert_invalid(
        stack.preview(),
        "error: vm.py: hello-vm.machineType: 'us-central1-a/machineTypes/e2-small' is not a "
        "machine type URL (zones/ZONE/machineTypes/TYPE), e.g. "
        "zones/us-central1-a/machineTypes/e2-small",
    )


# -- mistakes in a resource written directly in deployment.yaml ---------------------------------


def test_firewall_field_typo_in_config(stack):
    stack.add_resource(EXTRA_RULE.replace("sourceRanges:", "sourceRange:"))
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: allow-health-checks.sourceRange: unknown field 'sourceRange' in "
        "the Compute Engine v1 API: did you mean 'sourceRanges'? Firewall has "
        f"{settable('Firewall')} settable fields, listed at "
        "https://cloud.google.com/compute/docs/reference/rest/v1/firewalls/insert"
        f"{stack.at('sourceRange:')}",
    )


def test_firewall_direction_in_lower_case(stack):
    stack.add_resource(EXTRA_RULE.replace("direction: INGRESS", "direction: ingress"))
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: allow-health-checks.direction: 'ingress' is not a valid value: "
        "did you mean 'INGRESS'? valid: EGRESS, INGRESS"
        f"{stack.at('direction: ingress')}",
    )


def test_firewall_priority_out_of_range(stack):
    stack.add_resource(EXTRA_RULE.replace("priority: 900", "priority: 70000"))
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: allow-health-checks.priority: 70000 is out of range: 0 (highest) "
        f"to 65535 (lowest); default is 1000{stack.at('priority: 70000')}",
    )


def test_ports_on_icmp(stack):
    stack.add_resource(EXTRA_RULE.replace("IPProtocol: tcp", "IPProtocol: icmp"))
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: allow-health-checks.allowed[0].ports: ports only apply to tcp, "
        "udp and sctp, not 'icmp'; remove `ports`"
        f"{stack.at('          ports:')}",
    )


def test_port_range_written_backwards(stack):
    stack.add_resource(EXTRA_RULE.replace('- "80"', '- "8080-8000"'))
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: allow-health-checks.allowed[0].ports[0]: '8080-8000' is "
        "backwards: write the range low-high (8000-8080)"
        f"{stack.at('8080-8000')}",
    )


# -- the firewall answers, output formats and exit codes ----------------------------------------


def test_ssh_lockout_is_caught_before_merging(stack):
    ssh_check = ("reach", "104.155.0.1", "tcp/22", "--config", stack.config, "--expect", "allow")
    ok = run_dmlocal(*ssh_check)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (
        "allow: 104.155.0.1 -> hello-vm tcp/22 (rule hello-firewall-allow-ssh, priority 1000)\n"
    )
    # Someone narrows SSH to the office range: still a valid config, but it locks Google out.
    stack.edit("deployment.yaml", "- 104.154.0.0/15", "- 203.0.113.0/24")
    assert stack.preview().returncode == 0
    locked = run_dmlocal(*ssh_check)
    assert locked.returncode == 1
    assert locked.stdout == (
        "deny: 104.155.0.1 -> hello-vm tcp/22 (rule hello-firewall-deny-ingress, priority 65535)\n"
    )
    assert "error: expected allow, got deny by rule hello-firewall-deny-ingress" in locked.stderr


# -- several mistakes at once: one preview reports them all ---------------------------------------


def vm_properties() -> str:
    """What the message lists: vm.py.schema's properties, sorted."""
    schema = yaml.safe_load((REPO / "vm.py.schema").read_text())
    return ", ".join(sorted(schema["properties"]))


def test_three_mistakes_in_one_preview(stack):
    """A schema error no longer hides the later checks: with the unknown property set aside,
    the SSH range and the template's port are checked too, each with the line to edit."""
    stack.edit("deployment.yaml", "machineType: e2-small", "machinetype: e2-small")
    stack.edit("deployment.yaml", "- 104.154.0.0/15", "- 104.154.0.0/33")
    stack.edit("firewall.py", '"ports": ["80", "443"]', '"ports": ["70000", "443"]')
    assert_invalid(
        stack.preview(),
        f"error: {stack.config}: resources[hello-vm].properties: unknown property 'machinetype': "
        f"did you mean 'machineType'? valid properties: {vm_properties()} "
        f"[set at {stack.config}:{stack.line_of('machinetype:')}]",
        "error: firewall.py: hello-firewall-allow-ssh.sourceRanges[0]: '104.154.0.0/33' is not a "
        "CIDR range: the prefix length /33 is out of range for IPv4 (/0 to /32); write "
        "ADDRESS/PREFIX, e.g. 10.10.0.0/24 or 203.0.113.7/32 "
        f"[set at {stack.config}:{stack.line_of('104.154.0.0/33')} "
        "(hello-firewall.sshSourceRanges[0])]",
        "error: firewall.py: hello-firewall-allow-web.allowed[0].ports[0]: '70000' is out of "
        f"range: ports are 0-65535 [set at firewall.py:{stack.line_of('70000', 'firewall.py')}]",
    )


def test_bad_value_with_a_default_is_checked_past(stack):
    """A rejected value with a schema default is replaced by the default for the later checks,
    so a mistake behind it still shows; stdout stays empty (that expansion is not the config's)."""
    stack.edit("deployment.yaml", "deletionProtection: true", 'deletionProtection: "no"')
    stack.edit("deployment.yaml", "zone: us-central1-a", "zone: us-east1-b")
    result = stack.preview()
    assert_invalid(result)
    assert "'no' is text, not a boolean" in result.stderr
    assert "zone us-east1-b is in region us-east1" in result.stderr
    assert result.stdout == ""


def test_rejected_required_property_stops_the_later_checks(stack):
    """A required property without a default cannot be set aside: the templates would be built
    from a value known to be wrong, so the preview says the later checks did not run."""
    stack.edit("deployment.yaml", "zone: us-central1-a", "zone: us-central1")
    stack.edit("firewall.py", '"ports": ["80", "443"]', '"ports": ["70000", "443"]')
    result = stack.preview()
    assert_invalid(
        result,
        "note: the expansion and the Compute Engine and firewall checks did not run: "
        "hello-vm.zone has no default to check the rest with; fix it and preview again",
    )
    assert "resources[hello-vm].properties.zone: 'us-central1' is not valid here" in result.stderr
    assert "70000" not in result.stderr


def test_json_format_reports_findings_with_locations(stack):
    stack.edit("deployment.yaml", "zone: us-central1-a", "zone: us-east1-b")
    result = stack.preview("--format", "json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["valid"] is False
    [error] = doc["errors"]
    assert (error["file"], error["resource"], error["field"]) == ("vm.py", "hello-vm", "zone")
    assert error["source"] == f"{stack.config}:{stack.line_of('zone:')} (hello-vm.zone)"


def test_json_format_for_an_engine_error(stack):
    stack.edit("deployment.yaml", "machineType: e2-small", "machinetype: e2-small")
    result = stack.preview("--format", "json")
    assert result.returncode == 1
    [error] = json.loads(result.stdout)["errors"]
    assert error["file"] == stack.config
    assert error["field"] == "resources[hello-vm].properties"
    assert "did you mean 'machineType'?" in error["message"]


def test_valid_stack_yaml_on_stdout_summary_on_stderr(stack):
    result = stack.preview()
    document = yaml.safe_load(result.stdout)
    assert [r["name"] for r in document["resources"]][-2:] == ["hello-vm", "hello-vm-uptime"]
    assert "firewall for hello-vm (network tags: hello-web):" in result.stderr
    assert "resources" not in result.stderr.split("\n", 1)[1]  # the YAML never leaks to stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("preview", "--format", "xml"), "invalid choice: 'xml'"),
        (("preview", "no-such.yaml"), "error: no-such.yaml: no such config file"),
        (("reach", "203.0.113.7", "tcp/8O"), "error: invalid port '8O'"),
        (("reach", "203.0.113.700", "tcp/22"), "error: invalid IP address '203.0.113.700'"),
        (("reach", "203.0.113.7", "tpc/22"), "error: unknown protocol 'tpc'"),
    ],
)
def test_usage_errors_exit_2(args, needle):
    result = run_dmlocal(*args)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr


def settable(schema: str) -> int:
    """How many writable fields the API schema has, computed from the discovery document."""
    from dmlocal.compute_api import discovery

    fields = discovery()["schemas"][schema]["properties"].values()
    return sum(1 for f in fields if not f.get("readOnly"))
