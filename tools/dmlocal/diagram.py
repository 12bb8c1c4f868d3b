"""Architecture diagram generated from the expanded config: Graphviz DOT/SVG and Mermaid.

Drawn from the same expansion `make preview` prints, so the picture cannot drift from the code:
the VPC and its subnets as boxes, each VM with its machine type, image and network tags, the
static IP it answers on, and one arrow per firewall rule that admits traffic, labelled with what
it allows and the rule's name and priority. Traffic from outside the VPC is drawn through the
VM's static external IP, which is the path a request from the internet takes.

Inside each VM, what its instance metadata installs: nginx (the ports its site files listen on),
gunicorn (the address its unit binds), the certificate and the timer that renews it (from the
ACME directory the VM is given), and the watcher that converges the VM when the metadata changes.
Above it, how a change arrives, read from .circleci/config.yml and the Makefile next to the
config: the CircleCI job that runs `make deploy`, Workload Identity Federation, the deployer
account, the engine, and the instance metadata the converge reads.

`make docs` writes docs/architecture.dot, docs/architecture.svg (via Graphviz `dot`, with the
DOT's sha256 embedded so a test can tell the SVG was produced from the current DOT) and
docs/architecture.mmd (the same picture in Mermaid, which GitHub renders inline). Output is
deterministic: same expansion, same bytes (for the SVG: same bytes for the same Graphviz
version).
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

import yaml

from dmlocal.expand import default_env, expand_path
from dmlocal.reachability import KNOWN_RANGES, ReachabilityError, firewall_rules, resolver_for
from dmlocal.references import REFERENCE, follow, last_segment, template_outputs

HASH_MARK = "dot-sha256:"


@dataclass
class Node:
    id: str
    label: list[str]
    kind: str  # source | address | process | delivery


@dataclass
class Edge:
    src: str
    dst: str
    label: list[str]
    kind: str = "allow"  # allow | nat | flow


@dataclass
class Cluster:
    id: str
    label: list[str]
    nodes: list[str] = field(default_factory=list)
    children: list[Cluster] = field(default_factory=list)
    anchor: str = ""  # the node an arrow to or from the whole cluster is drawn at

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


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
            parts.append(proto if proto == "icmp" else f"all {proto}")
        else:
            parts.append(f"{proto}:{','.join(str(p) for p in ports)}")
    return ", ".join(parts) or "nothing"


def _range_label(ranges: list[str]) -> list[str]:
    if ranges == ["0.0.0.0/0"]:
        return [KNOWN_RANGES["0.0.0.0/0"], "0.0.0.0/0"]
    named = [f"{r} ({KNOWN_RANGES[r]})" if r in KNOWN_RANGES else r for r in ranges]
    return ["Addresses", *named] if named == ranges else named


def _metadata(vm: dict) -> dict[str, str]:
    items = ((vm.get("properties") or {}).get("metadata") or {}).get("items") or []
    return {str(i.get("key")): str(i.get("value") or "") for i in items if isinstance(i, dict)}


def _setting(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1) if m else None


def _vm_inside(model: Model, cluster: Cluster, vm_id: str, metadata: dict[str, str]) -> None:
    """Nodes for what the VM's metadata installs; traffic from outside enters at the anchor."""
    startup = metadata.get("startup-script", "")
    bind = _setting(r"--bind\s+(\S+)", metadata.get("app-service", ""))
    # A templated unit (hello@PORT) runs one release per slot the startup script names.
    slots = (_setting(r"^readonly SLOTS=\(([^)]*)\)", startup) or "").split()
    unit = _setting(r"\[app-service\]=\S*/([\w@.-]+)", startup) or "the app's unit"
    if bind:
        if "%i" in bind and slots:
            bind = " or ".join(bind.replace("%i", slot) for slot in slots)
        label = ["gunicorn: the Flask app", f"on {bind}", f"({unit})"]
        app = model.add(Node(vm_id + "_gunicorn", label, "process"))
        cluster.nodes.append(app)
        cluster.anchor = app
    site = metadata.get("tls-nginx-site")
    directory = metadata.get("acme-directory", "")
    if site is not None:
        sites = site + (metadata.get("tls-nginx-https", "") if directory else "")
        ports = dict.fromkeys(re.findall(r"^\s*listen\s+(\d+)(\s+ssl)?", sites, re.MULTILINE))
        listens = ", ".join(f"{port} (TLS)" if tls else port for port, tls in ports)
        nginx = model.add(Node(vm_id + "_nginx", ["nginx", f"listens on {listens}"], "process"))
        cluster.nodes.append(nginx)
        if bind:
            model.edges.append(Edge(nginx, app, ["proxy"], "flow"))
        cluster.anchor = nginx
        timer = metadata.get("tls-cert-timer", "")
        if directory and timer:
            when = _setting(r"^OnCalendar=(\S+)", timer) or "?"
            label = ["certificate for the static IP", f"hello-cert.timer: renew when due ({when})"]
            cert = model.add(Node(vm_id + "_cert", label, "process"))
            cluster.nodes.append(cert)
            host = re.sub(r"^https?://([^/]+).*$", r"\1", directory)
            ca = model.add(Node(_id("ca", host), ["ACME CA", host], "source"))
            model.edges.append(Edge(ca, cert, ["issues it, checks port 80"], "flow"))
            model.edges.append(Edge(cert, nginx, ["reload, no restart"], "flow"))
    if "app-watch-service" in metadata:
        label = ["hello-metadata-watch", "converge: rewrite what changed"]
        converge = model.add(Node(vm_id + "_converge", label, "process"))
        cluster.nodes.append(converge)
        if bind:
            model.edges.append(Edge(converge, app, ["start the new release"], "flow"))
        if bind and site is not None and len(slots) > 1:
            model.edges.append(Edge(converge, nginx, ["switch once healthy"], "flow"))
    if not cluster.nodes:
        cluster.nodes.append(model.add(Node(vm_id + "_os", ["no app in its metadata"], "process")))
    cluster.anchor = cluster.anchor or cluster.nodes[0]


