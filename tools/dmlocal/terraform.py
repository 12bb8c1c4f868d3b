"""Translates the expanded Deployment Manager stack into Terraform JSON for Infrastructure Manager.

Deployment Manager reached end of support on 2026-03-31; Infrastructure Manager (managed
Terraform) replaces it. This module is the way off DM that keeps every running resource: it
reads the same expansion `make preview` shows and writes a Terraform root module describing the
SAME Compute Engine resources, with the SAME names, so Terraform adopts what DM created instead
of recreating it (docs/migration.md is the runbook).

  main.tf.json     provider pin, `project` variable, one resource per DM leaf resource (Terraform
                   resource label == GCE name), and the deployment's outputs;
  imports.tf.json  one `import` block per resource, only with --project (see below).

Design choices, and why:
  * JSON, not HCL: generated from Python with no templating; Terraform reads *.tf.json natively.
  * Strict: every DM property of a supported type is either translated or refused. A property
    silently dropped would be a resource Terraform "adopts" and then changes; so a template
    change this module does not understand fails `make terraform` instead, naming the file, the
    resource and the property.
  * Import IDs are literal strings. Infrastructure Manager runs Terraform 1.5.7 at the newest,
    and only Terraform 1.6 lets an import block's `id` refer to a variable
    (hashicorp/terraform#33618). So the project is baked in at generation time, and the
    `project` variable then refuses any other value: importing project A's resources while
    planning against project B would make Terraform replace them.
  * Every string in Terraform JSON is a template: literal `${` and `%{` (the startup script is
    full of `${...}`) are escaped as `$${` and `%%{`, so the VM receives byte-identical metadata.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from dmlocal.errors import ConfigError
from dmlocal.expand import Expansion, default_env, expand_path
from dmlocal.references import REFERENCE, last_segment, template_outputs

# Exact pin: a provider upgrade is a reviewed change, never a side effect of a redeploy. 6.50.0
# (the last 6.x) because it is the newest release whose schema tests/test_terraform.py can check
# these arguments against offline; moving to 7.x after the adoption is a separate, planned change.
GOOGLE_PROVIDER_VERSION = "6.50.0"
# The Terraform versions Infrastructure Manager runs -> the date its support ends (None: none
# announced), from the "Supported Terraform versions" table of
# https://cloud.google.com/infrastructure-manager/docs/terraform (read 2026-12-01): 1.2.3 was
# deprecated on 2026-01-08 and unsupported from 2026-02-08 (deployments move to 1.5.7); 1.3.10,
# 1.4.7 and 1.5.7 are available since 2024-03-14. Without a constraint it runs the newest; an
# update may move a deployment to a newer version, never to an older one.
INFRA_MANAGER_TERRAFORM = {"1.2.3": "2026-02-08", "1.3.10": None, "1.4.7": None, "1.5.7": None}
# Import blocks need Terraform 1.5, and 1.5.7 is the newest Infrastructure Manager runs: the
# module pins that line, as the provider is pinned, so a core upgrade is a reviewed change.
# scripts/lib/infra-manager.sh passes --tf-version-constraint==1.5.7, which it accepts.
TERRAFORM_REQUIRED_VERSION = "~> 1.5.7"
VERSION_CONSTRAINT = re.compile(r"^\s*(=|!=|>=|<=|>|<|~>)?\s*v?(\d+(?:\.\d+){0,2})\s*$")


def satisfies(version: str, constraint: str) -> bool:
    """Whether Terraform `version` meets a version constraint string, as Terraform reads it
    (https://developer.hashicorp.com/terraform/language/expressions/version-constraints): a
    comma-separated list of `=`, `!=`, `>`, `>=`, `<`, `<=` or `~>` (only the rightmost part
    may grow) and a version; each must hold. Raises ValueError for a malformed one."""
    have = tuple(int(part) for part in version.split("."))
    for part in constraint.split(","):
        match = VERSION_CONSTRAINT.match(part)
        if not match:
            raise ValueError(f"Malformed constraint: {part.strip()!r}")
        operator = match.group(1) or "="
        given = tuple(int(piece) for piece in match.group(2).split("."))
        want = given + (0,) * (3 - len(given))
        held = {
            "=": have == want,
            "!=": have != want,
            ">": have > want,
            ">=": have >= want,
            "<": have < want,
            "<=": have <= want,
            "~>": have >= want
            and have[: max(len(given) - 1, 1)] == given[: max(len(given) - 1, 1)],
        }[operator]
        if not held:
            return False
    return True


TF_TYPES = {
    "compute.v1.network": "google_compute_network",
    "compute.v1.subnetwork": "google_compute_subnetwork",
    "compute.v1.firewall": "google_compute_firewall",
    "compute.v1.address": "google_compute_address",
    "compute.v1.instance": "google_compute_instance",
    "gcp-types/monitoring-v3:projects.uptimeCheckConfigs": "google_monitoring_uptime_check_config",
    "gcp-types/monitoring-v3:projects.notificationChannels": (
        "google_monitoring_notification_channel"
    ),
    "gcp-types/monitoring-v3:projects.alertPolicies": "google_monitoring_alert_policy",
}
# Cloud Monitoring names these objects itself (projects/P/alertPolicies/ID): no import ID can be
# written before they exist, so they are created, never adopted (docs/migration.md).
SERVER_NAMED = {tf for dm, tf in TF_TYPES.items() if dm.startswith("gcp-types/monitoring-v3:")}
# The property holding `projects/PROJECT` for each Monitoring create call's URL.
PROJECT_PATH = {
    "uptimeCheckConfigs": "parent",
    "notificationChannels": "name",
    "alertPolicies": "name",
}

# Monitoring v3 field -> google provider argument; a (argument, fields) pair is a nested block
# (a list of blocks for a list), a plain name a value or a map. Anything else is refused.
UPTIME_CHECK = {
    "displayName": "display_name",
    "period": "period",
    "timeout": "timeout",
    "selectedRegions": "selected_regions",
    "userLabels": "user_labels",
    "checkerType": "checker_type",
    "monitoredResource": ("monitored_resource", {"type": "type", "labels": "labels"}),
    "contentMatchers": ("content_matchers", {"content": "content", "matcher": "matcher"}),
    "httpCheck": (
        "http_check",
        {
            "path": "path",
            "port": "port",
            "useSsl": "use_ssl",
            "validateSsl": "validate_ssl",
            "requestMethod": "request_method",
            "maskHeaders": "mask_headers",
            "headers": "headers",
        },
    ),
}
# The Monitoring fields above that are lists of blocks rather than one block.
REPEATED_BLOCKS = {"contentMatchers", "conditions", "aggregations"}
NOTIFICATION_CHANNEL = {
    "displayName": "display_name",
    "description": "description",
    "type": "type",
    "labels": "labels",
    "userLabels": "user_labels",
    "enabled": "enabled",
}
ALERT_POLICY = {
    "displayName": "display_name",
    "combiner": "combiner",
    "enabled": "enabled",
    "severity": "severity",
    "userLabels": "user_labels",
    "notificationChannels": "notification_channels",
    "documentation": (
        "documentation",
        {"content": "content", "mimeType": "mime_type", "subject": "subject"},
    ),
    "conditions": (
        "conditions",
        {
            "displayName": "display_name",
            "conditionThreshold": (
                "condition_threshold",
                {
                    "filter": "filter",
                    "comparison": "comparison",
                    "thresholdValue": "threshold_value",
                    "duration": "duration",
                    "trigger": ("trigger", {"count": "count", "percent": "percent"}),
                    "aggregations": (
                        "aggregations",
                        {
                            "alignmentPeriod": "alignment_period",
                            "perSeriesAligner": "per_series_aligner",
                            "crossSeriesReducer": "cross_series_reducer",
                            "groupByFields": "group_by_fields",
                        },
                    ),
                },
            ),
        },
    ),
}

# DM reference field -> the google provider attribute holding the same value.
TF_ATTRIBUTES = {
    "selfLink": "self_link",
    "name": "name",
    "address": "address",
    "ipCidrRange": "ip_cidr_range",
    "gatewayAddress": "gateway_address",
}

_TEMPLATE_OPENERS = re.compile(r"([$%])\{")

MONITORING_FIELDS = {
    "uptimeCheckConfigs": UPTIME_CHECK,
    "notificationChannels": NOTIFICATION_CHANNEL,
    "alertPolicies": ALERT_POLICY,
}


class _Translator:
    def __init__(self, expansion: Expansion):
        self.expansion = expansion
        self.leaves = {r["name"]: r for r in expansion.resources}
        self.template_outputs = template_outputs(expansion.layout)

    # -- values ----------------------------------------------------------------------------

    def value(self, value: Any, name: str, field: str) -> Any:
        """A DM property value as Terraform JSON: references become ${...}, the rest escaped."""
        if isinstance(value, str):
            return self._string(value, name, field)
        if isinstance(value, list):
            return [self.value(v, name, f"{field}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.value(v, name, f"{field}.{k}") for k, v in value.items()}
        return value

    def _string(self, text: str, name: str, field: str) -> str:
        parts: list[str] = []
        position = 0
        for match in REFERENCE.finditer(text):
            parts.append(_escape(text[position : match.start()]))
            parts.append("${" + self.reference(match.group(1), match.group(2), name, field) + "}")
            position = match.end()
        parts.append(_escape(text[position:]))
        return "".join(parts)

    def reference(self, target: str, ref_field: str, name: str, field: str, seen=()) -> str:
        """`$(ref.TARGET.FIELD)` as a Terraform expression (no ${}), through template outputs."""
        where = f"resources[{name}].{field}" if name else f"outputs[{field}]"
        outputs = self.template_outputs.get(target, {})
        output = ref_field.split(".")[0]
        # A name can be both a template and one of its leaves (hello-vm): a field the leaf
        # cannot provide but the template outputs (publicIp) is the template's output.
        via_template = output in outputs and (
            target not in self.leaves or ref_field not in TF_ATTRIBUTES
        )
        if target in self.leaves and not via_template:
            leaf = self.leaves[target]
            attribute = TF_ATTRIBUTES.get(ref_field)
            if leaf["type"] not in TF_TYPES or attribute is None:
                raise ConfigError(
                    self._origin(name),
                    where,
                    f"$(ref.{target}.{ref_field}) has no Terraform translation here; "
                    f"translatable fields: {', '.join(TF_ATTRIBUTES)}",
                )
            return f"{TF_TYPES[leaf['type']]}.{target}.{attribute}"
        if not via_template or target in seen:
            raise ConfigError(
                self._origin(name), where, f"$(ref.{target}.{ref_field}) cannot be resolved"
            )
        inner = REFERENCE.fullmatch(outputs[output]) if isinstance(outputs[output], str) else None
        if inner is None:
            raise ConfigError(
                self._origin(name),
                where,
                f"$(ref.{target}.{ref_field}): output '{output}' is not a single reference",
            )
        return self.reference(inner.group(1), inner.group(2), name, field, (*seen, target))

    def _origin(self, name: str) -> str:
        return self.expansion.origins.get(name, self.expansion.config_file)

    def refuse(self, name: str, field: str, message: str) -> ConfigError:
        return ConfigError(self._origin(name), f"resources[{name}].{field}", message)

    def take(self, name: str, properties: dict, known: dict[str, str | None]) -> dict:
        """Maps DM property names to Terraform argument names; refuses anything unmapped.

        `known[dm_key] is None` marks keys the caller handles itself (nested blocks).
        """
        unknown = sorted(set(properties) - set(known))
        if unknown:
            raise self.refuse(
                name,
                f"properties.{unknown[0]}",
                f"'{unknown[0]}' has no Terraform translation in dmlocal/terraform.py, so the "
                "Terraform resource would not match what DM created; add its mapping (google "
                "provider argument) there first. Translated: " + ", ".join(sorted(known)),
            )
        return {
            tf: self.value(properties[dm], name, f"properties.{dm}")
            for dm, tf in known.items()
            if tf is not None and dm in properties
        }

    # -- resources -------------------------------------------------------------------------

    def resource(self, leaf: dict) -> dict:
        name, type_ = leaf["name"], leaf["type"]
        if type_ not in TF_TYPES:
            raise ConfigError(
                self._origin(name),
                f"resources[{name}].type",
                f"'{type_}' has no Terraform translation; supported types: "
                f"{', '.join(TF_TYPES)}. Translate it by hand or extend dmlocal/terraform.py.",
            )
        properties = dict(leaf.get("properties") or {})
        if TF_TYPES[type_] in SERVER_NAMED:
            return self._monitoring(name, type_, properties)
        gce_name = properties.pop("name", name)
        if gce_name != name:
            raise self.refuse(
                name, "properties.name", "a GCE name different from the DM name is not supported"
            )
        if "dependsOn" in (leaf.get("metadata") or {}):
            raise self.refuse(name, "metadata.dependsOn", "explicit dependsOn is not translated")
        body = getattr(self, "_" + type_.rsplit(".", 1)[1])(name, properties)
        return {"name": name, **body}

    def _network(self, name: str, p: dict) -> dict:
        body = self.take(
            name,
            p,
            {
                "description": "description",
                "autoCreateSubnetworks": "auto_create_subnetworks",
                "mtu": "mtu",
                "routingConfig": None,
            },
        )
        routing = dict(p.get("routingConfig") or {})
        if routing:
            mode = routing.pop("routingMode", None)
            if routing:
                raise self.refuse(name, "properties.routingConfig", f"untranslated: {routing}")
            body["routing_mode"] = mode
        return body

    def _subnetwork(self, name: str, p: dict) -> dict:
        body = self.take(
            name,
            p,
            {
                "description": "description",
                "network": "network",
                "region": "region",
                "ipCidrRange": "ip_cidr_range",
                "privateIpGoogleAccess": "private_ip_google_access",
                "logConfig": None,
            },
        )
        log = dict(p.get("logConfig") or {})
        # The provider turns VPC Flow Logs on by the block's presence; it has no `enable`.
        if log.pop("enable", False):
            body["log_config"] = [
                self._block(
                    name,
                    log,
                    "properties.logConfig",
                    {
                        "aggregationInterval": "aggregation_interval",
                        "flowSampling": "flow_sampling",
                        "metadata": "metadata",
                    },
                )
            ]
        return body

    def _firewall(self, name: str, p: dict) -> dict:
        body = self.take(
            name,
            p,
            {
                "description": "description",
                "network": "network",
                "direction": "direction",
                "priority": "priority",
                "sourceRanges": "source_ranges",
                "destinationRanges": "destination_ranges",
                "sourceTags": "source_tags",
                "targetTags": "target_tags",
                "disabled": "disabled",
                "allowed": None,
                "denied": None,
            },
        )
        for dm_key, block in (("allowed", "allow"), ("denied", "deny")):
            if dm_key in p:
                body[block] = [
                    self._firewall_rule(name, rule, f"properties.{dm_key}[{i}]")
                    for i, rule in enumerate(p[dm_key])
                ]
        return body

    def _firewall_rule(self, name: str, rule: dict, field: str) -> dict:
        unknown = set(rule) - {"IPProtocol", "ports"}
        if unknown:
            raise self.refuse(name, field, f"untranslated keys: {', '.join(sorted(unknown))}")
        block = {"protocol": rule["IPProtocol"]}
        if "ports" in rule:
            block["ports"] = [str(port) for port in rule["ports"]]
        return block

    def _address(self, name: str, p: dict) -> dict:
        return self.take(
            name,
            p,
            {
                "description": "description",
                "region": "region",
                "address": "address",
                "addressType": "address_type",
                "networkTier": "network_tier",
                "labels": "labels",
            },
        )

    def _instance(self, name: str, p: dict) -> dict:
        body = self.take(
            name,
            p,
            {
                "description": "description",
                "zone": "zone",
                "deletionProtection": "deletion_protection",
                "labels": "labels",
                "canIpForward": "can_ip_forward",
                "machineType": None,
                "tags": None,
                "disks": None,
                "networkInterfaces": None,
                "serviceAccounts": None,
                "shieldedInstanceConfig": None,
                "scheduling": None,
                "metadata": None,
            },
        )
        zone = p["zone"]
        body["machine_type"] = _last_segment(p["machineType"], f"zones/{zone}/machineTypes/")
        if "tags" in p:
            body["tags"] = self.value(p["tags"].get("items", []), name, "properties.tags.items")
        body["boot_disk"] = [self._boot_disk(name, p.get("disks") or [], zone)]
        body["network_interface"] = [
            self._network_interface(name, nic, f"properties.networkInterfaces[{i}]")
            for i, nic in enumerate(p.get("networkInterfaces") or [])
        ]
        accounts = p.get("serviceAccounts") or []
        # An empty list means "no service account"; omitting the block gives exactly that.
        if accounts:
            body["service_account"] = [
                {"email": account["email"], "scopes": list(account.get("scopes", []))}
                for account in accounts
            ]
        shielded = p.get("shieldedInstanceConfig")
        if shielded is not None:
            body["shielded_instance_config"] = [
                self._block(
                    name,
                    shielded,
                    "properties.shieldedInstanceConfig",
                    {
                        "enableSecureBoot": "enable_secure_boot",
                        "enableVtpm": "enable_vtpm",
                        "enableIntegrityMonitoring": "enable_integrity_monitoring",
                    },
                )
            ]
        scheduling = p.get("scheduling")
        if scheduling is not None:
            body["scheduling"] = [
                self._block(
                    name,
                    scheduling,
                    "properties.scheduling",
                    {
                        "automaticRestart": "automatic_restart",
                        "onHostMaintenance": "on_host_maintenance",
                        "preemptible": "preemptible",
                    },
                )
            ]
        if "metadata" in p:
            body["metadata"] = self._metadata(name, p["metadata"])
        # Explicitly false: the provider then refuses a change that needs the VM stopped
        # (machine_type, service_account, ...) instead of stopping the one VM the service runs
        # on in the middle of an apply. Such a change is planned downtime, done by hand as
        # with Deployment Manager (docs/deploy.md), and `dmlocal changes` names it beforehand.
        body["allow_stopping_for_update"] = False
        return body

    def _monitoring(self, name: str, type_: str, p: dict) -> dict:
        """A Cloud Monitoring object: DM's `projects/PROJECT` URL property becomes the
        provider's project (var.project), and so does that project in the object's labels."""
        kind = type_.rsplit(".", 1)[1]
        path = PROJECT_PATH[kind]
        url = p.pop(path, None)
        if not isinstance(url, str) or not re.fullmatch(r"projects/[^/]+", url):
            raise self.refuse(
                name, f"properties.{path}", "must be projects/PROJECT (the deployment's project)"
            )
        project = url.split("/", 1)[1]
        body = self._tree(name, p, "properties", MONITORING_FIELDS[kind])
        for block in body.get("monitored_resource", []):
            if block.get("labels", {}).get("project_id") == project:
                block["labels"]["project_id"] = "${var.project}"
        return body

    def _tree(self, name: str, value: dict, field: str, spec: dict) -> dict:
        """Monitoring fields as provider arguments, by `spec` (see UPTIME_CHECK)."""
        body: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{field}.{key}"
            if key not in spec:
                raise self.refuse(
                    name,
                    where,
                    "has no Terraform translation in dmlocal/terraform.py; translated: "
                    + ", ".join(sorted(spec)),
                )
            target = spec[key]
            if isinstance(target, str):
                body[target] = self.value(item, name, where)
            elif isinstance(item, list):
                body[target[0]] = [
                    self._tree(name, v, f"{where}[{i}]", target[1]) for i, v in enumerate(item)
                ]
            else:
                body[target[0]] = [self._tree(name, item, where, target[1])]
        return body

    def _block(self, name: str, value: dict, field: str, known: dict[str, str]) -> dict:
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise self.refuse(name, f"{field}.{unknown[0]}", "has no Terraform translation")
        return {known[k]: self.value(v, name, f"{field}.{k}") for k, v in value.items()}

    def _boot_disk(self, name: str, disks: list[dict], zone: str) -> dict:
        if len(disks) != 1 or not disks[0].get("boot"):
            raise self.refuse(
                name, "properties.disks", "exactly one disk, the boot disk, is translated"
            )
        disk = dict(disks[0])
        field = "properties.disks[0]"
        if disk.pop("type", "PERSISTENT") != "PERSISTENT":
            raise self.refuse(name, f"{field}.type", "only PERSISTENT boot disks are translated")
        disk.pop("boot")
        params = dict(disk.pop("initializeParams", {}))
        block = self._block(
            name, disk, field, {"deviceName": "device_name", "autoDelete": "auto_delete"}
        )
        initialize: dict[str, Any] = {}
        if "sourceImage" in params:
            initialize["image"] = self.value(params.pop("sourceImage"), name, field)
        if "diskSizeGb" in params:
            initialize["size"] = int(params.pop("diskSizeGb"))
        if "diskType" in params:
            # The provider takes the disk type's name (pd-balanced), DM its zonal URL.
            initialize["type"] = _last_segment(params.pop("diskType"), f"zones/{zone}/diskTypes/")
        if params:
            raise self.refuse(name, f"{field}.initializeParams", f"untranslated: {sorted(params)}")
        block["initialize_params"] = [initialize]
        return block

    def _network_interface(self, name: str, nic: dict, field: str) -> dict:
        nic = dict(nic)
        configs = nic.pop("accessConfigs", [])
        block = self._block(
            name,
            nic,
            field,
            {"network": "network", "subnetwork": "subnetwork", "networkIP": "network_ip"},
        )
        block["access_config"] = []
        for i, config in enumerate(configs):
            config = dict(config)
            where = f"{field}.accessConfigs[{i}]"
            # ONE_TO_ONE_NAT is the only type the provider's access_config creates, and it has
            # no `name` argument: GCE's default name is "External NAT", the name DM gave it.
            if config.pop("type", "ONE_TO_ONE_NAT") != "ONE_TO_ONE_NAT":
                raise self.refuse(name, f"{where}.type", "only ONE_TO_ONE_NAT is translated")
            if config.pop("name", "External NAT") != "External NAT":
                raise self.refuse(name, f"{where}.name", "only the name 'External NAT' is kept")
            block["access_config"].append(
                self._block(name, config, where, {"natIP": "nat_ip", "networkTier": "network_tier"})
            )
        return block

    def _metadata(self, name: str, metadata: dict) -> dict[str, str]:
        if set(metadata) - {"items"}:
            raise self.refuse(name, "properties.metadata", "only `items` is translated")
        # `startup-script` stays an ordinary metadata key rather than metadata_startup_script:
        # that argument forces a recreate on every change and is not set on import, so the
        # adopted VM would be replaced; as a key, GCE runs it on every boot exactly as under DM.
        result: dict[str, str] = {}
        for i, item in enumerate(metadata.get("items") or []):
            key = item["key"]
            if key in result:
                raise self.refuse(name, f"properties.metadata.items[{i}]", f"duplicate '{key}'")
            result[key] = self.value(item["value"], name, f"properties.metadata.items[{i}]")
        return result


def _escape(text: str) -> str:
    """Literal text inside a Terraform JSON string: `${` -> `$${`, `%{` -> `%%{`."""
    return _TEMPLATE_OPENERS.sub(lambda m: m.group(1) * 2 + "{", text)


def _last_segment(value: str, prefix: str) -> str:
    return value[len(prefix) :] if value.startswith(prefix) else last_segment(value)


def import_id(tf_type: str, body: dict, project: str) -> str:
    """The import ID in the `projects/...` format the google provider documents for each type."""
    name = body["name"]
    if tf_type in ("google_compute_network", "google_compute_firewall"):
        kind = "networks" if tf_type == "google_compute_network" else "firewalls"
        return f"projects/{project}/global/{kind}/{name}"
    if tf_type in ("google_compute_subnetwork", "google_compute_address"):
        kind = "subnetworks" if tf_type == "google_compute_subnetwork" else "addresses"
        return f"projects/{project}/regions/{body['region']}/{kind}/{name}"
    if tf_type == "google_compute_instance":
        return f"projects/{project}/zones/{body['zone']}/instances/{name}"
    raise ValueError(tf_type)


def to_terraform(expansion: Expansion, project: str | None = None) -> dict[str, dict]:
    """The Terraform root module as {file name: JSON document}."""
    translator = _Translator(expansion)
    resources: dict[str, dict[str, dict]] = {}
    imports: list[dict] = []
    for leaf in expansion.resources:
        body = translator.resource(leaf)
        tf_type = TF_TYPES[leaf["type"]]
        resources.setdefault(tf_type, {})[leaf["name"]] = body
        if project is not None and tf_type not in SERVER_NAMED:
            imports.append(
                {"to": f"{tf_type}.{leaf['name']}", "id": import_id(tf_type, body, project)}
            )

    variable: dict[str, Any] = {
        "type": "string",
        "description": "The Google Cloud project the stack lives in.",
    }
    if project is not None:
        variable["default"] = project
        variable["validation"] = [
            {
                "condition": "${var.project == " + json.dumps(project) + "}",
                "error_message": (
                    f"The import blocks adopt the resources of project {project}; regenerate "
                    "with `dmlocal terraform --project OTHER` for another project."
                ),
            }
        ]
    main = {
        "//": "Generated by `dmlocal terraform` from the Deployment Manager config.",
        "terraform": {
            "required_version": TERRAFORM_REQUIRED_VERSION,
            "required_providers": {
                "google": {"source": "hashicorp/google", "version": GOOGLE_PROVIDER_VERSION}
            },
        },
        "provider": {"google": {"project": "${var.project}"}},
        "variable": {"project": variable},
        "resource": resources,
    }
    outputs = {
        output["name"]: {"value": translator.value(output["value"], "", output["name"])}
        for output in expansion.outputs
    }
    if outputs:
        main["output"] = outputs
    files = {"main.tf.json": main}
    if imports:
        files["imports.tf.json"] = {"import": imports}
    return files


def write_terraform(expansion: Expansion, out_dir: str | Path, project: str | None) -> list[Path]:
    """Writes the module into `out_dir`, replacing earlier generated *.tf.json files there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = to_terraform(expansion, project)
    for stale in out.glob("*.tf.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for file_name, document in files.items():
        path = out / file_name
        path.write_text(json.dumps(document, indent=2) + "\n")
        written.append(path)
    return written


def add_command(commands: argparse._SubParsersAction) -> None:
    """Registers `dmlocal terraform [CONFIG] --out DIR [--project P]`."""
    command = commands.add_parser(
        "terraform", help="write the expanded stack as Terraform JSON for Infrastructure Manager"
    )
    command.add_argument("config", nargs="?", default="deployment.yaml")
    command.add_argument("--out", required=True, help="directory for main.tf.json")
    command.add_argument(
        "--project",
        help="the project DM deployed into: also writes imports.tf.json, whose import blocks "
        "adopt the existing resources (Terraform 1.5 cannot take import IDs from a variable)",
    )
    command.add_argument("--deployment", default="hello", help="context.env['deployment']")
    command.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    env = default_env(args.deployment, args.project or "local-project")
    written = write_terraform(expand_path(args.config, env), args.out, args.project)
    for path in written:
        print(path)
    if args.project is None:
        print(
            "note: no --project, so no import blocks: a plan would show the existing resources "
            "as creates (Infrastructure Manager's --import-existing-resources only adopts them "
            "when a create hits a conflict). To migrate, pass --project (docs/migration.md).",
            file=sys.stderr,
        )
    return 0
