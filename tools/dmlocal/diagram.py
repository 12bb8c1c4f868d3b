"""Architecture diagram generated from the expanded config: Graphviz DOT/SVG and Mermaid.

Drawn from the same expansion `make preview` prints, so the picture cannot drift from the code:
the VPC and its subnets as boxes, each VM with its machine type, image and network tags, the
static IP it answers on, and one arrow per firewall rule that admits traffic, labelled with what
it allows and the rule's name and priority. Traffic from outside the VPC is drawn through the
VM's static external IP, which is the path a request from the internet takes.

`make docs` writes docs/architecture.dot, docs/architecture.svg (via Graphviz `dot`, with the
DOT's sha256 embedded so a test can tell the SVG was produced from the current DOT) and
docs/architecture.mmd (the Mermaid block for the README). Output is deterministic: same
expansion, same bytes (for the SVG: same bytes for the same Graphviz version).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dmlocal.expand import default_env, expand_path
from dmlocal.reachability import KNOWN_RANGES, ReachabilityError, firewall_rules, resolver_for
from dmlocal.references import REFERENCE, follow, last_segment, template_outputs

HASH_MARK = "dot-sha256:"


@dataclass
class Node:
    id: str
    label: list[str]
    kind: str  # source | address | instance | note


@dataclass
class Edge:
    src: str
    dst: str
    label: list[str]
    kind: str = "allow"  # allow | nat | egress


@dataclass
class Cluster:
    id: str
    label: list[str]
    nodes: list[str] = field(default_factory=list)
    children: list[Cluster] = field(default_factory=list)


@dataclass
class Model:
    nodes: dict[str, Node] = field(default_factory=dict)
    clusters: list[Cluster] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> str:
        self.nodes.setdefault(node.id, node)
        return node.id


def _id(prefix: str, name: str) -> str:
    return prefix + "_" + re.sub(r"[^A-Za-z0-9]", "_", name)


def _ref_target(value, outputs) -> str | None:
    m = REFERENCE.fullmatch(str(follow(value, outputs)).strip()) if value is not None else None
    return m.group(1) if m else None


def _protocols(entries: list[dict]) -> str:
    parts = []
    for entry in entries or []:
        proto = str(entry.get("IPProtocol", "?"))
        ports = entry.get("ports") or []
        if proto == "all":
            parts.append("all protocols")
        elif not ports or ports == ["0-65535"]:
            parts.append(proto if proto == "icmp" else f"{proto} (all ports)")
        else:
            parts.append(f"{proto}:{','.join(str(p) for p in ports)}")
    return ", ".join(parts) or "nothing"


def _range_label(ranges: list[str]) -> list[str]:
    names = sorted({KNOWN_RANGES[r] for r in ranges if r in KNOWN_RANGES})
    return [*(names or ["Addresses"]), ", ".join(ranges)]


def build(expansion) -> Model:
    """The diagram's content, independent of the output format."""
    resources = expansion.resources
    outputs = template_outputs(expansion.layout)
    resolve = resolver_for(resources, expansion.layout)
    by_type: dict[str, list[dict]] = {}
    for res in resources:
        by_type.setdefault(res["type"], []).append(res)
    model = Model()

    subnets_of: dict[str, list[dict]] = {}
    for sub in by_type.get("compute.v1.subnetwork", []):
        net = _ref_target(sub["properties"].get("network"), outputs) or "?"
        subnets_of.setdefault(net, []).append(sub)
    vm_subnet: dict[str, str] = {}
    vm_address: dict[str, str] = {}
    for vm in by_type.get("compute.v1.instance", []):
        for nic in vm["properties"].get("networkInterfaces") or []:
            sub = _ref_target(nic.get("subnetwork"), outputs)
            if sub:
                vm_subnet.setdefault(vm["name"], sub)
            for ac in nic.get("accessConfigs") or []:
                addr = _ref_target(ac.get("natIP"), outputs)
                if addr:
                    vm_address.setdefault(vm["name"], addr)
    addresses = {a["name"]: a for a in by_type.get("compute.v1.address", [])}
    instances = {vm["name"]: vm for vm in by_type.get("compute.v1.instance", [])}

    network_of_vm: dict[str, str] = {}
    subnet_ranges: dict[str, list[ipaddress._BaseNetwork]] = {}
    for network in by_type.get("compute.v1.network", []):
        nname = network["name"]
        mode = "auto" if network["properties"].get("autoCreateSubnetworks", True) else "custom"
        cluster = Cluster(_id("vpc", nname), [f"VPC {nname}", f"{mode}-mode network"])
        for sub in subnets_of.get(nname, []):
            p = sub["properties"]
            flags = ["Private Google Access"] if p.get("privateIpGoogleAccess") else []
            sc = Cluster(
                _id("subnet", sub["name"]),
                [f"subnet {sub['name']}", f"{p.get('region')} · {p.get('ipCidrRange')}", *flags],
            )
            with contextlib.suppress(ValueError):
                subnet_ranges.setdefault(nname, []).append(
                    ipaddress.ip_network(str(p.get("ipCidrRange")), strict=False)
                )
            for vname, vm in instances.items():
                if vm_subnet.get(vname) != sub["name"]:
                    continue
                network_of_vm[vname] = nname
                vp = vm["properties"]
                tags = ", ".join((vp.get("tags") or {}).get("items") or []) or "none"
                image = (vp.get("disks") or [{}])[0].get("initializeParams", {}).get("sourceImage")
                label = [
                    f"VM {vname}",
                    f"{last_segment(vp.get('machineType'))} · {vp.get('zone')}",
                    f"image {last_segment(image)}",
                    f"network tags: {tags}",
                ]
                sc.nodes.append(model.add(Node(_id("vm", vname), label, "instance")))
            cluster.children.append(sc)
        model.clusters.append(cluster)

    for vname, aname in sorted(vm_address.items()):
        addr = addresses.get(aname, {"properties": {}})
        ap = addr["properties"]
        label = [
            f"static IP {aname}",
            f"external IPv4 · {ap.get('region', '?')}",
            f"{ap.get('networkTier', 'PREMIUM')} tier",
        ]
        model.add(Node(_id("ip", aname), label, "address"))
        model.edges.append(Edge(_id("ip", aname), _id("vm", vname), ["1:1 NAT"], "nat"))

    _monitoring(model, by_type, outputs)

    notes: dict[str, list[str]] = {}
    for rule in sorted(
        firewall_rules(resources), key=lambda r: (r.get("priority", 1000), r["name"])
    ):
        net = _ref_target(rule.get("network"), outputs)
        targets = sorted(
            v
            for v in instances
            if network_of_vm.get(v) == net
            and (
                not rule.get("targetTags")
                or set(rule["targetTags"])
                & set((instances[v]["properties"].get("tags") or {}).get("items") or [])
            )
        )
        priority = rule.get("priority", 1000)
        tag = f"{rule['name']} · priority {priority}"
        direction = rule.get("direction", "INGRESS")
        denied = bool(rule.get("denied"))
        what = _protocols(rule.get("denied") or rule.get("allowed"))
        if direction == "EGRESS":
            dests = [str(d) for d in rule.get("destinationRanges") or ["0.0.0.0/0"]]
            if denied:
                notes.setdefault(net or "?", []).append(f"deny {what} out to {', '.join(dests)}")
                continue
            # A node of its own, so the outbound arrow does not pull the inbound source around.
            label = _range_label(dests)
            label[0] += " (outbound)"
            dst = model.add(Node(_id("dst", ",".join(dests)), label, "source"))
            for v in targets:
                model.edges.append(Edge(_id("vm", v), dst, [f"egress: {what}", tag], "egress"))
            continue
        try:
            ranges = []
            for value in rule.get("sourceRanges") or ["0.0.0.0/0"]:
                got = resolve(value) if "$(ref." in str(value) else value
                ranges.extend(got if isinstance(got, list) else [got])
            ranges = [str(r) for r in ranges]
        except ReachabilityError:
            ranges = [str(r) for r in rule.get("sourceRanges") or []]
        if denied:
            notes.setdefault(net or "?", []).extend([f"deny {what} from {', '.join(ranges)}", tag])
            continue
        internal = _inside(ranges, subnet_ranges.get(net or "", []))
        if internal:
            src_label = ["Other VMs in the VPC", ", ".join(ranges)]
            src = model.add(Node(_id("src", "vpc-" + ",".join(ranges)), src_label, "source"))
        else:
            src = model.add(Node(_id("src", ",".join(ranges)), _range_label(ranges), "source"))
        scope = "" if rule.get("targetTags") else " (whole network)"
        for v in targets:
            dst = _id("vm", v)
            if not internal and v in vm_address:
                dst = _id("ip", vm_address[v])
            model.edges.append(Edge(src, dst, [f"allow {what}{scope}", tag]))

    model.edges = _merge(model.edges)
    for cluster in model.clusters:
        net_name = cluster.label[0].removeprefix("VPC ")
        lines = notes.get(net_name, [])
        lines.append("implied: deny all ingress, allow all egress (priority 65535)")
        cluster.nodes.append(model.add(Node(_id("note", net_name), lines, "note")))
    return model


