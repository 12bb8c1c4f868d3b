"""Cloud Monitoring's rules in the emulated cloud: uptime checks, notification channels, alerts.

Both engines create these objects through the emulated cloud (emulators/deploymentmanager/
cloud.py hands every `gcp-types/monitoring-v3:` type to this module), so a body Monitoring would
refuse fails here with Monitoring's reason, whichever engine sent it. What is checked, each rule
from the Monitoring v3 reference (https://cloud.google.com/monitoring/api/ref_v3/rest/v3/) or the
uptime-check guide (https://cloud.google.com/monitoring/uptime-checks/):

  * every body against the Monitoring v3 discovery document (unknown fields, enum values,
    JSON types), the check `make preview` runs (dmlocal/compute_api.py);
  * UptimeCheckConfig: `displayName` and `timeout` are required, the timeout between 1 and 60
    seconds; `period` one of 60s, 300s, 600s, 900s; exactly one of monitoredResource,
    resourceGroup, syntheticMonitor and at most one of httpCheck, tcpCheck (union fields);
    `selectedRegions`, when given, must add up to at least three checker locations (USA has
    three, EUROPE, SOUTH_AMERICA and ASIA_PACIFIC one each); only the first content matcher is
    used, so more than one is refused; an `uptime_url` needs its `host` label;
  * NotificationChannel: `type` is required, and an email channel needs `labels.email_address`;
  * AlertPolicy: `displayName` is required, one to six conditions, `combiner` required with more
    than one, and every `notificationChannels` entry must be an existing channel of the project;
  * deleting a notification channel an alert policy still uses fails (the `force` parameter is
    false unless set: "this operation will fail if the notification channel is referenced by
    existing alerting policies");
  * names are the server's: `projects/PROJECT/<collection>/<id>`, kept across updates.

Emulator choices (not verified against Google): error messages are written here, in the shape
of Monitoring's INVALID_ARGUMENT; object IDs are decimal counters.
"""

from __future__ import annotations

import re

from dmlocal.compute_api import check_resource

PROVIDER = "gcp-types/monitoring-v3:projects."
UPTIME_CHECK = PROVIDER + "uptimeCheckConfigs"
CHANNEL = PROVIDER + "notificationChannels"
POLICY = PROVIDER + "alertPolicies"
TYPES = (UPTIME_CHECK, CHANNEL, POLICY)
# The property DM reads the create URL's `projects/PROJECT` from; not part of the object.
PROJECT_PATH = {UPTIME_CHECK: "parent", CHANNEL: "name", POLICY: "name"}
PERIODS = {"60s", "300s", "600s", "900s"}
REGION_LOCATIONS = {"USA": 3, "EUROPE": 1, "SOUTH_AMERICA": 1, "ASIA_PACIFIC": 1}
MAX_CONDITIONS = 6
DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


class Refused(Exception):
    """Monitoring's 400 for a body it will not store."""


def _seconds(value) -> float | None:
    match = DURATION.match(value) if isinstance(value, str) else None
    return float(match.group(1)) if match else None


def _uptime_check(body: dict) -> list[str]:
    problems = []
    if not body.get("displayName"):
        problems.append("displayName is required")
    timeout = _seconds(body.get("timeout"))
    if timeout is None or not 1 <= timeout <= 60:
        problems.append(f"timeout must be between 1s and 60s, got {body.get('timeout')!r}")
    if body.get("period", "60s") not in PERIODS:
        problems.append(f"period must be one of {', '.join(sorted(PERIODS))}")
    targets = [k for k in ("monitoredResource", "resourceGroup", "syntheticMonitor") if k in body]
    if len(targets) != 1:
        problems.append(
            "exactly one of monitoredResource, resourceGroup, syntheticMonitor is required"
        )
    if "httpCheck" in body and "tcpCheck" in body:
        problems.append("httpCheck and tcpCheck are a union: set one")
    regions = body.get("selectedRegions")
    if regions and sum(REGION_LOCATIONS.get(r, 0) for r in set(regions)) < 3:
        problems.append(
            f"selectedRegions {regions} give fewer than 3 checker locations (USA counts 3, "
            "every other region 1)"
        )
    if len(body.get("contentMatchers") or []) > 1:
        problems.append("only one content matcher is supported")
    resource = body.get("monitoredResource") or {}
    if resource.get("type") == "uptime_url" and not (resource.get("labels") or {}).get("host"):
        problems.append("monitoredResource of type uptime_url needs labels.host")
    return problems


def _channel(body: dict) -> list[str]:
    if not body.get("type"):
        return ["type is required"]
    if body["type"] == "email" and not (body.get("labels") or {}).get("email_address"):
        return ["an email channel needs labels.email_address"]
    return []


def _policy(body: dict, objects: dict[str, dict[str, dict]]) -> list[str]:
    problems = []
    if not body.get("displayName"):
        problems.append("displayName is required")
    conditions = body.get("conditions") or []
    if not 1 <= len(conditions) <= MAX_CONDITIONS:
        problems.append(f"an alert policy has 1 to {MAX_CONDITIONS} conditions")
    if len(conditions) > 1 and body.get("combiner", "COMBINE_UNSPECIFIED") == "COMBINE_UNSPECIFIED":
        problems.append("combiner is required with more than one condition")
    channels = {c["name"] for c in objects.get(CHANNEL, {}).values()}
    for channel in body.get("notificationChannels") or []:
        if channel not in channels:
            problems.append(f"notification channel {channel!r} does not exist")
    return problems


def body_of(type_: str, properties: dict) -> dict:
    """The object Monitoring stores: the properties without the URL's project."""
    return {k: v for k, v in properties.items() if k != PROJECT_PATH[type_]}


def check(type_: str, properties: dict, objects: dict[str, dict[str, dict]]) -> None:
    """Raises Refused when Monitoring would answer 400 to this create or update.

    `objects` is the project's emulated cloud (type -> name -> object), for references.
    """
    findings = check_resource({"name": "-", "type": type_, "properties": properties}, "-")
    problems = [f"{f.path}: {f.message}" for f in findings if f.severity == "error"]
    body = body_of(type_, properties)
    if type_ == UPTIME_CHECK:
        problems += _uptime_check(body)
    elif type_ == CHANNEL:
        problems += _channel(body)
    else:
        problems += _policy(body, objects)
    if problems:
        raise Refused("; ".join(problems))


def stored(project: str, type_: str, properties: dict, existing: dict | None, new_id) -> dict:
    """The object as Monitoring holds it: the body under a server-assigned name."""
    collection = type_[len(PROVIDER) :]
    name = existing["name"] if existing else f"projects/{project}/{collection}/{new_id()}"
    actual = {**body_of(type_, properties), "name": name}
    if type_ == CHANNEL and actual.get("type") == "email":
        actual.setdefault("verificationStatus", "VERIFICATION_STATUS_UNSPECIFIED")
    return actual


def check_delete(type_: str, actual: dict, objects: dict[str, dict[str, dict]]) -> None:
    """Raises Refused when Monitoring would refuse to delete `actual`."""
    if type_ != CHANNEL:
        return
    users = [
        policy.get("displayName", policy["name"])
        for policy in objects.get(POLICY, {}).values()
        if actual["name"] in (policy.get("notificationChannels") or [])
    ]
    if users:
        raise Refused(
            f"notification channel {actual['name']} is used by alert policies {users}; delete "
            "them first or pass force=true"
        )
