"""The validator: every problem in an expanded deployment, found before Google sees it.

`validate(expansion)` runs the Compute Engine API schema check (dmlocal.compute_api), the
reviewer's semantic checks (dmlocal.checks), and points each finding at the deployment-config
line an operator edits (dmlocal.tracer).
"""

from __future__ import annotations

from dmlocal import compute_api
from dmlocal.checks import semantic_checks
from dmlocal.errors import Finding
from dmlocal.expand import Expansion
from dmlocal.tracer import Tracer


def validate(expansion: Expansion) -> list[Finding]:
    """Every finding for an Expansion: API schema first, then semantics, in resource order."""
    origins = expansion.origins
    findings = compute_api.check_resources(expansion.resources, origins)
    findings += compute_api.check_references(expansion)
    findings += semantic_checks(expansion.resources, origins, expansion.layout)
    tracer = Tracer(expansion)
    order = {r["name"]: i for i, r in enumerate(expansion.resources)}
    findings = [tracer.annotate(f) for f in findings]
    findings.sort(key=lambda f: (order.get(f.resource, len(order)), f.severity != "error"))
    return list(dict.fromkeys(findings))
