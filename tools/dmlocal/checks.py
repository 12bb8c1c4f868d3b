"""Semantic checks a reviewer would make on an expanded deployment's leaf resources.

They catch what the Compute Engine API schema (dmlocal.compute_api) cannot express but the API
(or the first packet) would reject: CIDRs that do not parse or overlap, ports like `8O`,
protocols like `TCP `, priorities out of range, an instance in a zone outside its subnet's
region, malformed image and machine-type URLs. Each Finding names the file that declared the
resource, the resource, the field path and what would be valid.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any

from dmlocal.errors import Finding
from dmlocal.reachability import PORTED_PROTOCOLS, PROTOCOL_NUMBERS
from dmlocal.references import (
    REFERENCE,
    RESOURCE_NAME,
    compute_v1_type,
    follow,
    is_compute,
    template_outputs,
)
from dmlocal.schema import address_slip

REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
API_PREFIX = r"(?:https://(?:www|compute)\.googleapis\.com/compute/(?:v1|beta|alpha)/)?"
IMAGE_URL = re.compile(
    API_PREFIX + r"(?:projects/(?P<project>[a-z](?:[-a-z0-9.:]*[a-z0-9])?)/)?global/images/"
    r"(?:family/)?(?P<image>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)$"
)
MACHINE_TYPE_URL = re.compile(
    API_PREFIX + r"(?:projects/[a-z](?:[-a-z0-9.:]*[a-z0-9])?/)?zones/(?P<zone>[^/]+)/machineTypes/"
    r"(?P<type>[^/]+)$"
)
MACHINE_TYPE_NAME = re.compile(
    r"^(?:[a-z][a-z0-9]*-(?:custom-\d+-\d+(?:-ext)?|[a-z0-9]+(?:-[a-z0-9]+)*)|custom-\d+-\d+(?:-ext)?)$"
)
DISK_TYPE_URL = re.compile(
    API_PREFIX + r"(?:projects/[a-z](?:[-a-z0-9.:]*[a-z0-9])?/)?zones/(?P<zone>[^/]+)/diskTypes/"
    r"(?P<type>[a-z][-a-z0-9]*)$"
)
VALID_PROTOCOLS = ", ".join([*PROTOCOL_NUMBERS, "all", "or a protocol number 0-255"])
IMAGE_EXAMPLE = "projects/debian-cloud/global/images/family/debian-12"


def semantic_checks(
    resources: list[dict], origins: dict[str, str] | None = None, layout: dict | None = None
) -> list[Finding]:
    """The reviewer's checks on leaf resources (see the module docstring)."""
    origins = origins or {}
    by_name = {r.get("name"): r for r in resources}
    outputs = template_outputs(layout)
    findings: list[Finding] = []
    for res in resources:
        ctx = _Ctx(res, origins.get(res.get("name", ""), "?"), by_name, outputs)
        kind = compute_v1_type(res.get("type", ""))
        if is_compute(kind):
            findings += ctx.labels()  # GCE's label rules; other APIs' `labels` mean other things
        if kind == "compute.v1.firewall":
            findings += ctx.firewall()
        elif kind == "compute.v1.subnetwork":
            findings += ctx.subnetwork()
        elif kind == "compute.v1.instance":
            findings += ctx.instance()
        elif kind == "compute.v1.address":
            findings += ctx.address()
    findings += _overlapping_subnets(resources, origins)
    return findings


def _known(value: Any) -> bool:
    """A string whose value is known before deploy: no `$(ref...)` for DM to substitute later."""
    return isinstance(value, str) and not REFERENCE.search(value)


