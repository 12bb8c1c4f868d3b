"""The emulated Compute Engine: its rules, its v1 REST API, and the real gcloud against it.

Real: gcloud 528 (`gcloud compute ...`, pointed at the emulator with
api_endpoint_overrides/compute and an access token file), the compute.v1 discovery document
google-api-python-client ships, dmlocal, deployment.yaml and the templates. Emulated: Google's
servers, Deployment Manager and Compute Engine, over one state (emulators.deploymentmanager).

Each test names the Compute Engine document it follows; "discovery" is the compute.v1
discovery document (revision in dmlocal.compute_api.discovery()["revision"]), whose text is the
API reference at https://cloud.google.com/compute/docs/reference/rest/v1.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess

import pytest

from emulators.deploymentmanager import DeploymentManagerEmulator
from emulators.iam import Identity, Policy
from tests.pipeline.test_emulators import CLOUD_PLATFORM, call, target

TOKEN = "compute-test-token"
OPERATOR = "user:operator@example.com"
# What gcp-bootstrap.sh grants a member of OPERATORS (the roles `make repair` needs).
OPERATOR_ROLES = sorted(
    role
    for _, member, role in Policy.from_bootstrap(
        "dm", PROJECT_ID="p", CIRCLE_ORG_ID="o", CIRCLE_PROJECT_ID="c", OPERATORS=OPERATOR
    ).bindings
    if member == OPERATOR
)
_projects = (f"compute-{n}" for n in itertools.count())


class Stack:
    """One emulator serving DM and Compute, and gcloud configured for it."""

    def __init__(self, tmp):
        operator = Identity("operator@example.com", CLOUD_PLATFORM)
        self.policy = Policy()
        self.emulator = DeploymentManagerEmulator(
            verify_token=lambda t: operator if t == TOKEN else None, policy=self.policy
        )
        self.emulator.serve()
        self.changes: list[tuple[str, str, str, dict | None, dict | None]] = []
        self.emulator.cloud.listeners.append(lambda *change: self.changes.append(change))
        (tmp / "token").write_text(TOKEN)
        (tmp / "gcloud").mkdir()
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp),
            "CLOUDSDK_CONFIG": str(tmp / "gcloud"),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": self.emulator.compute_url,
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(tmp / "token"),
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
        }

    def deploy(self, project: str | None = None, config_edit=None) -> str:
        """Deploys deployment.yaml with DM into a fresh project; returns the project."""
        project = project or next(_projects)
        # The operator deploys, and changes the resources as gcp-bootstrap.sh's OPERATORS may.
        for role in ("roles/deploymentmanager.editor", *OPERATOR_ROLES):
            self.policy.grant(f"projects/{project}", OPERATOR, role)
        body = {"name": "hello", "target": target()}
        if config_edit:
            body["target"]["config"]["content"] = config_edit(body["target"]["config"]["content"])
        url = f"{self.emulator.url}deploymentmanager/v2/projects/{project}/global/deployments"
        existing = call(f"{url}/hello", "GET", token=TOKEN)
        if existing[0] == 200:
            body["fingerprint"] = existing[1]["fingerprint"]
            status, op = call(f"{url}/hello", "PUT", body, TOKEN)
        else:
            status, op = call(url, "POST", body, TOKEN)
        assert status == 200, op
        return project

    def dm_error(self, project: str) -> dict | None:
        url = f"{self.emulator.url}deploymentmanager/v2/projects/{project}/global/deployments"
        return call(f"{url}/hello", "GET", token=TOKEN)[1]["operation"].get("error")

    def api(self, method: str, project: str, path: str, body: dict | None = None):
        return call(f"{self.emulator.compute_url}projects/{project}/{path}", method, body, TOKEN)

    def gcloud(self, project: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["gcloud", *args, f"--project={project}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def resource(self, project: str, type_: str, name: str) -> dict | None:
        return self.emulator.cloud_resources(project).get(f"compute.v1.{type_}", {}).get(name)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = Stack(tmp_path_factory.mktemp("compute"))
    yield running
    running.emulator.shutdown()


VM = "zones/us-central1-a/instances/hello-vm"
ZONE = "--zone=us-central1-a"


# -- bodies: the discovery document's schema and the values its text documents ------------------


def test_bodies_the_api_rejects_are_refused_naming_the_field(stack):
    """Discovery, Firewall: `allowed[].IPProtocol` is "one of the following well known protocol
    strings (tcp, udp, icmp, esp, ah, ipip, sctp) or the IP protocol number"; `ports` entries are
    "an integer or a range" (ports are 16-bit, 0-65535); the schema has no field `sourceRange`.
    firewalls.insert answers 400 for each, and nothing is created."""
    project = stack.deploy()
    network = f"projects/{project}/global/networks/hello-vpc"
    good = {"name": "extra", "network": network, "allowed": [{"IPProtocol": "tcp"}]}
    for bad, field in (
        ({"allowed": [{"IPProtocol": "tcpx"}]}, "allowed[0].IPProtocol"),
        ({"allowed": [{"IPProtocol": "tcp", "ports": ["99999"]}]}, "allowed[0].ports[0]"),
        ({"sourceRange": ["0.0.0.0/0"]}, "sourceRange"),
    ):
        status, answer = stack.api("POST", project, "global/firewalls", {**good, **bad})
        assert status == 400, answer
        assert f"Invalid value for field 'resource.{field}'" in answer["error"]["message"]
        assert stack.resource(project, "firewall", "extra") is None
    status, answer = stack.api("POST", project, "global/firewalls", good)
    assert (status, answer["status"], answer["operationType"]) == (200, "DONE", "insert")
    assert stack.resource(project, "firewall", "extra")["allowed"] == [{"IPProtocol": "tcp"}]


def test_deployment_manager_gets_the_same_refusal_as_a_resource_error(stack):
    """Deployment Manager creates each resource with the Compute Engine insert call, so a body
    Compute Engine rejects (discovery, Firewall.allowed[].IPProtocol: `tcpx` is no protocol)
    fails the deployment at that resource; the resource before it stays (DM does not roll
    back). Integers where the API declares strings (`ports: [22]`) pass, as DM sends them."""
    config = """
