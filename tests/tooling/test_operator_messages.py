"""What an operator sees when a command goes wrong: what is wrong, where, and what to type next.

Each test runs the command as a person types it (the `dmlocal` console script from the venv, or
a `make` target) on a private copy of the stack, and asserts the whole message line, so a vaguer
message fails. Everything here is real: no Google server is involved in these commands.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dmlocal.schema import PATTERN_MESSAGE
from tests.conftest import REPO, copy_stack, run_dmlocal


def test_reach_refuses_a_bare_port_and_shows_the_protocol_form():
    # `22` alone would be IP protocol 22 to GCP; answering that question says "deny", which a
    # reviewer reads as "SSH is locked out".
    result = run_dmlocal("reach", "104.154.1.1", "22")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: '22' is ambiguous: to ask about port 22 write tcp/22 (or udp/22); a probe is "
        "PROTO/PORT or a protocol name, e.g. tcp/22, udp/53, icmp"
    ]
    typed_as_suggested = run_dmlocal("reach", "104.154.1.1", "tcp/22")
    assert typed_as_suggested.returncode == 0, typed_as_suggested.stderr
    assert typed_as_suggested.stdout.startswith("allow: 104.154.1.1 -> hello-vm tcp/22 ")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur exactly once in {path.name}"
    path.write_text(text.replace(old, new))


def table_rows(stderr: str) -> dict[str, list[str]]:
    """The firewall table of a preview's summary: {row label: [decision per probe]}."""
    lines = stderr.split("firewall for hello-vm", 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        if not line.startswith("  "):
            break
        label, *cells = line.strip().rsplit(None, 6)
        rows[label] = cells
    return rows


def test_firewall_table_shows_every_ingress_source_range(tmp_path):
    stack = copy_stack(tmp_path)
    edit(
        stack / "deployment.yaml",
        "        - 104.154.0.0/15\n",
        "        - 104.154.0.0/15\n        - 35.235.240.0/20\n",
    )
    result = run_dmlocal("preview", "deployment.yaml", cwd=stack)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stderr)
    #                  tcp/22   tcp/80   tcp/443  tcp/8080 udp/53  icmp
    assert rows["from 35.235.240.0/20 (IAP TCP forwarding)"] == [
        "allow", "allow", "allow", "deny", "deny", "allow"
    ]  # fmt: skip
    assert rows["from 104.154.0.0/15 (GOOGLE LLC)"][0] == "allow"
    assert rows["from the internet"][0] == "deny"


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_every_schema_problem_in_one_run_each_with_its_line_and_in_words(tmp_path):
    stack = copy_stack(tmp_path)
    config = stack / "deployment.yaml"
    edit(config, "subnetCidr: 10.10.0.0/24", "subnetCidr: 10.10.0.0/33")
    edit(config, "        - 104.154.0.0/15\n", '        - "104.154.0.0/15 "\n')
    edit(config, "deletionProtection: true", 'deletionProtection: "yes"')

    result = run_dmlocal("preview", "deployment.yaml", cwd=stack)

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: deployment.yaml: resources[hello-vpc].properties.subnetCidr: '10.10.0.0/33' is not "
        "valid here: the prefix length /33 is out of range for IPv4 (/0 to /32); subnetCidr must "
        "be a private IPv4 block (RFC 1918: inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16, "
        "no wider than that block) written ADDRESS/PREFIX, with a prefix length up to /29, "
        "e.g. 10.10.0.0/24 "
        f"[set at deployment.yaml:{line_of(config, 'subnetCidr:')}]",
        "error: deployment.yaml: resources[hello-firewall].properties.sshSourceRanges[0]: "
        "'104.154.0.0/15 ' has a trailing space: write '104.154.0.0/15' "
        f"[set at deployment.yaml:{line_of(config, '104.154.0.0/15 ')}]",
        "error: deployment.yaml: resources[hello-vm].properties.deletionProtection: 'yes' is "
        "text, not a boolean: write true or false, without quotes "
        f"[set at deployment.yaml:{line_of(config, 'deletionProtection:')}]",
        "note: the expansion and the Compute Engine and firewall checks did not run: "
        "hello-vpc.subnetCidr has no default to check the rest with; fix it and preview again",
    ]