def _monitoring(model: Model, by_type: dict[str, list[dict]], outputs) -> None:
    """Uptime checks as probes into the static IP they watch, and the alerts that mail on them."""
    checks = by_type.get("gcp-types/monitoring-v3:projects.uptimeCheckConfigs", [])
    channels = {
        c["name"]: c
        for c in by_type.get("gcp-types/monitoring-v3:projects.notificationChannels", [])
    }
    for check in checks:
        p = check["properties"]
        host = _ref_target(
            (p.get("monitoredResource") or {}).get("labels", {}).get("host"), outputs
        )
        http = p.get("httpCheck") or {}
        scheme = "https" if http.get("useSsl") else "http"
        label = [
            f"uptime check {check['name']}",
            f"GET {scheme}://IP{http.get('path', '/')} every {p.get('period', '60s')}",
            f"from {', '.join(p.get('selectedRegions') or ['all regions'])}",
        ]
        src = model.add(Node(_id("uptime", check["name"]), label, "source"))
        if host:
            model.edges.append(Edge(src, _id("ip", host), [f"probe {scheme}"], "egress"))
        for policy in by_type.get("gcp-types/monitoring-v3:projects.alertPolicies", []):
            pp = policy["properties"]
            mails = [
                channels[t]["properties"].get("labels", {}).get("email_address", "?")
                for t in (_ref_target(c, outputs) for c in pp.get("notificationChannels") or [])
                if t in channels
            ]
            label = [f"alert {policy['name']}", f"mails {', '.join(mails) or 'nobody'}"]
            dst = model.add(Node(_id("alert", policy["name"]), label, "source"))
            model.edges.append(Edge(src, dst, ["fails from more than one region"], "egress"))


