"""What Infrastructure Manager's Terraform run does, for the Infrastructure Manager emulator.

Test infrastructure, standing in for `terraform init/plan/apply` with the google provider, which
cannot be downloaded here. It reads what `dmlocal terraform` writes (Terraform JSON) and is as
strict as the parts of Terraform it replaces that this stack uses:

  * configuration: only `*.tf.json` files (an HCL `*.tf` file is refused, not skipped); the
    top-level blocks Terraform 1.5 knows; `required_providers.google` must pin the version whose
    schema is checked; every resource's arguments are checked against that schema
    (dmlocal/provider_schema.py, the same check tests/tooling/test_terraform.py runs);
  * variables: an input value for an undeclared variable, or a declared one with neither value
    nor default, is an error, and `validation` conditions of the form `var.NAME == "literal"`
    are evaluated (any other expression is refused as "not evaluated by the emulator");
  * expressions: `${TYPE.LABEL.ATTR}` references and `${var.NAME}`; `$${` and `%%{` are escapes
    for a literal `${` and `%{`, so the instance's metadata arrives byte for byte;
  * import blocks adopt the object their `id` names (Terraform: "Cannot import non-existent
    remote object" when it is missing); a create whose name is taken fails with the 409 that
    Compute Engine gives, unless the deployment set importExistingResources, which adopts it;
  * changes to an argument the provider marks "forces replacement" (REPLACE_ON) are a
    delete-then-create; everything else is an in-place update; a resource no longer in the
    configuration is destroyed; an instance with deletion_protection is never deleted;
  * a change google_compute_instance makes only on a stopped instance (machine_type, ...) fails
    on a RUNNING one with the provider's error unless `allow_stopping_for_update = true`;
  * the module's `terraform.required_version` must accept the Terraform version Infrastructure
    Manager runs it with ("Unsupported Terraform Core version", as Terraform says);
  * Cloud Monitoring objects are named by the server, so a create never conflicts and has no
    import ID (an object DM or an abandoned deployment left stays beside the new one); the
    emulated cloud applies Monitoring's rules to them (emulators/monitoring.py), and its refusal
    fails the apply as the provider's googleapi error does.

The resources live in the emulated Compute Engine of the Deployment Manager emulator, in the
compute.v1 API shape (the shape DM writes there), so one state serves both engines.

Emulator choices (not Terraform's behaviour): an apply is all or nothing (Terraform keeps what
it managed to change before an error); resources are created in reference order, one at a time.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from dmlocal import provider_schema
from dmlocal.terraform import (
    MONITORING_FIELDS,
    PROJECT_PATH,
    REPEATED_BLOCKS,
    SERVER_NAMED,
    TF_ATTRIBUTES,
    TF_TYPES,
    satisfies,
)
from emulators import monitoring
from emulators.deploymentmanager.errors import OperationFailed

DM_TYPES = {tf: dm for dm, tf in TF_TYPES.items()}
GCE_FIELDS = {tf: dm for dm, tf in TF_ATTRIBUTES.items()}
TOP_LEVEL = {"terraform", "provider", "variable", "resource", "output", "import", "locals", "data"}
INTERPOLATION = re.compile(r"\$\$\{|%%\{|\$\{([^}]*)\}")
REFERENCE = re.compile(r"^\s*(google_\w+)\.([-\w]+)\.(\w+)\s*$")
VARIABLE = re.compile(r"^\s*var\.(\w+)\s*$")
EQUALS = re.compile(r'^\s*var\.(\w+)\s*==\s*("(?:[^"\\]|\\.)*")\s*$')
IMPORT_ID = re.compile(
    r"^projects/(?P<project>[^/]+)/(?:global|regions/[^/]+|zones/[^/]+)/(?P<collection>[^/]+)/"
    r"(?P<name>[^/]+)$"
)

# What google_compute_instance changes only on a stopped instance, in the provider's words when
# allow_stopping_for_update is not true (its error, as `terraform apply` prints it):
STOPPING_ARGUMENTS = {
    "machineType": "machine_type",
    "minCpuPlatform": "min_cpu_platform",
    "serviceAccounts": "service_account",
    "displayDevice": "enable_display",
    "shieldedInstanceConfig": "shielded_instance_config",
    "advancedMachineFeatures": "advanced_machine_features",
}
STOPPING_REFUSED = (
    "Changing the machine_type, min_cpu_platform, service_account, enable_display, "
    "shielded_instance_config, scheduling.node_affinities or "
    "network_interface.[#d].(network/subnetwork/subnetwork_project) or advanced_machine_features "
    "on a started instance requires stopping it. To acknowledge this, please set "
    "allow_stopping_for_update = true in your config. You can also stop it by setting "
    'desired_status = "TERMINATED", but the instance will not be restarted after the update.'
)

# Arguments whose change "forces replacement" in the google provider 6.x documentation.
REPLACE_ON = {
    "compute.v1.network": {"name", "autoCreateSubnetworks"},
    "compute.v1.subnetwork": {"name", "network", "region"},
    "compute.v1.firewall": {"name", "network", "direction"},
    "compute.v1.address": {"name", "region", "address", "addressType", "networkTier"},
    "compute.v1.instance": {"name", "zone", "disks"},
    # Emulator choice, not checked against the provider: Monitoring objects update in place.
    **{dm: set() for dm in monitoring.TYPES},
}


class TerraformError(Exception):
    """A configuration or apply error, as Terraform would print it."""


@dataclass
class Module:
    provider_project: Any
    resources: dict[str, tuple[str, str, dict]]  # address -> (tf type, label, body)
    outputs: dict[str, Any]
    imports: dict[str, str]  # address -> import id
    variables: dict[str, Any]
    required_versions: list[str] = field(default_factory=list)  # terraform.required_version

    def check_core(self, version: str) -> None:
        """Terraform refuses to run a module whose required_version excludes it."""
        for constraint in self.required_versions:
            try:
                accepted = satisfies(version, constraint)
            except ValueError as error:
                raise TerraformError(f"Invalid required_version {constraint!r}: {error}") from None
            if not accepted:
                raise TerraformError(
                    f"Unsupported Terraform Core version: This configuration does not support "
                    f"Terraform version {version} (required_version {constraint!r}). To proceed, "
                    "either choose another supported Terraform version or update this version "
                    "constraint."
                )


@dataclass
class Change:
    address: str
    actions: list[str]  # Terraform's: ["create"], ["update"], ["no-op"], ["delete"], ...
    importing: str | None = None
    before: dict | None = None
    after: dict | None = None


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict:
        """Terraform's JSON plan format (`terraform show -json`), the parts a reader needs."""
        changes = []
        for change in self.changes:
            tf_type, label = change.address.split(".", 1)
            body = {"actions": change.actions, "before": change.before, "after": change.after}
            if change.importing:
                body["importing"] = {"id": change.importing}
            changes.append(
                {"address": change.address, "mode": "managed", "type": tf_type, "name": label}
                | {"change": body}
            )
        return {
            "format_version": "1.2",
            "terraform_version": "emulated",
            "resource_changes": changes,
            "output_changes": {k: {"after": v} for k, v in self.outputs.items()},
        }