resources:
- name: net
  type: compute.v1.network
  properties: {autoCreateSubnetworks: false}
- name: web
  type: compute.v1.firewall
  properties:
    network: $(ref.net.selfLink)
    allowed: [{IPProtocol: tcp, ports: [22, 80]}]
- name: typo
  type: compute.v1.firewall
  properties:
    network: $(ref.net.selfLink)
    allowed: [{IPProtocol: tcpx}]
"""
    project = stack.deploy(config_edit=lambda _: config)
    error = json.dumps(stack.dm_error(project))
    assert "RESOURCE_ERROR" in error and "/resources/typo" in error
    assert "resource.allowed[0].IPProtocol" in error and "tcpx" in error
    assert stack.resource(project, "firewall", "typo") is None
    assert stack.resource(project, "firewall", "web")["allowed"][0]["ports"] == [22, 80]


# -- creation-only fields and stopped-only changes -------------------------------------------------


def test_a_subnetwork_cannot_move_to_another_network(stack):
    """Discovery, Subnetwork.network: "This field can be set only at resource creation time"
    (the text wraps inside that phrase; dmlocal.replacement reads it across the wrap). DM's
    update of the subnetwork fails; the subnetwork stays on its network."""
    project = stack.deploy()
    network = f"https://www.googleapis.com/compute/v1/projects/{project}/global/networks/other"
    cloud = stack.emulator.cloud
    with stack.emulator.lock:
        held = cloud.get(project, "compute.v1.subnetwork", "hello-vpc-subnet")
        applied = {k: v for k, v in held.items() if k not in ("id", "selfLink")}
        with pytest.raises(Exception) as refused:
            cloud.update(
                project,
                "compute.v1.subnetwork",
                held["name"],
                applied,
                {**applied, "network": network},
            )
    assert "can be set only at resource creation time" in str(refused.value)
    assert stack.resource(project, "subnetwork", "hello-vpc-subnet")["network"] == held["network"]


def test_machine_type_changes_only_on_a_stopped_instance(stack):
    """Discovery, instances.setMachineType: "Changes the machine type for a stopped instance".
    On the RUNNING VM it answers 400, through the Compute API and through DM's update alike;
    after instances.stop it applies, and instances.start runs the VM again."""
    project = stack.deploy()
    body = {"machineType": "zones/us-central1-a/machineTypes/e2-medium"}
    status, answer = stack.api("POST", project, f"{VM}/setMachineType", body)
    assert status == 400 and "must be stopped" in answer["error"]["message"], answer

    stack.deploy(project, lambda text: text.replace("e2-small", "e2-medium"))
    error = json.dumps(stack.dm_error(project))
    assert "hello-vm" in error and "instances.setMachineType" in error
    assert stack.resource(project, "instance", "hello-vm")["machineType"].endswith("e2-small")

    assert stack.api("POST", project, f"{VM}/stop")[0] == 200
    assert stack.resource(project, "instance", "hello-vm")["status"] == "TERMINATED"
    status, answer = stack.api("POST", project, f"{VM}/setMachineType", body)
    assert status == 200, answer
    assert stack.api("POST", project, f"{VM}/start")[0] == 200
    vm = stack.resource(project, "instance", "hello-vm")
    assert (vm["status"], vm["machineType"]) == ("RUNNING", body["machineType"])


# -- deletes of resources in use ---------------------------------------------------------------


def test_a_network_in_use_and_a_protected_instance_are_not_deleted(stack):
    """networks.delete of a network its subnetwork and firewall rules use ends in an operation
    error RESOURCE_IN_USE_BY_ANOTHER_RESOURCE, "The network resource '...' is already being used
    by '...'" (the text Terraform reports from Compute Engine, terraform-google-three-tier-web-app
    issue 167). instances.delete of an instance with deletionProtection (discovery: "Whether the
    resource should be protected against deletion") answers 400 invalidResourceUsage, "Invalid
    resource usage: 'Resource cannot be deleted if it's protected against deletion.'"
    (terraform-provider-google PR 1211 quotes the API)."""
    project = stack.deploy()
    status, op = stack.api("DELETE", project, "global/networks/hello-vpc")
    assert status == 200 and op["status"] == "DONE" and op["httpErrorStatusCode"] == 400
    [error] = op["error"]["errors"]
    assert error["code"] == "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE"
    assert (
        f"'projects/{project}/global/networks/hello-vpc' is already being used by"
        in (error["message"])
    )
    assert stack.resource(project, "network", "hello-vpc") is not None

    status, answer = stack.api("DELETE", project, VM)
    assert (status, answer["error"]["errors"][0]["reason"]) == (400, "invalidResourceUsage")
    assert "protected against deletion" in answer["error"]["message"]
    assert stack.resource(project, "instance", "hello-vm") is not None


def test_an_address_in_use_shows_its_user_and_is_freed_by_deleting_the_instance(stack):
    """Discovery, Address.status: "An IN_USE address is currently being used by another
    resource and is not available"; Address.users: "The URLs of the resources that are using
    this address". Deleting it while the VM holds it fails; once the VM is gone it succeeds."""
    project = stack.deploy()
    path = "regions/us-central1/addresses/hello-vm-ip"
    address = stack.api("GET", project, path)[1]
    assert address["status"] == "IN_USE" and address["users"][0].endswith(VM)
    op = stack.api("DELETE", project, path)[1]
    assert op["error"]["errors"][0]["code"] == "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE"

    assert (
        stack.api("POST", project, f"{VM}/setDeletionProtection?deletionProtection=false")[0] == 200
    )
    assert "error" not in stack.api("DELETE", project, VM)[1]
    assert stack.api("GET", project, path)[1]["status"] == "RESERVED"
    assert "error" not in stack.api("DELETE", project, path)[1]
    assert stack.resource(project, "address", "hello-vm-ip") is None


# -- permissions on the resources a request names -----------------------------------------------


def test_a_new_vms_use_permissions_are_checked_on_the_subnetwork_and_address_it_names(
    stack, monkeypatch
):
    """instances.insert (compute.v1 reference, and "Create and start a Compute Engine instance",
    Required permissions): compute.subnetworks.use, and compute.subnetworks.useExternalIp for an
    external IP, on the subnetwork the network interface names; compute.addresses.use for the
    static address its natIP is. Subnetworks take IAM policies of their own (compute.v1 has
    subnetworks.setIamPolicy); addresses have none, so only the project reaches them. A caller
    holding every `use` permission through a binding on the new instance is still refused,
    naming the subnetwork; with them granted on that subnetwork, refused naming the address;
    with compute.addresses.use on the project, the VM is created.

    Real: nothing but HTTP. Emulated: Compute Engine and its IAM check."""
    project = stack.deploy()
    maker = Identity("vm-maker@example.com", CLOUD_PLATFORM)
    operator_token = stack.emulator.verify_token
    monkeypatch.setattr(
        stack.emulator, "verify_token", lambda t: maker if t == "maker" else operator_token(t)
    )
    assert stack.api("POST", project, "regions/us-central1/addresses", {"name": "spare"})[0] == 200
    spare_ip = stack.resource(project, "address", "spare")["address"]
    body = stack.api("GET", project, VM)[1]
    body = {k: v for k, v in body.items() if k in ("machineType", "networkInterfaces", "disks")}
    body["name"] = "second-vm"
    body["disks"][0]["initializeParams"].pop("diskName", None)
    nic = body["networkInterfaces"][0]
    nic.pop("network", None)
    nic["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT", "natIP": spare_ip}]
    subnet = nic["subnetwork"].split("/compute/v1/")[1]

    roles = stack.policy.custom_roles
    member = "user:vm-maker@example.com"
    roles["projects/p/roles/vmCreator"] = frozenset(
        {
            "compute.instances.create",
            "compute.disks.create",
            "compute.instances.setMetadata",
            "compute.instances.setTags",
            "compute.instances.setLabels",
        }
    )
    roles["projects/p/roles/subnetUser"] = frozenset(
        {"compute.subnetworks.use", "compute.subnetworks.useExternalIp"}
    )
    roles["projects/p/roles/addressUser"] = frozenset({"compute.addresses.use"})
    instance = f"projects/{project}/zones/us-central1-a/instances/second-vm"
    stack.policy.grant(f"projects/{project}", member, "projects/p/roles/vmCreator")
    stack.policy.grant(instance, member, "roles/compute.instanceAdmin.v1")
    url = f"{stack.emulator.compute_url}projects/{project}/zones/us-central1-a/instances"

    status, answer = call(url, "POST", body, "maker")
    assert status == 403, answer
    assert answer["error"]["message"] == (
        f"Required 'compute.subnetworks.use' permission for '{subnet}'"
    )
    stack.policy.grant(subnet, member, "projects/p/roles/subnetUser")
    status, answer = call(url, "POST", body, "maker")
    assert status == 403, answer
    assert answer["error"]["message"] == (
        "Required 'compute.addresses.use' permission for "
        f"'projects/{project}/regions/us-central1/addresses/spare'"
    )
    stack.policy.grant(f"projects/{project}", member, "projects/p/roles/addressUser")
    status, answer = call(url, "POST", body, "maker")
    assert status == 200, answer
    assert stack.resource(project, "instance", "second-vm") is not None


