"""What an operator sees when a command goes wrong: what is wrong, where, and what to type next.

Each test runs the command as a person types it (the `dmlocal` console script from the venv, or
a `make` target) on a private copy of the stack, and asserts the whole message line, so a vaguer
message fails. Everything here is real: no Google server is involved in these commands.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import copy_stack, run_dmlocal


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
    assert rows["from IAP TCP forwarding 35.235.240.0/20"] == [
        "allow", "allow", "allow", "deny", "deny", "allow"
    ]  # fmt: skip
    assert rows["from Google SSH range 104.154.0.0/15"][0] == "allow"
    assert rows["from the internet"][0] == "deny"