# -- reading the configuration --------------------------------------------------------------


def read_module(files: dict[str, bytes], input_values: dict[str, Any]) -> Module:
    documents: list[tuple[str, dict]] = []
    for path, data in sorted(files.items()):
        if path.endswith(".tf"):
            raise TerraformError(
                f"{path}: HCL is not read by this emulator; it reads the Terraform JSON "
                "(*.tf.json) that `dmlocal terraform` writes"
            )
        if not path.endswith(".tf.json"):
            continue  # Terraform ignores other files too
        try:
            document = json.loads(data)
        except ValueError as error:
            raise TerraformError(f"{path}: invalid JSON: {error}") from None
        if not isinstance(document, dict):
            raise TerraformError(f"{path}: the root of a Terraform JSON file must be an object")
        unknown = sorted(set(document) - TOP_LEVEL - {"//"})
        if unknown:
            raise TerraformError(f'{path}: Unsupported block type: "{unknown[0]}"')
        documents.append((path, document))
    if not documents:
        raise TerraformError("no Terraform configuration files (*.tf.json) in the source")

    merged: dict[str, Any] = {"resource": {}, "variable": {}, "output": {}, "import": []}
    provider = None
    required = None
    core: list[str] = []
    for path, document in documents:
        if "required_version" in (document.get("terraform") or {}):
            core.append(document["terraform"]["required_version"])
        for unsupported in ("locals", "data"):
            if unsupported in document:
                raise TerraformError(f"{path}: `{unsupported}` is not evaluated by this emulator")
        for tf_type, by_label in (document.get("resource") or {}).items():
            for label, body in by_label.items():
                if label in merged["resource"].setdefault(tf_type, {}):
                    raise TerraformError(f'{path}: Duplicate resource "{tf_type}" "{label}"')
                merged["resource"][tf_type][label] = body
        for key in ("variable", "output"):
            for name, body in (document.get(key) or {}).items():
                if name in merged[key]:
                    raise TerraformError(f'{path}: Duplicate {key} "{name}"')
                merged[key][name] = body
        merged["import"] += document.get("import") or []
        if "provider" in document:
            provider = (document["provider"] or {}).get("google")
        google = ((document.get("terraform") or {}).get("required_providers") or {}).get("google")
        if google is not None:
            required = google

    want = provider_schema.SCHEMA_VERSION
    if not required or required.get("version") != want:
        raise TerraformError(
            "terraform.required_providers.google must pin version "
            f'"{want}" (the provider whose schema this emulator checks); got {required!r}'
        )
    for tf_type in merged["resource"]:
        if tf_type not in DM_TYPES:
            raise TerraformError(f'The provider hashicorp/google has no resource "{tf_type}" here')
    problems, _ = provider_schema.module_problems(merged["resource"])
    if problems:
        raise TerraformError(
            "Unsupported argument (checked against the google provider "
            f"{want} schema):\n  " + "\n  ".join(problems)
        )

    variables = _variables(merged["variable"], input_values)
    resources = {
        f"{tf_type}.{label}": (tf_type, label, body)
        for tf_type, by_label in merged["resource"].items()
        for label, body in by_label.items()
    }
    imports: dict[str, str] = {}
    for block in merged["import"]:
        to, import_id = block.get("to"), block.get("id")
        if to not in resources:
            raise TerraformError(f"import block: {to!r} is not a resource in the configuration")
        if not isinstance(import_id, str) or "${" in import_id.replace("$${", ""):
            raise TerraformError(f"import block for {to}: the id must be a literal string")
        imports[to] = import_id
    scope = Scope(variables, {})
    return Module(
        provider_project=scope.evaluate((provider or {}).get("project")),
        resources=resources,
        outputs={name: body.get("value") for name, body in merged["output"].items()},
        imports=imports,
        variables=variables,
        required_versions=core,
    )