def test_gcloud_with_a_compute_readonly_token_lists_but_cannot_delete(stack, tmp_path, monkeypatch):
    """firewalls.list accepts the compute.readonly scope, firewalls.delete does not (their
    `scopes` in the discovery document): the real gcloud, holding an operator's token issued
    for compute.readonly only, lists the rules, and its delete is refused whatever the
    operator's roles, gcloud printing Google's "Request had insufficient authentication scopes."
    The rule is still there.

    Real: gcloud 528. Emulated: Compute Engine and its IAM check."""
    project = stack.deploy()
    readonly = Identity(
        "operator@example.com", ("https://www.googleapis.com/auth/compute.readonly",)
    )
    operator_token = stack.emulator.verify_token
    monkeypatch.setattr(
        stack.emulator,
        "verify_token",
        lambda t: readonly if t == "readonly" else operator_token(t),
    )
    (tmp_path / "token").write_text("readonly")
    monkeypatch.setitem(stack.env, "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE", str(tmp_path / "token"))
    listed = stack.gcloud(project, "compute", "firewall-rules", "list", "--format=value(name)")
    assert listed.returncode == 0 and "hello-firewall-allow-ssh" in listed.stdout, listed.stderr
    deleted = stack.gcloud(
        project, "compute", "firewall-rules", "delete", "hello-firewall-allow-ssh"
    )
    assert deleted.returncode != 0
    assert "Request had insufficient authentication scopes." in deleted.stderr, deleted.stderr
    assert stack.resource(project, "firewall", "hello-firewall-allow-ssh") is not None