def _delivery(model: Model, config_dir: Path, vm_name: str, converge: str) -> None:
    """The path a merged change takes to the VM, when the config sits in a checkout with CI."""
    ci_file, makefile = config_dir / ".circleci" / "config.yml", config_dir / "Makefile"
    if not ci_file.is_file() or not makefile.is_file():
        return
    ci = yaml.safe_load(ci_file.read_text()) or {}
    job = next(
        (
            name
            for name, spec in (ci.get("jobs") or {}).items()
            for step in spec.get("steps") or []
            if isinstance(step, dict)
            and str((step.get("run") or {}).get("command", "")).strip() == "make deploy"
        ),
        None,
    )
    if job is None:
        return
    branch, context = "?", "?"
    for workflow in (ci.get("workflows") or {}).values():
        for entry in workflow.get("jobs") or [] if isinstance(workflow, dict) else []:
            if isinstance(entry, dict) and job in entry:
                spec = entry[job] or {}
                branch = str(((spec.get("filters") or {}).get("branches") or {}).get("only", "?"))
                context = str(spec.get("context", "?"))
    engine = _setting(r"^DEPLOY_ENGINE \?= (\S+)", makefile.read_text()) or "?"
    steps = [
        (f"CircleCI job {job}", f"branch {branch}, context {context}"),
        ("Workload Identity Federation", "CircleCI's OIDC token, no key"),
        ("deployer service account", "GCP_DEPLOYER_SA"),
        ("Deployment Manager or", "Infrastructure Manager", f"DEPLOY_ENGINE (default {engine})"),
        (f"instance metadata of {vm_name}", "the app's files and settings"),
    ]
    labels = ["OIDC token", "impersonate", "make deploy", "update the instance", "watched"]
    ids = [model.add(Node(_id("deliver", str(i)), list(step), "delivery")) for i, step in
           enumerate(steps)]  # fmt: skip
    for src, dst, label in zip(ids, [*ids[1:], converge], labels, strict=True):
        model.edges.append(Edge(src, dst, [label], "flow"))


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
    delivered = False
    subnet_ranges: dict[str, list[ipaddress._BaseNetwork]] = {}
    for network in by_type.get("compute.v1.network", []):
        nname = network["name"]
        mode = "auto" if network["properties"].get("autoCreateSubnetworks", True) else "custom"
        cluster = Cluster(_id("vpc", nname), [f"VPC {nname} · {mode}-mode network"])
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
                    f"VM {vname} · {last_segment(vp.get('machineType'))} · {vp.get('zone')}",
                    f"image {last_segment(image)} · network tags: {tags}",
                ]
                vc = Cluster(_id("vm", vname), label)
                _vm_inside(model, vc, vc.id, _metadata(vm))
                sc.children.append(vc)
                if vc.id + "_converge" in model.nodes and not delivered:
                    _delivery(model, Path(expansion.config_file).parent, vname, vc.id + "_converge")
                    delivered = True
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
        # An arrow's label: what the rule admits, then the rule, on one line each.
        allows = f"{rule['name']} ({priority})"
        direction = rule.get("direction", "INGRESS")
        denied = bool(rule.get("denied"))
        what = _protocols(rule.get("denied") or rule.get("allowed"))
        if direction == "EGRESS":
            dests = [str(d) for d in rule.get("destinationRanges") or ["0.0.0.0/0"]]
            # Written under the network's name: an arrow out would add a column for one line.
            verb = "deny" if denied else "allow"
            notes.setdefault(net or "?", []).append(
                f"{verb} {what} out to {', '.join(dests)}: {allows}"
            )
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
            notes.setdefault(net or "?", []).append(
                f"deny {what} from {', '.join(ranges)}: {allows}"
            )
            continue
        internal = _inside(ranges, subnet_ranges.get(net or "", []))
        if internal:
            src_label = ["Other VMs in the VPC", ", ".join(ranges)]
            src = model.add(Node(_id("src", "vpc-" + ",".join(ranges)), src_label, "source"))
            for vpc in model.clusters:
                if vpc.id == _id("vpc", net or "?") and src not in vpc.nodes:
                    vpc.nodes.append(src)
        else:
            src = model.add(Node(_id("src", ",".join(ranges)), _range_label(ranges), "source"))
        scope = "" if rule.get("targetTags") else " (whole network)"
        for v in targets:
            dst = _id("vm", v)
            if not internal and v in vm_address:
                dst = _id("ip", vm_address[v])
            model.edges.append(Edge(src, dst, [f"{what}{scope}", allows]))

    model.edges = _merge(model.edges)
    for cluster in model.clusters:
        # What no arrow can show, written under the network's name.
        cluster.label += notes.get(cluster.label[0].split(" · ")[0].removeprefix("VPC "), [])
        cluster.label.append("implied: deny all ingress, allow all egress (priority 65535)")
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
            model.edges.append(Edge(src, _id("ip", host), [f"probe {scheme}"], "probe"))
        for policy in by_type.get("gcp-types/monitoring-v3:projects.alertPolicies", []):
            pp = policy["properties"]
            mails = [
                channels[t]["properties"].get("labels", {}).get("email_address", "?")
                for t in (_ref_target(c, outputs) for c in pp.get("notificationChannels") or [])
                if t in channels
            ]
            label = [f"alert {policy['name']}", f"mails {', '.join(mails) or 'nobody'}"]
            dst = model.add(Node(_id("alert", policy["name"]), label, "source"))
            model.edges.append(Edge(src, dst, ["fails from more than one region"], "probe"))


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
    "process": 'shape=box, style="filled", fillcolor="#e6f4ea", color="#188038"',
    "delivery": 'shape=box, style="rounded,filled", fillcolor="#f3e8fd", color="#8430ce"',
}
_EDGE_STYLE = {
    "allow": 'color="#188038"',
    "nat": 'color="#1a73e8", style=bold',
    "flow": 'color="#8430ce"',
    # Cloud Monitoring's probes and the alert they feed: watching, not traffic the firewall admits.
    "probe": 'color="#d08000", style=dashed',
}