def _merge(edges: list[Edge]) -> list[Edge]:
    """One arrow per (source, destination, kind), carrying every rule's lines, in first order."""
    merged: dict[tuple[str, str, str], Edge] = {}
    for e in edges:
        key = (e.src, e.dst, e.kind)
        if key in merged:
            merged[key].label.extend(e.label)
        else:
            merged[key] = Edge(e.src, e.dst, list(e.label), e.kind)
    return list(merged.values())


def _inside(ranges: list[str], subnets: list) -> bool:
    try:
        nets = [ipaddress.ip_network(r, strict=False) for r in ranges]
    except ValueError:
        return False
    return bool(nets) and all(any(n.subnet_of(s) for s in subnets if s.version == n.version)
                              for n in nets)  # fmt: skip


# -- DOT ----------------------------------------------------------------------------------------

_DOT_STYLE = {
    "source": 'shape=box, style="rounded,filled", fillcolor="#fff4e0", color="#d08000"',
    "address": 'shape=box, style="filled", fillcolor="#e8f0fe", color="#1a73e8"',
    "instance": 'shape=box3d, style="filled", fillcolor="#e6f4ea", color="#188038"',
    "note": 'shape=note, style="filled", fillcolor="#fce8e6", color="#c5221f", fontsize=10',
}
_EDGE_STYLE = {
    "allow": 'color="#188038"',
    "nat": 'color="#1a73e8", style=bold',
    "egress": 'color="#5f6368", style=dashed',
}


def _q(lines: list[str]) -> str:
    return '"' + "\\n".join(s.replace("\\", "\\\\").replace('"', '\\"') for s in lines) + '"'


def to_dot(model: Model, title: str) -> str:
    """Graphviz source for `model`; deterministic."""
    out = [
        "digraph architecture {",
        f"  label={_q([title])}; labelloc=t; fontname=Helvetica; fontsize=16;",
        "  rankdir=LR; nodesep=0.4; ranksep=1.1;",
        "  node [fontname=Helvetica, fontsize=11];",
        "  edge [fontname=Helvetica, fontsize=10];",
    ]
    placed: set[str] = set()

    def cluster(c: Cluster, indent: str) -> None:
        out.append(f"{indent}subgraph cluster_{c.id} {{")
        out.append(f'{indent}  label={_q(c.label)}; style="rounded"; color="#5f6368";')
        for nid in c.nodes:
            n = model.nodes[nid]
            out.append(f"{indent}  {nid} [label={_q(n.label)}, {_DOT_STYLE[n.kind]}];")
            placed.add(nid)
        for child in c.children:
            cluster(child, indent + "  ")
        out.append(f"{indent}}}")

    for c in model.clusters:
        cluster(c, "  ")
    for nid, n in model.nodes.items():
        if nid not in placed:
            out.append(f"  {nid} [label={_q(n.label)}, {_DOT_STYLE[n.kind]}];")
    for e in model.edges:
        out.append(f"  {e.src} -> {e.dst} [label={_q(e.label)}, {_EDGE_STYLE[e.kind]}];")
    out.append("}")
    return "\n".join(out) + "\n"


