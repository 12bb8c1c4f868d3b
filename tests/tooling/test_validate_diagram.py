"""The committed architecture diagram is generated from deployment.yaml and is not stale.

docs/architecture.dot and docs/architecture.mmd must equal what `make docs` generates now;
docs/architecture.svg must carry the sha256 of that DOT (written by dmlocal.diagram.render_svg)
and contain every label of it, so an SVG left over from an older config fails. Graphviz itself
is only needed to regenerate, not to check.
"""

from __future__ import annotations

import html
import re
import shutil

import pytest

from dmlocal import diagram
from tests.conftest import REPO

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
        "VPC hello-vpc",
        "subnet hello-vpc-subnet",
        "us-central1 · 10.10.0.0/24",
        "VM hello-vm",
        "static IP hello-vm-ip",
        "Internet\\n0.0.0.0/0",
        "Google SSH range\\n104.154.0.0/15",
        "allow tcp:22\\nhello-firewall-allow-ssh · priority 1000",
        "allow tcp:80,443\\nhello-firewall-allow-web · priority 1000",
        "hello-firewall-deny-ingress · priority 65535",
    ):
        assert text in dot
    # The path from the internet: Internet -> static IP -> VM.
    assert "src_0_0_0_0_0 -> ip_hello_vm_ip" in dot
    assert "ip_hello_vm_ip -> vm_hello_vm" in dot
    assert mermaid.startswith("flowchart LR\n")
    assert "ip_hello_vm_ip ==>" in mermaid


def test_a_config_change_changes_the_diagram(tmp_path, generated):
    # Proves the staleness checks above can fail: a narrower SSH range must show up.
    for name in ["deployment.yaml", "app"] + [
        f"{t}{s}" for t in ("network.py", "firewall.py", "vm.py") for s in ("", ".schema")
    ]:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
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