def _q(lines: list[str]) -> str:
    return '"' + "\\n".join(s.replace("\\", "\\\\").replace('"', '\\"') for s in lines) + '"'


def to_dot(model: Model, title: str) -> str:
    """Graphviz source for `model`; deterministic."""
    out = [
        "digraph architecture {",
        f"  label={_q([title])}; labelloc=t; fontname=Helvetica; fontsize=18;",
        "  rankdir=TB; nodesep=0.3; ranksep=0.45; compound=true; newrank=true;",
        '  node [fontname=Helvetica, fontsize=14, margin="0.12,0.06"];',
        "  edge [fontname=Helvetica, fontsize=12];",
    ]
    placed: set[str] = set()
    anchors = {c.id: c.anchor for top in model.clusters for c in top.walk() if c.anchor}

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
        # An arrow to or from a VM is drawn at its anchor and clipped at its box (compound).
        clip = "".join(
            f", {end}=cluster_{cid}" for end, cid in (("ltail", e.src), ("lhead", e.dst))
            if cid in anchors
        )  # fmt: skip
        src, dst = anchors.get(e.src, e.src), anchors.get(e.dst, e.dst)
        out.append(f"  {src} -> {dst} [label={_q(e.label)}, {_EDGE_STYLE[e.kind]}{clip}];")
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
    "process": ('["', '"]'),
    "delivery": ('(["', '"])'),
}


def _m(lines: list[str]) -> str:
    return "<br/>".join(s.replace('"', "#quot;") for s in lines)


def to_mermaid(model: Model) -> str:
    """A Mermaid flowchart of `model` (GitHub renders it inline in Markdown)."""
    out = ["flowchart TB"]
    placed = {nid for top in model.clusters for c in top.walk() for nid in c.nodes}

    def cluster(c: Cluster, indent: str) -> None:
        out.append(f'{indent}subgraph {c.id}["{_m(c.label)}"]')
        for nid in c.nodes:
            n = model.nodes[nid]
            left, right = _MERMAID_SHAPE[n.kind]
            out.append(f"{indent}  {nid}{left}{_m(n.label)}{right}")
        for child in c.children:
            cluster(child, indent + "  ")
        out.append(f"{indent}end")

    for nid, n in model.nodes.items():
        if nid not in placed:
            left, right = _MERMAID_SHAPE[n.kind]
            out.append(f"  {nid}{left}{_m(n.label)}{right}")
    for c in model.clusters:
        cluster(c, "  ")
    for e in model.edges:
        arrow = "==>" if e.kind == "nat" else "-->"
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
    """The DOT's title: what the picture shows, and the config it was generated from (a check
    reads it to know which config the docs are for)."""
    return (
        f"{Path(config).name}: who reaches the VM, what runs on it, how a change arrives "
        "(make docs)"
    )


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
