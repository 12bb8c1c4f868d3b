"""What an operator sees when a command goes wrong: what is wrong, where, and what to type next.

Each test runs the command as a person types it (the `dmlocal` console script from the venv, or
a `make` target) on a private copy of the stack, and asserts the whole message line, so a vaguer
message fails. Everything here is real: no Google server is involved in these commands.
"""

from __future__ import annotations

from tests.conftest import run_dmlocal


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
