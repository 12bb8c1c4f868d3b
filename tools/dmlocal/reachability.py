"""GCP VPC firewall semantics, evaluated locally on expanded `compute.v1.firewall` resources.

Answers "may REMOTE reach the VM on PROTO/PORT?" (ingress) or "may the VM reach REMOTE?" (egress)
the way Google's documentation describes VPC firewall rules, so an operator can see before merging
whether a change locks them out of SSH:

* a rule applies to the VM only when it is enabled, has the same direction, and its `targetTags`
  is empty or shares a tag with the VM (and `targetServiceAccounts`, when set, names the VM's);
* among the applicable rules that match the packet, the lowest priority number wins (default 1000);
* at equal priority a deny rule beats an allow rule;
* two implied rules sit at priority 65535: allow all egress and deny all ingress. They take part in
  the same contest, so an explicit rule at 65535 only wins against them by the deny-beats-allow tie.

`$(ref.NAME.FIELD)` strings (the internal rule's `sourceRanges` is `$(ref.hello-vpc.subnetCidr)`,
the network template's output naming its subnet's range) are resolved with a callback;
`resolver_for(resources, layout)` builds one that follows template outputs to the leaf resource
and looks the field up in its properties in the same expansion.

Small public API (the template tests import it):

    rules = firewall_rules(expansion.resources)
    d = evaluate(rules, "104.155.255.254", "tcp", 22, tags=["hello-web"],
                 resolve=resolver_for(expansion.resources, expansion.layout))
    d.allowed, d.rule, d.priority
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from dmlocal.references import REFERENCE, compute_v1_type, follow, template_outputs

IMPLIED_ALLOW_EGRESS = "implied-allow-egress"
IMPLIED_DENY_INGRESS = "implied-deny-ingress"
IMPLIED_PRIORITY = 65535
DEFAULT_PRIORITY = 1000
# Where the stack admits SSH from (deployment.yaml's sshSourceRanges): the preview asks about
# it by name and the diagram labels it, so a change that locks the team out shows in both.
GOOGLE_SSH_RANGE = "104.154.0.0/15"
# Well-known source ranges, named where the preview and the diagram show them.
KNOWN_RANGES = {
    "0.0.0.0/0": "Internet",
    GOOGLE_SSH_RANGE: "GOOGLE LLC",  # the range's registered owner, as the docs name it
    "35.235.240.0/20": "IAP TCP forwarding",
    "35.191.0.0/16": "Google health checks",
    "130.211.0.0/22": "Google health checks",
}

# Protocols GCP accepts by name in `IPProtocol`, with their IANA numbers (a rule may use either).
PROTOCOL_NUMBERS = {
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "tcp": 6,
    "udp": 17,
    "esp": 50,
    "ah": 51,
    "sctp": 132,
}
PORTED_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})

_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")


class ReachabilityError(ValueError):
    """A rule or query that cannot be evaluated (bad range, unknown protocol, unresolved ref)."""


@dataclass(frozen=True)
class Decision:
    """Outcome for one packet: allowed or not, and the rule (name, priority) that decided it."""

    allowed: bool
    rule: str
    priority: int
    direction: str

    @property
    def action(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def implied(self) -> bool:
        return self.rule in (IMPLIED_ALLOW_EGRESS, IMPLIED_DENY_INGRESS)

    def __str__(self) -> str:
        return f"{self.action} (rule {self.rule}, priority {self.priority})"


Resolver = Callable[[str], object]


def firewall_rules(resources: Iterable[Mapping]) -> list[dict]:
    """Return the firewall rules among expanded resources, as property dicts with a `name`.

    DM resources carry the GCE name in `properties.name` when the template sets it, otherwise the
    resource name is the GCE name; the result always has `name` set to the one GCE would use.
    """
    rules = []
    for res in resources:
        if compute_v1_type(res.get("type", "")) != "compute.v1.firewall":
            continue
        props = dict(res.get("properties") or {})
        props.setdefault("name", res.get("name"))
        rules.append(props)
    return rules


def resolver_for(resources: Iterable[Mapping], layout: Mapping | None = None) -> Resolver:
    """Build a resolver for `$(ref.NAME.FIELD)` against the properties of `resources`.

    With the Expansion's `layout`, references to template outputs are followed to the leaf
    resource they name.

    FIELD may be a dotted path (`networkInterfaces.0.networkIP` style indices allowed). Fields that
    exist only after creation (selfLink, id, address of an ephemeral IP) are not in the properties
    and raise ReachabilityError: a firewall range that depends on one cannot be checked offline.
    """
    by_name = {r.get("name"): r for r in resources}
    outputs = template_outputs(layout)

    def resolve(ref: str) -> object:
        followed = follow(ref, outputs)
        if not (isinstance(followed, str) and REFERENCE.fullmatch(followed.strip())):
            return followed
        ref = followed
        m = REFERENCE.fullmatch(ref.strip())
        if not m:
            raise ReachabilityError(f"not a reference: {ref!r}")
        name, field = m.groups()
        if name not in by_name:
            raise ReachabilityError(f"{ref}: no resource named {name!r} in the expansion")
        value: object = by_name[name].get("properties") or {}
        for part in field.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise ReachabilityError(
                    f"{ref}: resource {name!r} has no property {field!r} known before deployment"
                )
        return value

    return resolve


def _resolve_ranges(values: Sequence | None, resolve: Resolver | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        if isinstance(v, str) and "$(ref." in v:
            if resolve is None:
                raise ReachabilityError(f"range {v!r} is a reference and no resolver was given")
            got = resolve(v)
            out.extend(got if isinstance(got, list) else [got])
        else:
            out.append(v)
    return [str(x) for x in out]


def _networks(ranges: Iterable[str]) -> list[ipaddress._BaseNetwork]:
    nets = []
    for r in ranges:
        try:
            nets.append(ipaddress.ip_network(r, strict=False))
        except ValueError as exc:
            raise ReachabilityError(f"invalid IP range {r!r}: {exc}") from None
    return nets


def normalize_protocol(proto: str | int) -> str:
    """Return the canonical lower-case protocol name (or number as text) GCP would match on.

    Rejects names GCP rejects, including ones with stray whitespace, rather than guessing.
    """
    p = str(proto)
    if p.lower() == "all":
        return "all"
    if p.isdigit():
        num = int(p)
        if not 0 <= num <= 255:
            raise ReachabilityError(f"protocol number {num} out of range 0-255")
        for name, n in PROTOCOL_NUMBERS.items():
            if n == num:
                return name
        return p
    if p.lower() in PROTOCOL_NUMBERS:
        return p.lower()
    raise ReachabilityError(
        f"unknown protocol {p!r}; valid: {', '.join(sorted(PROTOCOL_NUMBERS))}, all, or 0-255"
    )


def parse_port_range(spec: str | int) -> tuple[int, int]:
    """Parse a GCP port spec ("22" or "80-90") into an inclusive (low, high) tuple."""
    m = _PORT_RE.fullmatch(str(spec))
    if not m:
        raise ReachabilityError(
            f"invalid port {spec!r}; expected N or N-M with 0 <= N <= M <= 65535"
        )
    low = int(m.group(1))
    high = int(m.group(2) or low)
    if not 0 <= low <= high <= 65535:
        raise ReachabilityError(
            f"invalid port {spec!r}; expected N or N-M with 0 <= N <= M <= 65535"
        )
    return low, high


def _entry_matches(entry: Mapping, protocol: str, port: int | None) -> bool:
    rule_proto = normalize_protocol(entry.get("IPProtocol", ""))
    if rule_proto not in ("all", protocol):
        return False
    ports = entry.get("ports")
    if not ports or rule_proto == "all":
        return True
    if port is None:
        # A query without a port (e.g. "tcp" as a whole) only matches a rule open on every port.
        return False
    for spec in ports:
        low, high = parse_port_range(spec)
        if low <= port <= high:
            return True
    return False


def _applies_to_vm(rule: Mapping, tags: set[str], service_account: str | None) -> bool:
    if rule.get("disabled"):
        return False
    target_tags = rule.get("targetTags") or []
    if target_tags and not tags.intersection(target_tags):
        return False
    target_sas = rule.get("targetServiceAccounts") or []
    return not (target_sas and service_account not in target_sas)


def ingress_source_ranges(
    rules: Iterable[Mapping],
    *,
    tags: Iterable[str] | None = (),
    service_account: str | None = None,
    resolve: Resolver | None = None,
) -> list[str]:
    """Each distinct source range of the INGRESS rules that apply to a VM (with `tags=None`, of
    every ingress rule), in rule order."""
    found: list[str] = []
    for rule in rules:
        if (rule.get("direction") or "INGRESS") != "INGRESS":
            continue
        if tags is not None and not _applies_to_vm(rule, set(tags), service_account):
            continue
        for cidr in _resolve_ranges(rule.get("sourceRanges"), resolve):
            if cidr not in found:
                found.append(cidr)
    return found


def _remote_matches(
    rule: Mapping,
    direction: str,
    remote: ipaddress._BaseAddress,
    source_tags: set[str],
    resolve: Resolver | None,
) -> bool:
    if direction == "EGRESS":
        ranges = _resolve_ranges(rule.get("destinationRanges"), resolve) or ["0.0.0.0/0"]
        return any(remote in net for net in _networks(ranges) if net.version == remote.version)
    src_ranges = _resolve_ranges(rule.get("sourceRanges"), resolve)
    src_tags = rule.get("sourceTags") or []
    if not src_ranges and not src_tags and not rule.get("sourceServiceAccounts"):
        src_ranges = ["0.0.0.0/0"]  # GCP's default source for an ingress rule
    if any(remote in net for net in _networks(src_ranges) if net.version == remote.version):
        return True
    return bool(source_tags.intersection(src_tags))


def evaluate(
    rules: Iterable[Mapping],
    remote: str,
    protocol: str | int,
    port: int | str | None = None,
    *,
    tags: Iterable[str] = (),
    direction: str = "INGRESS",
    service_account: str | None = None,
    source_tags: Iterable[str] = (),
    network: str | None = None,
    resolve: Resolver | None = None,
) -> Decision:
    """Decide one packet against `rules` (firewall property dicts, see `firewall_rules`).

    remote: the peer's IP address: the source for INGRESS, the destination for EGRESS.
    protocol/port: e.g. "tcp", 22; port is ignored for protocols without ports (icmp).
    tags / service_account: the target VM's network tags and service account e-mail.
    source_tags: tags of the sending VM, for ingress from inside the VPC via `sourceTags`.
    network: when given, only rules whose `network` equals it are considered.
    resolve: resolver for `$(ref...)` ranges (see `resolver_for`).
    """
    direction = direction.upper()
    if direction not in ("INGRESS", "EGRESS"):
        raise ReachabilityError(f"direction must be INGRESS or EGRESS, not {direction!r}")
    try:
        addr = ipaddress.ip_address(remote)
    except ValueError:
        raise ReachabilityError(f"invalid IP address {remote!r}") from None
    proto = normalize_protocol(protocol)
    port_num: int | None = None
    if proto in PORTED_PROTOCOLS and port is not None:
        low, high = parse_port_range(port)
        if low != high:
            raise ReachabilityError(f"ask about one port at a time, not {port!r}")
        port_num = low
    vm_tags = set(tags)
    src_tags = set(source_tags)

    best: tuple[int, int, str, bool] | None = None  # (priority, deny-first, name, allowed)
    for rule in rules:
        if (rule.get("direction") or "INGRESS").upper() != direction:
            continue
        if network is not None and rule.get("network") not in (None, network):
            continue
        if not _applies_to_vm(rule, vm_tags, service_account):
            continue
        if not _remote_matches(rule, direction, addr, src_tags, resolve):
            continue
        priority = int(rule.get("priority", DEFAULT_PRIORITY))
        if rule.get("denied"):
            entries, allowed = rule["denied"], False
        else:
            entries, allowed = rule.get("allowed") or [], True
        if not any(_entry_matches(e, proto, port_num) for e in entries):
            continue
        key = (priority, 1 if allowed else 0, str(rule.get("name")), allowed)
        if best is None or key[:2] < best[:2]:
            best = key

    if direction == "EGRESS":
        implied = (IMPLIED_PRIORITY, 1, IMPLIED_ALLOW_EGRESS, True)
    else:
        implied = (IMPLIED_PRIORITY, 0, IMPLIED_DENY_INGRESS, False)
    # An explicit rule that ties the implied one on (priority, action) is reported: it is the one
    # in code, and the outcome is the same.
    if best is None or implied[:2] < best[:2]:
        best = implied
    return Decision(allowed=best[3], rule=best[2], priority=best[0], direction=direction)


def is_allowed(rules: Iterable[Mapping], remote: str, protocol: str | int, port=None, **kw) -> bool:
    """Shorthand for `evaluate(...).allowed`."""
    return evaluate(rules, remote, protocol, port, **kw).allowed


def instance_targets(resources: Iterable[Mapping], layout: Mapping | None = None) -> list[dict]:
    """Each instance with the facts firewall evaluation needs: tags, service account, subnet."""
    resources = list(resources)
    by_name = {r.get("name"): r for r in resources}
    outputs = template_outputs(layout)
    out = []
    for res in resources:
        if compute_v1_type(res.get("type", "")) != "compute.v1.instance":
            continue
        props = res.get("properties") or {}
        tags = list((props.get("tags") or {}).get("items") or [])
        sas = [sa.get("email") for sa in props.get("serviceAccounts") or [] if isinstance(sa, dict)]
        subnet_range = None
        for nic in props.get("networkInterfaces") or []:
            m = REFERENCE.fullmatch(str(follow(nic.get("subnetwork", ""), outputs)).strip())
            if m and m.group(1) in by_name:
                subnet_range = (by_name[m.group(1)].get("properties") or {}).get("ipCidrRange")
                break
        out.append(
            {
                "name": res.get("name"),
                "tags": tags,
                "service_account": sas[0] if sas else None,
                "subnet_range": subnet_range,
            }
        )
    return out