# -- fingerprints -------------------------------------------------------------------------------


def test_a_stale_fingerprint_is_refused_with_412(stack):
    """Discovery, Tags.fingerprint: "essentially a hash of the tags' contents and used for
    optimistic locking ... You must always provide an up-to-date fingerprint"; the same for
    Metadata.fingerprint and the instance's own fingerprint (instances.update). A stale one
    answers 412 conditionNotMet and changes nothing."""
    project = stack.deploy()
    vm = stack.api("GET", project, VM)[1]
    tags = {"items": ["hello-web", "extra"], "fingerprint": vm["tags"]["fingerprint"]}
    assert stack.api("POST", project, f"{VM}/setTags", tags)[0] == 200
    status, answer = stack.api("POST", project, f"{VM}/setTags", {**tags, "items": []})
    assert (status, answer["error"]["errors"][0]["reason"]) == (412, "conditionNotMet")
    assert stack.resource(project, "instance", "hello-vm")["tags"]["items"] == tags["items"]

    metadata = {"items": [], "fingerprint": "c3RhbGUtZnA="}
    assert stack.api("POST", project, f"{VM}/setMetadata", metadata)[0] == 412
    status, answer = stack.api("PUT", project, VM, {**vm, "description": "edited"})
    assert status == 412, answer  # vm["fingerprint"] predates the setTags
    fresh = stack.api("GET", project, VM)[1]
    assert stack.api("PUT", project, VM, {**fresh, "description": "edited"})[0] == 200
    assert stack.resource(project, "instance", "hello-vm")["description"] == "edited"