def _variables(declared: dict[str, dict], inputs: dict[str, Any]) -> dict[str, Any]:
    undeclared = sorted(set(inputs) - set(declared))
    if undeclared:
        raise TerraformError(
            f'Value for undeclared variable: a variable named "{undeclared[0]}" was assigned '
            "but the configuration does not declare it"
        )
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in inputs:
            values[name] = inputs[name]
        elif "default" in spec:
            values[name] = spec["default"]
        else:
            raise TerraformError(f'No value for required variable "{name}"')
    for name, spec in declared.items():
        for rule in spec.get("validation") or []:
            condition = rule.get("condition", "")
            wrapped = condition.startswith("${") and condition.endswith("}")
            inner = condition[2:-1] if wrapped else ""
            match = EQUALS.match(inner)
            if not match or match.group(1) != name:
                raise TerraformError(
                    f'variable "{name}": the validation condition {condition!r} is not evaluated '
                    'by this emulator (it evaluates var.NAME == "literal")'
                )
            if values[name] != json.loads(match.group(2)):
                raise TerraformError(
                    f"Invalid value for variable {name}: {rule.get('error_message', '')}"
                )
    return values


# -- expressions -----------------------------------------------------------------------------


class Scope:
    """Evaluates Terraform JSON string templates against variables and resource attributes."""

    def __init__(self, variables: dict[str, Any], attributes: dict[str, dict]):
        self.variables = variables
        self.attributes = attributes  # address -> the resource as the cloud holds it

    def evaluate(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.evaluate(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.evaluate(v) for v in value]
        if not isinstance(value, str):
            return value
        matches = list(INTERPOLATION.finditer(value))
        if (
            len(matches) == 1
            and matches[0].group(1) is not None
            and matches[0].span()
            == (
                0,
                len(value),
            )
        ):
            return self._expression(matches[0].group(1))  # a lone reference keeps its type
        return INTERPOLATION.sub(self._piece, value)

    def _piece(self, match: re.Match) -> str:
        if match.group(1) is None:
            return match.group(0)[1:]  # $${ -> ${, %%{ -> %{
        return str(self._expression(match.group(1)))

    def _expression(self, expression: str) -> Any:
        variable = VARIABLE.match(expression)
        if variable:
            if variable.group(1) not in self.variables:
                raise TerraformError(f'Reference to undeclared input variable "{variable[1]}"')
            return self.variables[variable.group(1)]
        reference = REFERENCE.match(expression)
        if not reference:
            raise TerraformError(f"${{{expression}}}: not an expression this emulator evaluates")
        address = f"{reference.group(1)}.{reference.group(2)}"
        if address not in self.attributes:
            raise TerraformError(f'Reference to undeclared resource "{address}"')
        attribute = reference.group(3)
        resource = self.attributes[address]
        if attribute == "id":
            return import_id_of(reference.group(1), resource)
        gce_field = GCE_FIELDS.get(attribute)
        if gce_field is None or gce_field not in resource:
            raise TerraformError(f"{address}: no attribute {attribute!r} known to this emulator")
        return resource[gce_field]


def references(value: Any) -> set[str]:
    """The resource addresses a configuration value refers to."""
    found: set[str] = set()
    for match in INTERPOLATION.finditer(json.dumps(value)):
        reference = REFERENCE.match(match.group(1) or "")
        if reference:
            found.add(f"{reference.group(1)}.{reference.group(2)}")
    return found


# -- Terraform arguments -> Compute Engine resource -----------------------------------------


def gce_properties(tf_type: str, body: dict, project: str | None = None) -> dict:
    """The API properties (DM's shape) a google provider resource with these arguments creates."""
    b = dict(body)
    if tf_type in SERVER_NAMED:
        kind = DM_TYPES[tf_type].rsplit(".", 1)[1]
        return {PROJECT_PATH[kind]: f"projects/{project}"} | _api_fields(b, MONITORING_FIELDS[kind])
    if tf_type == "google_compute_network":
        props = _renamed(
            b, {"auto_create_subnetworks": "autoCreateSubnetworks"}, skip={"routing_mode"}
        )
        if "routing_mode" in b:
            props["routingConfig"] = {"routingMode": b["routing_mode"]}
        return props
    if tf_type == "google_compute_subnetwork":
        props = _renamed(
            b,
            {"ip_cidr_range": "ipCidrRange", "private_ip_google_access": "privateIpGoogleAccess"},
            skip={"log_config"},
        )
        if b.get("log_config"):
            names = {
                "aggregation_interval": "aggregationInterval",
                "flow_sampling": "flowSampling",
                "metadata": "metadata",
            }
            props["logConfig"] = {"enable": True, **_renamed(b["log_config"][0], names)}
        return props
    if tf_type == "google_compute_address":
        return _renamed(b, {"address_type": "addressType", "network_tier": "networkTier"})
    if tf_type == "google_compute_firewall":
        props = _renamed(
            b,
            {
                "source_ranges": "sourceRanges",
                "destination_ranges": "destinationRanges",
                "source_tags": "sourceTags",
                "target_tags": "targetTags",
            },
            skip={"allow", "deny"},
        )
        for block, key in (("allow", "allowed"), ("deny", "denied")):
            if block in b:
                props[key] = [
                    {"IPProtocol": rule["protocol"]}
                    | ({"ports": list(rule["ports"])} if "ports" in rule else {})
                    for rule in b[block]
                ]
        return props
    if tf_type == "google_compute_instance":
        return _instance(b)
    raise TerraformError(f"{tf_type}: not materialised by this emulator")


def _api_fields(body: dict, spec: dict) -> dict:
    """Provider arguments back to Monitoring fields: dmlocal/terraform.py's mapping, reversed."""
    fields: dict[str, Any] = {}
    for api_name, target in spec.items():
        if isinstance(target, str):
            if target in body:
                fields[api_name] = body[target]
            continue
        blocks = [_api_fields(block, target[1]) for block in body.get(target[0]) or []]
        if blocks:
            fields[api_name] = blocks if api_name in REPEATED_BLOCKS else blocks[0]
    return fields


def _renamed(body: dict, names: dict[str, str], skip: frozenset | set = frozenset()) -> dict:
    return {names.get(k, k): v for k, v in body.items() if k not in skip}


def _instance(b: dict) -> dict:
    zone = b["zone"]
    props = _renamed(
        b,
        {"deletion_protection": "deletionProtection", "can_ip_forward": "canIpForward"},
        skip={
            "machine_type",
            "tags",
            "boot_disk",
            "network_interface",
            "service_account",
            "shielded_instance_config",
            "scheduling",
            "metadata",
            "allow_stopping_for_update",
        },
    )
    props["machineType"] = f"zones/{zone}/machineTypes/{b['machine_type']}"
    if "tags" in b:
        props["tags"] = {"items": list(b["tags"])}
    (boot,) = b["boot_disk"]
    disk = {"deviceName": boot.get("device_name"), "type": "PERSISTENT", "boot": True}
    disk = {k: v for k, v in disk.items() if v is not None}
    if "auto_delete" in boot:
        disk["autoDelete"] = boot["auto_delete"]
    params = (boot.get("initialize_params") or [{}])[0]
    initialize = {}
    if "image" in params:
        initialize["sourceImage"] = params["image"]
    if "size" in params:
        initialize["diskSizeGb"] = str(params["size"])  # int64 travels as a string in the API
    if "type" in params:
        initialize["diskType"] = f"zones/{zone}/diskTypes/{params['type']}"
    disk["initializeParams"] = initialize
    props["disks"] = [disk]
    props["networkInterfaces"] = []
    for nic in b.get("network_interface") or []:
        interface = _renamed(nic, {"network_ip": "networkIP"}, skip={"access_config"})
        interface["accessConfigs"] = [
            {"name": "External NAT", "type": "ONE_TO_ONE_NAT"}
            | _renamed(config, {"nat_ip": "natIP", "network_tier": "networkTier"})
            for config in nic.get("access_config") or []
        ]
        props["networkInterfaces"].append(interface)
    props["serviceAccounts"] = [
        {"email": account["email"], "scopes": list(account.get("scopes") or [])}
        for account in b.get("service_account") or []
    ]
    blocks = {
        "shielded_instance_config": (
            "shieldedInstanceConfig",
            {
                "enable_secure_boot": "enableSecureBoot",
                "enable_vtpm": "enableVtpm",
                "enable_integrity_monitoring": "enableIntegrityMonitoring",
            },
        ),
        "scheduling": (
            "scheduling",
            {
                "automatic_restart": "automaticRestart",
                "on_host_maintenance": "onHostMaintenance",
                "preemptible": "preemptible",
            },
        ),
    }
    for block, (key, names) in blocks.items():
        if block in b:
            props[key] = _renamed(b[block][0], names)
    if "metadata" in b:
        props["metadata"] = {"items": [{"key": k, "value": v} for k, v in b["metadata"].items()]}
    return props


# -- identity ---------------------------------------------------------------------------------

COLLECTION_TYPES = {
    "networks": "compute.v1.network",
    "subnetworks": "compute.v1.subnetwork",
    "firewalls": "compute.v1.firewall",
    "addresses": "compute.v1.address",
    "instances": "compute.v1.instance",
}


def import_id_of(tf_type: str, resource: dict) -> str:
    """The provider's `id` of a resource: its selfLink's path from `projects/`, or a Monitoring
    object's server-assigned name."""
    if tf_type in SERVER_NAMED:
        return resource["name"]
    return resource["selfLink"].split("/compute/v1/", 1)[1]


def parse_import_id(import_id: str) -> tuple[str, str, str]:
    """(project, compute.v1 type, name) of a `projects/...` import ID."""
    match = IMPORT_ID.match(import_id)
    if not match or match.group("collection") not in COLLECTION_TYPES:
        raise TerraformError(f"import id {import_id!r}: not a projects/... resource ID")
    return match["project"], COLLECTION_TYPES[match["collection"]], match["name"]


# -- plan and apply ---------------------------------------------------------------------------


def _order(module: Module) -> list[str]:
    order: list[str] = []
    visiting: set[str] = set()

    def visit(address: str) -> None:
        if address in order:
            return
        if address in visiting:
            raise TerraformError(f"Cycle: {address}")
        visiting.add(address)
        for dependency in sorted(references(module.resources[address][2])):
            if dependency not in module.resources:
                raise TerraformError(f'Reference to undeclared resource "{dependency}"')
            visit(dependency)
        visiting.discard(address)
        order.append(address)

    for address in module.resources:
        visit(address)
    return order


def run(
    module: Module,
    state: dict[str, dict],
    cloud: dict[str, dict[str, dict]],
    import_existing: bool,
    materialize,
) -> tuple[Plan, dict[str, dict]]:
    """Plans the module against `state` (address -> {project, type, name}) and applies it to
    `cloud` (one project's compute.v1 resources, changed in place: pass a copy). Returns the
    plan and the new state; raises TerraformError and leaves `cloud` half-changed otherwise.

    `materialize(dm_type, name, properties, existing)` returns the resource as Compute Engine
    holds it (server-side id, selfLink, allocated address), from the shared cloud.
    """
    project = module.provider_project
    plan = Plan()
    new_state: dict[str, dict] = {}
    attributes: dict[str, dict] = {}
    scope = Scope(module.variables, attributes)
    for address in _order(module):
        tf_type, label, body = module.resources[address]
        dm_type = DM_TYPES[tf_type]
        arguments = scope.evaluate(body)
        wanted = gce_properties(tf_type, arguments, project)
        server_named = tf_type in SERVER_NAMED
        name = label if server_named else wanted.get("name", label)
        importing = None
        tracked = state.get(address)
        existing = None
        if tracked is not None:
            existing = cloud.get(tracked["type"], {}).get(tracked["name"])
        elif address in module.imports:
            importing = module.imports[address]
            i_project, i_type, i_name = parse_import_id(importing)
            existing = cloud.get(i_type, {}).get(i_name) if i_project == project else None
            if existing is None or i_type != dm_type:
                raise TerraformError(
                    f"{address}: Cannot import non-existent remote object ({importing})"
                )
        elif server_named:
            name = _free_key(cloud.get(dm_type, {}), label)
        else:
            taken = cloud.get(dm_type, {}).get(name)
            if taken is not None and import_existing:
                existing, importing = taken, import_id_of(tf_type, taken)
            elif taken is not None:
                raise TerraformError(
                    f"Error creating {tf_type[len('google_compute_') :].title()}: googleapi: "
                    f"Error 409: The resource '{import_id_of(tf_type, taken)}' already exists, "
                    f"alreadyExists (resource {address})"
                )
        before = _managed_view(existing, wanted) if existing else None
        if existing is None:
            actions = ["create"]
        else:
            compared = monitoring.body_of(dm_type, wanted) if server_named else wanted
            changed = {k for k in compared if existing.get(k) != compared[k]}
            if changed & REPLACE_ON[dm_type]:
                if existing.get("deletionProtection"):
                    raise _protected(address)
                del cloud[dm_type][existing["name"]]
                existing, actions = None, ["delete", "create"]
            else:
                actions = ["update"] if changed else ["no-op"]
                stopping = sorted(STOPPING_ARGUMENTS[k] for k in changed & set(STOPPING_ARGUMENTS))
                running = existing.get("status", "RUNNING") == "RUNNING"
                if stopping and running and arguments.get("allow_stopping_for_update") is not True:
                    raise TerraformError(
                        f"{address}: changing {', '.join(stopping)}: {STOPPING_REFUSED}"
                    )
        actual = existing
        if actions != ["no-op"]:
            try:
                actual = materialize(dm_type, name, wanted, existing)
            except OperationFailed as refused:
                detail = json.loads(refused.message)
                raise TerraformError(
                    f"Error creating {tf_type} {address}: googleapi: Error "
                    f"{detail['ResourceErrorCode']}: {detail['ResourceErrorMessage']}"
                ) from None
            cloud.setdefault(dm_type, {})[name] = actual
        attributes[address] = actual
        new_state[address] = {"project": project, "type": dm_type, "name": name}
        after = _managed_view(actual, wanted)
        plan.changes.append(Change(address, actions, importing, before, after))
    for address, tracked in state.items():
        if address in module.resources:
            continue
        existing = cloud.get(tracked["type"], {}).get(tracked["name"])
        if existing is None:
            continue
        if existing.get("deletionProtection"):
            raise _protected(address)
        del cloud[tracked["type"]][tracked["name"]]
        plan.changes.append(Change(address, ["delete"], before=copy.deepcopy(existing)))
    plan.outputs = {name: scope.evaluate(value) for name, value in module.outputs.items()}
    return plan, new_state


def _free_key(objects: dict, label: str) -> str:
    """Where a new Monitoring object goes in the emulated cloud: under its label, or beside an
    object already there (one DM made, or an abandoned deployment left) as LABEL-2, -3, ...:
    Monitoring keeps both, each under its own server-assigned name."""
    key, number = label, 1
    while key in objects:
        number += 1
        key = f"{label}-{number}"
    return key


def destroy(state: dict[str, dict], cloud: dict[str, dict[str, dict]]) -> None:
    """`terraform destroy` on `cloud` (a copy): refuses when a protected instance is in it."""
    for address, tracked in reversed(list(state.items())):
        existing = cloud.get(tracked["type"], {}).get(tracked["name"])
        if existing is None:
            continue
        if existing.get("deletionProtection"):
            raise _protected(address)
        del cloud[tracked["type"]][tracked["name"]]


def _protected(address: str) -> TerraformError:
    return TerraformError(
        f"Error deleting {address}: Cannot destroy instance without setting "
        "deletion_protection=false and running `terraform apply`"
    )


def _managed_view(resource: dict | None, wanted: dict) -> dict | None:
    if resource is None:
        return None
    return {k: resource.get(k) for k in (*wanted, "selfLink", "name") if k in resource}