class _Ctx:
    def __init__(self, res: dict, file: str, by_name: dict[str, dict], outputs: dict):
        self.outputs = outputs
        self.res = res
        self.name = res.get("name", "?")
        self.props = res.get("properties") or {}
        self.file = file
        self.by_name = by_name

    def err(self, field: str, message: str, severity: str = "error") -> Finding:
        return Finding(self.file, self.name, field, message, severity)

    def labels(self) -> Iterator[Finding]:
        labels = self.props.get("labels")
        if not isinstance(labels, dict):
            return
        for key, value in labels.items():
            if not LABEL_KEY.fullmatch(str(key)):
                yield self.err(
                    f"labels.{key}",
                    f"label key '{key}' is invalid: lowercase letters, digits, '_' and '-', "
                    f"1-63 characters, starting with a letter (e.g. '{str(key).lower()}')",
                )
            if _known(value) and not LABEL_VALUE.fullmatch(value):
                yield self.err(
                    f"labels.{key}",
                    f"label value '{value}' is invalid: at most 63 lowercase letters, digits, "
                    "'_' and '-'",
                )

    # -- firewall ---------------------------------------------------------------------------

    def firewall(self) -> Iterator[Finding]:
        p = self.props
        priority = p.get("priority", 1000)
        if isinstance(priority, bool) or not isinstance(priority, int | str):
            yield self.err("priority", f"must be an integer 0-65535, not {priority!r}")
        elif isinstance(priority, str) and not priority.isdigit():
            yield self.err("priority", f"'{priority}' is not a number: use an integer 0-65535")
        elif not 0 <= int(priority) <= 65535:
            yield self.err(
                "priority",
                f"{priority} is out of range: 0 (highest) to 65535 (lowest); default is 1000",
            )
        direction = p.get("direction", "INGRESS")
        if direction == "EGRESS" and p.get("sourceRanges"):
            yield self.err(
                "sourceRanges", "an EGRESS rule matches destinationRanges; sourceRanges is ingress"
            )
        if direction == "INGRESS" and p.get("destinationRanges"):
            yield self.err(
                "destinationRanges",
                "an INGRESS rule matches sourceRanges; use destinationRanges on EGRESS rules",
                "warning",
            )
        has_allowed, has_denied = bool(p.get("allowed")), bool(p.get("denied"))
        if has_allowed == has_denied:
            yield self.err(
                "allowed",
                "a firewall rule needs exactly one of `allowed` or `denied` (a non-empty list of "
                "{IPProtocol, ports})",
            )
        for key in ("sourceRanges", "destinationRanges"):
            ranges = p.get(key) or []
            if not isinstance(ranges, list):
                continue  # compute_api reports the type
            for i, value in enumerate(ranges):
                yield from self.cidr(f"{key}[{i}]", value, host_bits_ok=True)
        for key in ("allowed", "denied"):
            entries = p.get(key) or []
            if not isinstance(entries, list):
                continue
            for i, entry in enumerate(entries):
                if isinstance(entry, dict):
                    yield from self.protocol_entry(f"{key}[{i}]", entry)
        for key in ("targetTags", "sourceTags"):
            for i, tag in enumerate(p.get(key) or []):
                if _known(tag) and not RESOURCE_NAME.match(tag):
                    yield self.err(
                        f"{key}[{i}]",
                        f"'{tag}' is not a valid network tag: lowercase letters, digits and "
                        "hyphens, 1-63 characters, starting with a letter",
                    )

    def protocol_entry(self, where: str, entry: dict) -> Iterator[Finding]:
        proto = entry.get("IPProtocol")
        if proto is None:
            yield self.err(f"{where}.IPProtocol", f"is required: one of {VALID_PROTOCOLS}")
            return
        name = str(proto)
        if name != name.lower() and name.lower() in (*PROTOCOL_NUMBERS, "all"):
            # The API takes any case and stores lower case; only the style differs.
            yield self.err(
                f"{where}.IPProtocol",
                f"'{name}' works (the API stores '{name.lower()}'); write '{name.lower()}' so the "
                "config matches what GCP shows",
                "warning",
            )
            name = name.lower()
        ok = name in PROTOCOL_NUMBERS or name == "all" or (name.isdigit() and int(name) <= 255)
        if not ok:
            clean = name.strip().lower()
            if clean in PROTOCOL_NUMBERS or clean == "all":
                why = "has stray whitespace" if name != name.strip() else "must be lower case"
                hint = f"{why}: did you mean '{clean}'?"
            else:
                hint = f"valid: {VALID_PROTOCOLS}"
            yield self.err(f"{where}.IPProtocol", f"'{name}' is not a protocol GCP accepts; {hint}")
            return
        ports = entry.get("ports")
        if ports is None:
            return
        if name not in PORTED_PROTOCOLS and not (
            name.isdigit() and int(name) in (PROTOCOL_NUMBERS[p] for p in PORTED_PROTOCOLS)
        ):
            yield self.err(
                f"{where}.ports",
                f"ports only apply to tcp, udp and sctp, not '{name}'; remove `ports`",
            )
            return
        if not isinstance(ports, list):
            return
        for i, port in enumerate(ports):
            yield from self.port(f"{where}.ports[{i}]", port)

    def port(self, where: str, port: Any) -> Iterator[Finding]:
        text = str(port)
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if m:
            low, high = int(m.group(1)), int(m.group(2) or m.group(1))
            if high > 65535:
                yield self.err(where, f"'{text}' is out of range: ports are 0-65535")
            elif low > high:
                yield self.err(
                    where, f"'{text}' is backwards: write the range low-high ({high}-{low})"
                )
            return
        fixed = text.strip().translate(str.maketrans({"O": "0", "o": "0", "l": "1", "I": "1"}))
        guess = f" did you mean '{fixed}'?" if re.fullmatch(r"\d+(-\d+)?", fixed) else ""
        yield self.err(
            where,
            f"'{text}' is not a port:{guess} a port is a number 0-65535 or a range like "
            "'8000-8080'",
        )

    def cidr(self, where: str, value: Any, host_bits_ok: bool) -> Iterator[Finding]:
        if not _known(value):
            return
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            slip = address_slip(value) if isinstance(value, str) else ""
            yield self.err(
                where,
                f"'{value}' is not a CIDR range: {slip + '; ' if slip else ''}write "
                "ADDRESS/PREFIX, e.g. 10.10.0.0/24 or 203.0.113.7/32",
            )
            return
        if "/" not in value:
            yield self.err(
                where,
                f"'{value}' has no prefix length; write {value}/{net.max_prefixlen}",
                "warning",
            )
        if not host_bits_ok:
            try:
                ipaddress.ip_network(value, strict=True)
            except ValueError:
                yield self.err(where, f"'{value}' has host bits set: the range is {net}")

    # -- subnetwork -------------------------------------------------------------------------

    def subnetwork(self) -> Iterator[Finding]:
        p = self.props
        region = p.get("region")
        if _known(region) and not REGION.match(region):
            yield self.err("region", f"'{region}' is not a region name like us-central1")
        cidr = p.get("ipCidrRange")
        if cidr is None:
            yield self.err(
                "ipCidrRange", "is required: the subnet's primary range, e.g. 10.10.0.0/24"
            )
        else:
            yield from self.subnet_range("ipCidrRange", cidr)
        for i, sec in enumerate(p.get("secondaryIpRanges") or []):
            if isinstance(sec, dict) and "ipCidrRange" in sec:
                yield from self.subnet_range(
                    f"secondaryIpRanges[{i}].ipCidrRange", sec["ipCidrRange"]
                )
        if "network" not in p:
            yield self.err("network", "is required: the VPC, e.g. $(ref.my-vpc.selfLink)")

    def subnet_range(self, where: str, value: Any) -> Iterator[Finding]:
        problems = list(self.cidr(where, value, host_bits_ok=False))
        yield from problems
        if problems or not _known(value):
            return
        net = ipaddress.ip_network(value, strict=False)
        if net.version == 4 and not 8 <= net.prefixlen <= 29:
            yield self.err(where, f"'{value}': an IPv4 subnet's prefix must be /8 to /29")

    # -- instance ---------------------------------------------------------------------------

    def instance(self) -> Iterator[Finding]:
        p = self.props
        zone = p.get("zone")
        region = None
        if _known(zone):
            m = ZONE.match(zone)
            if not m:
                yield self.err("zone", f"'{zone}' is not a zone name like us-central1-a")
            else:
                region = m.group(1)
        mt = p.get("machineType")
        if _known(mt):
            yield from self.machine_type(mt, zone)
        for i, disk in enumerate(p.get("disks") or []):
            if not isinstance(disk, dict):
                continue
            init = disk.get("initializeParams") or {}
            where = f"disks[{i}].initializeParams"
            image = init.get("sourceImage")
            if _known(image) and not IMAGE_URL.fullmatch(image):
                yield self.err(
                    f"{where}.sourceImage",
                    f"'{image}' is not an image URL: write projects/PROJECT/global/images/NAME or "
                    f".../images/family/FAMILY, e.g. {IMAGE_EXAMPLE}",
                )
            dt = init.get("diskType")
            if _known(dt):
                m = DISK_TYPE_URL.fullmatch(dt)
                if not m:
                    yield self.err(
                        f"{where}.diskType",
                        f"'{dt}' is not a disk type URL: write zones/ZONE/diskTypes/TYPE, e.g. "
                        f"zones/{zone or 'us-central1-a'}/diskTypes/pd-balanced",
                    )
                elif isinstance(zone, str) and m.group("zone") != zone:
                    yield self.err(
                        f"{where}.diskType",
                        f"names zone {m.group('zone')} but the instance is in {zone}",
                    )
            if disk.get("boot") and not (init.get("sourceImage") or disk.get("source")):
                yield self.err(
                    f"disks[{i}]",
                    f"a boot disk needs initializeParams.sourceImage (e.g. {IMAGE_EXAMPLE}) or a "
                    "source disk",
                )
        for i, nic in enumerate(p.get("networkInterfaces") or []):
            if not isinstance(nic, dict):
                continue
            yield from self.nic_region(i, nic, zone, region)

    def machine_type(self, mt: str, zone: Any) -> Iterator[Finding]:
        m = MACHINE_TYPE_URL.fullmatch(mt)
        example = f"zones/{zone or 'us-central1-a'}/machineTypes/e2-small"
        if not m:
            bare = MACHINE_TYPE_NAME.fullmatch(mt)
            hint = f"; write {example.replace('e2-small', mt)}" if bare else f", e.g. {example}"
            yield self.err(
                "machineType",
                f"'{mt}' is not a machine type URL (zones/ZONE/machineTypes/TYPE){hint}",
            )
            return
        if isinstance(zone, str) and m.group("zone") != zone:
            yield self.err(
                "machineType",
                f"names zone {m.group('zone')} but the instance is in zone {zone}; they must match",
            )
        if not MACHINE_TYPE_NAME.fullmatch(m.group("type")):
            yield self.err(
                "machineType",
                f"'{m.group('type')}' is not a machine type name: FAMILY-SHAPE like e2-small, "
                "n2-standard-2 or e2-custom-2-4096",
            )

    def nic_region(self, i: int, nic: dict, zone: Any, region: str | None) -> Iterator[Finding]:
        sub = follow(nic.get("subnetwork"), self.outputs)
        m = REFERENCE.fullmatch(sub.strip()) if isinstance(sub, str) else None
        if m and region and m.group(1) in self.by_name:
            subnet = self.by_name[m.group(1)]
            sub_region = (subnet.get("properties") or {}).get("region")
            if _known(sub_region) and sub_region != region:
                yield self.err(
                    "zone",
                    f"zone {zone} is in region {region}, but networkInterfaces[{i}] uses subnet "
                    f"'{m.group(1)}' in {sub_region}: pick a zone of {sub_region} (e.g. "
                    f"{sub_region}-a) or a subnet in {region}",
                )
        elif _known(sub) and region:
            sm = re.search(r"regions/([^/]+)/subnetworks/", sub)
            if sm and sm.group(1) != region:
                yield self.err(
                    f"networkInterfaces[{i}].subnetwork",
                    f"zone {zone} is in region {region}, but the subnet URL is in {sm.group(1)}",
                )
        for j, ac in enumerate(nic.get("accessConfigs") or []):
            if not isinstance(ac, dict):
                continue
            nat = follow(ac.get("natIP"), self.outputs)
            am = REFERENCE.fullmatch(nat.strip()) if isinstance(nat, str) else None
            if am and region and am.group(1) in self.by_name:
                address = self.by_name[am.group(1)]
                a_region = (address.get("properties") or {}).get("region")
                if compute_v1_type(address.get("type", "")) == "compute.v1.globalAddress":
                    yield self.err(
                        f"networkInterfaces[{i}].accessConfigs[{j}].natIP",
                        f"'{am.group(1)}' is a global address; a VM's NAT IP must be a regional "
                        f"compute.v1.address in {region}",
                    )
                elif _known(a_region) and a_region != region:
                    yield self.err(
                        f"networkInterfaces[{i}].accessConfigs[{j}].natIP",
                        f"address '{am.group(1)}' is in region {a_region}, the VM in {region}: a "
                        "static external IP must be in the VM's region",
                    )

    # -- address ----------------------------------------------------------------------------

    def address(self) -> Iterator[Finding]:
        region = self.props.get("region")
        if _known(region) and not REGION.match(region):
            yield self.err("region", f"'{region}' is not a region name like us-central1")


