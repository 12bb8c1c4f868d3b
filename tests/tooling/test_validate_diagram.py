"""The committed architecture diagram is generated from deployment.yaml and is not stale.

docs/architecture.dot and docs/architecture.mmd must equal what `make docs` generates now;
docs/architecture.svg must carry the sha256 of that DOT (written by dmlocal.diagram.render_svg)
and contain every label of it, so an SVG left over from an older config fails. Graphviz itself
is only needed to regenerate, not to check.
"""

from __future__ import annotations

import html
import itertools
import re
import shutil

import pytest

from dmlocal import diagram
from tests.conftest import REPO, copy_stack

DOCS = REPO / "docs"
STALE = "docs/architecture.* is stale: run `make docs` and commit docs/"


@pytest.fixture(scope="module")
def generated() -> tuple[str, str]:
    return diagram.sources(REPO / "deployment.yaml")


def test_committed_dot_and_mermaid_are_current(generated):
    dot, mermaid = generated
    assert (DOCS / "architecture.dot").read_text() == dot, STALE
    assert (DOCS / "architecture.mmd").read_text() == mermaid, STALE


def test_committed_svg_was_rendered_from_the_current_dot(generated):
    dot, _ = generated
    svg = (DOCS / "architecture.svg").read_text()
    assert diagram.svg_hash(svg) == diagram.dot_hash(dot), STALE
    texts = {html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)}
    labels = {
        line.replace('\\"', '"')
        for quoted in re.findall(r'label="((?:[^"\\]|\\.)*)"', dot)
        for line in quoted.split("\\n")
    }
    assert labels <= texts, f"labels missing from the SVG: {sorted(labels - texts)}"


def test_diagram_shows_the_stack_and_who_can_reach_what(generated):
    dot, mermaid = generated
    for text in (
        "VPC hello-vpc · custom-mode network",
        "subnet hello-vpc-subnet",
        "us-central1 · 10.10.0.0/24",
        "VM hello-vm · e2-small · us-central1-a",
        "static IP hello-vm-ip",
        "Internet\\n0.0.0.0/0",
        '"104.154.0.0/15 (GOOGLE LLC)"',
        "tcp:22\\nhello-firewall-allow-ssh (1000)",
        "tcp:80,443\\nhello-firewall-allow-web (1000)",
        "deny all protocols from 0.0.0.0/0: hello-firewall-deny-ingress (65535)",
        "allow all protocols out to 0.0.0.0/0: hello-firewall-allow-egress (65535)",
    ):
        assert text in dot
    # The path from the internet: Internet -> static IP -> the VM (drawn at nginx, its entry).
    assert "src_0_0_0_0_0 -> ip_hello_vm_ip" in dot
    assert "ip_hello_vm_ip -> vm_hello_vm_nginx [" in dot
    assert "lhead=cluster_vm_hello_vm" in dot
    assert mermaid.startswith("flowchart TB\n")
    assert "ip_hello_vm_ip ==>" in mermaid


def edges(dot: str) -> dict[tuple[str, str], str]:
    """(source node, destination node) -> the arrow's label, from the DOT."""
    return {
        (src, dst): label
        for src, dst, label in re.findall(
            r'^\s*(\w+) -> (\w+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M
        )
    }


def labels(dot: str) -> dict[str, str]:
    return dict(re.findall(r'^\s*(\w+) \[label="((?:[^"\\]|\\.)*)"', dot, re.M))


def test_diagram_shows_what_runs_on_the_vm(generated):
    """nginx, gunicorn, the certificate and its renewal, and the converge, each read from what
    the VM's metadata installs (the unit files and nginx sites vm.py ships)."""
    dot, _ = generated
    nodes = labels(dot)
    assert nodes["vm_hello_vm_nginx"] == "nginx\\nlistens on 80, 443 (TLS)"
    assert (
        nodes["vm_hello_vm_gunicorn"]
        == "gunicorn: the Flask app\\non 127.0.0.1:8081 or 127.0.0.1:8082\\n(hello@.service)"
    )
    assert "hello-cert.timer: renew when due (00/6:00)" in nodes["vm_hello_vm_cert"]
    assert nodes["ca_acme_v02_api_letsencrypt_org"] == "ACME CA\\nacme-v02.api.letsencrypt.org"
    arrows = edges(dot)
    assert ("vm_hello_vm_nginx", "vm_hello_vm_gunicorn") in arrows
    assert ("vm_hello_vm_cert", "vm_hello_vm_nginx") in arrows
    assert ("ca_acme_v02_api_letsencrypt_org", "vm_hello_vm_cert") in arrows
    assert ("vm_hello_vm_converge", "vm_hello_vm_gunicorn") in arrows
    assert ("vm_hello_vm_converge", "vm_hello_vm_nginx") in arrows  # the switch between slots


def test_diagram_shows_how_a_change_arrives(generated):
    """CircleCI -> WIF -> deployer -> engine -> metadata -> converge, one arrow chain, with the
    job, branch and context read from .circleci/config.yml and the engine from the Makefile."""
    dot, _ = generated
    nodes, arrows = labels(dot), edges(dot)
    chain = [
        "deliver_0",
        "deliver_1",
        "deliver_2",
        "deliver_3",
        "deliver_4",
        "vm_hello_vm_converge",
    ]
    for src, dst in itertools.pairwise(chain):
        assert (src, dst) in arrows, f"no arrow {src} -> {dst}"
    assert nodes["deliver_0"] == "CircleCI job deploy\\nbranch master, context gcp-deploy"
    assert nodes["deliver_1"].startswith("Workload Identity Federation")
    assert nodes["deliver_2"].startswith("deployer service account")
    assert nodes["deliver_3"].endswith("DEPLOY_ENGINE (default dm)")
    assert nodes["deliver_4"].startswith("instance metadata of hello-vm")


def test_diagram_without_https_or_ci_draws_neither(tmp_path, generated):
    """The VM's insides follow its metadata: with acmeDirectory empty there is no certificate
    and nginx listens on 80 only; a copy without .circleci draws no delivery path."""
    copy_stack(tmp_path)
    config = tmp_path / "deployment.yaml"
    text = config.read_text()
    config.write_text(text.replace("acmeDirectory: https://acme-v02.api.letsencrypt.org/directory",
                                   'acmeDirectory: ""'))  # fmt: skip
    dot, _ = diagram.sources(config)
    nodes = labels(dot)
    assert nodes["vm_hello_vm_nginx"] == "nginx\\nlistens on 80"
    assert "vm_hello_vm_cert" not in nodes
    assert not any(name.startswith("deliver_") for name in nodes)


def test_a_config_change_changes_the_diagram(tmp_path, generated):
    # Proves the staleness checks above can fail: a narrower SSH range must show up.
    copy_stack(tmp_path)
    config = tmp_path / "deployment.yaml"
    config.write_text(config.read_text().replace("- 104.154.0.0/15", "- 203.0.113.0/24"))
    dot, _ = diagram.sources(config)
    assert dot != generated[0]
    assert "Addresses\\n203.0.113.0/24" in dot
    assert "104.154.0.0/15" not in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_svg_rendering_is_deterministic(generated):
    dot, _ = generated
    first = diagram.render_svg(dot)
    assert first == diagram.render_svg(dot)
    assert diagram.svg_hash(first) == diagram.dot_hash(dot)