# -- one state for DM and Compute, and the hook the local VM follows ----------------------------


def test_a_rule_deleted_through_compute_stays_deleted_on_a_dm_no_op_update(stack):
    """Deployment Manager does not see out-of-band changes: a no-op update leaves a deleted
    resource deleted (its update compares the manifest with its own records, not the cloud)."""
    project = stack.deploy()
    op = stack.api("DELETE", project, "global/firewalls/hello-firewall-allow-ssh")[1]
    assert op["operationType"] == "delete" and "error" not in op
    stack.deploy(project)
    assert stack.dm_error(project) is None
    assert stack.resource(project, "firewall", "hello-firewall-allow-ssh") is None
    assert stack.resource(project, "firewall", "hello-firewall-allow-web") is not None


def test_listeners_hear_the_instance_created_changed_and_deleted(stack):
    """The hook the local VM tooling follows: every change of the state, whoever made it."""
    stack.changes.clear()
    project = stack.deploy()
    created = [c for c in stack.changes if c[1] == "compute.v1.instance"]
    assert [(c[0], c[2], c[3]) for c in created] == [(project, "hello-vm", None)]
    vm = stack.api("GET", project, VM)[1]
    items = [*vm["metadata"]["items"], {"key": "extra", "value": "1"}]
    body = {"items": items, "fingerprint": vm["metadata"]["fingerprint"]}
    assert stack.api("POST", project, f"{VM}/setMetadata", body)[0] == 200
    _, _, _, before, after = stack.changes[-1]
    assert after["metadata"]["items"][-1] == {"key": "extra", "value": "1"}
    assert before["metadata"]["items"] == vm["metadata"]["items"]
    stack.api("POST", project, f"{VM}/setDeletionProtection?deletionProtection=false")
    stack.api("DELETE", project, VM)
    assert stack.changes[-1][1:3] == ("compute.v1.instance", "hello-vm")
    assert stack.changes[-1][4] is None

    # Infrastructure Manager's emulator plans on a copy and commits it whole: the listeners
    # hear what the commit changed, and only that.
    stack.changes.clear()
    committed = stack.emulator.cloud_resources(project)
    del committed["compute.v1.firewall"]["hello-firewall-allow-web"]
    with stack.emulator.lock:
        stack.emulator.cloud.replace(project, committed)
    assert [c[1:3] for c in stack.changes] == [("compute.v1.firewall", "hello-firewall-allow-web")]


# -- the real gcloud ---------------------------------------------------------------------------