def _overlapping_subnets(resources: list[dict], origins: dict[str, str]) -> list[Finding]:
    """Subnets of one VPC must not overlap (GCP refuses the second one)."""
    seen: list[tuple[str, str, str, ipaddress._BaseNetwork]] = []
    findings = []
    for res in resources:
        if compute_v1_type(res.get("type", "")) != "compute.v1.subnetwork":
            continue
        p = res.get("properties") or {}
        network = str(p.get("network"))
        ranges = [("ipCidrRange", p.get("ipCidrRange"))]
        ranges += [
            (f"secondaryIpRanges[{i}].ipCidrRange", s.get("ipCidrRange"))
            for i, s in enumerate(p.get("secondaryIpRanges") or [])
            if isinstance(s, dict)
        ]
        for field, value in ranges:
            if not _known(value):
                continue
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                continue
            for other_name, other_field, other_net_id, other in seen:
                if other_net_id == network and other.version == net.version and net.overlaps(other):
                    findings.append(
                        Finding(
                            origins.get(res["name"], "?"),
                            res["name"],
                            field,
                            f"{net} overlaps {other} ({other_name}.{other_field}) in the same "
                            "VPC; subnet ranges of one network must be disjoint",
                        )
                    )
            seen.append((res["name"], field, network, net))
    return findings