def test_a_config_error_outside_the_schemas_names_its_line_too(tmp_path):
    stack = copy_stack(tmp_path)
    config = stack / "deployment.yaml"
    edit(config, "    type: vm.py\n", "    type: vm.py\n    propertes: {}\n")
    result = run_dmlocal("preview", "deployment.yaml", cwd=stack)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: deployment.yaml: resources[hello-vm].propertes: unknown resource key 'propertes': "
        "did you mean 'properties'? valid: name, type, properties, metadata, accessControl "
        f"[set at deployment.yaml:{line_of(config, 'propertes:')}]"
    ]


def pattern_nodes(node, path=()):
    """(path, subschema) for every subschema of a schema that carries a `pattern`."""
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield path, node
        for key, value in node.items():
            yield from pattern_nodes(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from pattern_nodes(value, (*path, index))


@pytest.mark.parametrize("schema_file", ["network.py.schema", "firewall.py.schema", "vm.py.schema"])
def test_every_pattern_carries_the_sentence_a_person_needs(schema_file):
    schema = yaml.safe_load((REPO / schema_file).read_text())
    found = list(pattern_nodes(schema))
    assert found, f"{schema_file} has no patterns: the test would prove nothing"
    for path, node in found:
        assert str(node.get(PATTERN_MESSAGE, "")).strip(), f"{schema_file}: {path} has no message"


def test_the_message_annotations_change_nothing_that_renders(tmp_path):
    # JSON Schema ignores keywords it does not define: the same config renders the same bytes
    # with the annotations stripped out of every schema.
    stack = copy_stack(tmp_path)
    with_messages = run_dmlocal("preview", "deployment.yaml", cwd=stack)
    for schema_file in ("network.py.schema", "firewall.py.schema", "vm.py.schema"):
        path = stack / schema_file
        schema = yaml.safe_load(path.read_text())
        for _, node in pattern_nodes(schema):
            node.pop(PATTERN_MESSAGE)
        path.write_text(yaml.safe_dump(schema, sort_keys=False))
    assert PATTERN_MESSAGE not in (stack / "vm.py.schema").read_text()
    without = run_dmlocal("preview", "deployment.yaml", cwd=stack)
    assert with_messages.returncode == without.returncode == 0, without.stderr
    assert with_messages.stdout == without.stdout


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
    )


def test_exit_codes_direct_and_through_make(tmp_path):
    # dmlocal's own codes tell a wrong config (1) from a wrong command line (2); make turns
    # every failure into 2 and names dmlocal's code on its last line, as the docs say.
    stack = copy_stack(tmp_path)
    edit(stack / "deployment.yaml", "zone: us-central1-a", "zone: us-east1-b")
    bad_config, missing = str(stack / "deployment.yaml"), str(tmp_path / "nope.yaml")

    assert run_dmlocal("preview", bad_config).returncode == 1
    assert run_dmlocal("preview", missing).returncode == 2

    invalid = make("preview", f"CONFIG={bad_config}")
    assert invalid.returncode == 2
    assert re.fullmatch(
        r"make: \*\*\* \[Makefile:\d+: preview\] Error 1", invalid.stderr.splitlines()[-1]
    )
    assert "INVALID: 1 error(s), 0 warning(s)" in invalid.stderr

    usage = make("preview", f"CONFIG={missing}")
    assert usage.returncode == 2
    assert usage.stderr.splitlines() == [
        f"error: {missing}: no such config file",
        usage.stderr.splitlines()[-1],
    ]
    assert re.fullmatch(
        r"make: \*\*\* \[Makefile:\d+: preview\] Error 2", usage.stderr.splitlines()[-1]
    )