def test_gcloud_firewall_rules_list_create_update_delete_and_a_refusal(stack):
    """What someone in a console or shell does to the firewall, with the requests gcloud sends
    (surface/compute/firewall_rules: list; insert; get then patch; delete, each waited on
    through globalOperations). A port out of range (discovery, Firewall.allowed[].ports) is
    refused and gcloud prints the API's message."""
    project = stack.deploy()
    listed = stack.gcloud(project, "compute", "firewall-rules", "list", "--format=value(name)")
    assert listed.returncode == 0, listed.stderr
    assert "hello-firewall-allow-ssh" in listed.stdout.split()
    bad = stack.gcloud(
        project, "compute", "firewall-rules", "create", "bad", "--network=hello-vpc",
        "--allow=tcp:99999",
    )  # fmt: skip
    assert bad.returncode == 1
    assert "'resource.allowed[0].ports[0]': '99999' is out of range" in bad.stderr
    created = stack.gcloud(
        project, "compute", "firewall-rules", "create", "allow-all", "--network=hello-vpc",
        "--allow=tcp,udp", "--source-ranges=0.0.0.0/0",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    # gcloud names the network with the endpoint it talks to; the API stores its own URL.
    assert stack.resource(project, "firewall", "allow-all")["network"] == (
        f"https://www.googleapis.com/compute/v1/projects/{project}/global/networks/hello-vpc"
    )
    widened = stack.gcloud(
        project, "compute", "firewall-rules", "update", "hello-firewall-allow-ssh",
        "--source-ranges=0.0.0.0/0",
    )  # fmt: skip
    assert widened.returncode == 0, widened.stderr
    assert stack.resource(project, "firewall", "hello-firewall-allow-ssh")["sourceRanges"] == [
        "0.0.0.0/0"
    ]
    deleted = stack.gcloud(project, "compute", "firewall-rules", "delete", "allow-all")
    assert deleted.returncode == 0, deleted.stderr
    assert stack.resource(project, "firewall", "allow-all") is None


def test_gcloud_edits_the_instance_with_its_fingerprints_and_deletes_it_unprotected(stack):
    """`instances delete` of the protected VM is refused with the API's message; add-tags,
    remove-tags and add-metadata each GET the instance and send setTags / setMetadata with the
    fingerprint they read (surface/compute/instances/add_tags.py, add_metadata.py);
    `update --no-deletion-protection` sends setDeletionProtection and waits on the zone
    operation; then the VM can be deleted."""
    project = stack.deploy()
    protected = stack.gcloud(project, "compute", "instances", "delete", "hello-vm", ZONE)
    assert protected.returncode == 1 and "protected against deletion" in protected.stderr
    for args in (
        ("add-tags", "hello-vm", ZONE, "--tags=extra"),
        ("remove-tags", "hello-vm", ZONE, "--tags=hello-web"),
        ("add-metadata", "hello-vm", ZONE, "--metadata=edited=yes"),
        ("update", "hello-vm", ZONE, "--no-deletion-protection"),
        ("delete", "hello-vm", ZONE),
    ):
        if args[0] == "update":
            vm = stack.resource(project, "instance", "hello-vm")
            assert vm["tags"]["items"] == ["extra"]
            assert {"key": "edited", "value": "yes"} in vm["metadata"]["items"]
            assert vm["deletionProtection"] is True
        result = stack.gcloud(project, "compute", "instances", *args)
        assert result.returncode == 0, (args, result.stderr)
    assert stack.resource(project, "instance", "hello-vm") is None


def test_gcloud_on_the_network_and_the_address_while_the_vm_uses_them(stack):
    """networks.delete while rules use the network ends in the operation's error, which gcloud
    prints; addresses.get shows the address IN_USE by the VM (discovery, Address.status and
    users), and addresses.delete refuses it."""
    project = stack.deploy()
    network = stack.gcloud(project, "compute", "networks", "delete", "hello-vpc")
    assert network.returncode == 1 and "is already being used by" in network.stderr
    address = ("addresses", "hello-vm-ip", "--region=us-central1")
    described = stack.gcloud(project, "compute", address[0], "describe", *address[1:],
                             "--format=json")  # fmt: skip
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["status"] == "IN_USE"
    deleted = stack.gcloud(project, "compute", address[0], "delete", *address[1:])
    assert deleted.returncode == 1 and f"used by 'projects/{project}/{VM}'" in deleted.stderr
    assert stack.resource(project, "address", "hello-vm-ip") is not None