def dot_hash(dot: str) -> str:
    return hashlib.sha256(dot.encode()).hexdigest()


def render_svg(dot: str) -> str:
    """Run Graphviz on `dot` and embed the DOT's sha256 so staleness is checkable without it."""
    import shutil  # here: `make preview` imports this module and never renders
    import subprocess

    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("Graphviz `dot` is not installed: run `make system-deps`")
    svg = subprocess.run(
        [exe, "-Tsvg"], input=dot, capture_output=True, text=True, check=True
    ).stdout
    head, sep, rest = svg.partition("<svg")
    return f"{head}<!-- {HASH_MARK} {dot_hash(dot)} -->\n{sep}{rest}"


def svg_hash(svg: str) -> str | None:
    m = re.search(re.escape(HASH_MARK) + r" ([0-9a-f]{64})", svg)
    return m.group(1) if m else None


# -- Mermaid ------------------------------------------------------------------------------------

_MERMAID_SHAPE = {
    "source": ('(["', '"])'),
    "address": ('[/"', '"/]'),
    "instance": ('[["', '"]]'),
    "note": ('>"', '"]'),
}


def _m(lines: list[str]) -> str:
    return "<br/>".join(s.replace('"', "#quot;") for s in lines)


def to_mermaid(model: Model) -> str:
    """A Mermaid flowchart of `model` (GitHub renders it inline in the README)."""
    out = ["flowchart LR"]
    placed: set[str] = set()

    def cluster(c: Cluster, indent: str) -> None:
        out.append(f'{indent}subgraph {c.id}["{_m(c.label)}"]')
        for nid in c.nodes:
            n = model.nodes[nid]
            left, right = _MERMAID_SHAPE[n.kind]
            out.append(f"{indent}  {nid}{left}{_m(n.label)}{right}")
            placed.add(nid)
        for child in c.children:
            cluster(child, indent + "  ")
        out.append(f"{indent}end")

    for nid, n in model.nodes.items():
        if n.kind in ("source", "address"):
            left, right = _MERMAID_SHAPE[n.kind]
            out.append(f"  {nid}{left}{_m(n.label)}{right}")
            placed.add(nid)
    for c in model.clusters:
        cluster(c, "  ")
    for e in model.edges:
        arrow = "-.->" if e.kind == "egress" else "==>" if e.kind == "nat" else "-->"
        out.append(f'  {e.src} {arrow}|"{_m(e.label)}"| {e.dst}')
    return "\n".join(out) + "\n"


# -- command ------------------------------------------------------------------------------------


def sources(config: str | Path, expansion=None) -> tuple[str, str]:
    """(DOT, Mermaid) for a config: what `make docs` writes and the staleness checks compare.

    `expansion` saves expanding again when the caller has one (made with `default_env()`).
    """
    model = build(expansion or expand_path(config, default_env()))
    return to_dot(model, title(config)), to_mermaid(model)


def title(config: str | Path) -> str:
    """The DOT's title: it names the config, so a check knows which config the docs are for."""
    return f"{Path(config).name}: generated by `make docs`"


def generate(config: str | Path, out_dir: Path, svg: bool = True) -> list[Path]:
    """Write architecture.dot, .mmd and (with Graphviz) .svg for `config` into `out_dir`."""
    dot, mermaid = sources(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "architecture.dot", out_dir / "architecture.mmd"]
    written[0].write_text(dot)
    written[1].write_text(mermaid)
    if svg:
        (out_dir / "architecture.svg").write_text(render_svg(dot))
        written.append(out_dir / "architecture.svg")
    return written


def add_command(commands) -> None:
    parser = commands.add_parser(
        "diagram", help="write the architecture diagram (DOT, SVG, Mermaid)"
    )
    parser.add_argument("config", nargs="?", default="deployment.yaml")
    parser.add_argument("--out", default="docs", help="directory for architecture.{dot,svg,mmd}")
    parser.add_argument("--no-svg", action="store_true", help="skip Graphviz (DOT + Mermaid only)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        for path in generate(args.config, Path(args.out), svg=not args.no_svg):
            print(path)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
