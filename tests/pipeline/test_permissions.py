"""Least privilege, checked as Google checks it: the bootstrap's identities, and nothing more.

For each engine, `scripts/gcp-bootstrap.sh --engine ENGINE --dry-run` is the only source: its
printed CircleCI contexts are fed as they are to scripts/deploy.sh (deploy with gcp-deploy and a
master token, preview with gcp-preview and a branch token), and its grants (project roles,
custom roles, service-account and bucket bindings) are the emulated projects' IAM policy.

Real: the `gcloud` 528 binary (WIF login, the deployment-manager and infra-manager commands,
the --local-source upload and its staging-bucket checks, error reporting), scripts/deploy.sh and
scripts/lib/infra-manager.sh, scripts/gcp-bootstrap.sh, the templates and dmlocal. Emulated:
Google's servers only: Deployment Manager, Infrastructure Manager, Cloud Storage (the PyPI
gcp-storage-emulator behind our IAM check), STS and IAM Credentials, CircleCI's OIDC issuer;
every one of them checks the caller's permission with emulators/iam.py, whose role and method
data cite Google's pages.

The accounts Infrastructure Manager runs Terraform as are checked too: each refresh, create,
update and delete of the plan needs the runner's permission for the API call the google
provider makes (an instance's update: the call for each changed field), and roles/config.agent
is what Infrastructure Manager needs to work as the account (its artifacts bucket, the
blueprint's). Not checked here: the runner's access to the Terraform state (not emulated).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emulators.deploymentmanager import DeploymentManagerEmulator
from emulators.iam import Policy
from emulators.inframanager import InfraManagerEmulator
from emulators.oauth2 import OAuth2Emulator
from emulators.oidc_issuer import CIRCLECI_OIDC_ORIGIN, OidcIssuerEmulator
from emulators.storage import CloudStorage
from emulators.workload_identity import WorkloadIdentityEmulator
from tests.pipeline.test_deploy import DEPLOY, GCLOUD, copy_stack
from tests.pipeline.test_emulators import CLOUD_PLATFORM, call
from tests.pipeline.test_wif import (
    ORG_ID,
    PROJECT_NUMBER,
    CircleCI,
    bootstrap_commands,
    bootstrap_dry_run,
    configure_from_bootstrap,
    printed_contexts,
)

pytestmark = pytest.mark.skipif(GCLOUD is None, reason="needs the real gcloud on PATH")

BRANCH = "refs/heads/feature/try-something"
DENIAL = re.compile(r"Permission '([a-zA-Z.]+)' denied|does not have ([a-zA-Z.]+) access")
# The google provider's report of a 403: Compute Engine's wording, or Monitoring's.
RUNNER_DENIAL = re.compile(r"Required '([a-zA-Z.]+)' permission|Permission '([a-zA-Z.]+)' denied")


class Project:
    """One project set up by the bootstrap for `engine`, behind every emulated API."""

    def __init__(self, tmp: Path, engine: str):
        self.tmp, self.engine = tmp, engine
        self.project = f"perm-{engine}"
        settings = {"PROJECT_ID": self.project}
        self.contexts = printed_contexts(bootstrap_dry_run(engine, **settings))
        commands = bootstrap_commands(engine, **settings)
        self.policy = Policy()
        self.oauth = OAuth2Emulator()
        self.oauth.serve()
        self.dm = DeploymentManagerEmulator(verify_token=self.oauth.verify, policy=self.policy)
        self.dm.serve()
        self.storage = CloudStorage(verify_token=self.oauth.verify, policy=self.policy)
        self.im = InfraManagerEmulator(
            self.storage, compute=self.dm, verify_token=self.oauth.verify, policy=self.policy
        )
        self.im.serve()
        self.issuer = OidcIssuerEmulator(f"{CIRCLECI_OIDC_ORIGIN}/org/{ORG_ID}")
        self.issuer.serve()
        self.sts = WorkloadIdentityEmulator(
            self.oauth.issue, self.policy, {CIRCLECI_OIDC_ORIGIN: self.issuer.base_url}
        )
        self.sts_url = self.sts.serve()
        configure_from_bootstrap(self.sts, commands)  # the provider, and every grant
        for bucket, owner in self.policy.bucket_projects.items():
            self.storage.create_bucket(bucket, owner)
        self.circleci = CircleCI(self.issuer)
        self.stack = copy_stack(tmp / "stack")
        self.runs = 0

    def run(self, context: str, *args: str, ref: str = "refs/heads/master"):
        """deploy.sh ARGS in a CircleCI job using `context`, on `ref`."""
        self.runs += 1
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "CLOUDSDK_CONFIG": str(self.tmp / f"gcloud-{self.runs}"),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_DEPLOYMENTMANAGER": self.dm.url,
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_CONFIG": self.im.url,
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": self.storage.endpoint,
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "WIF_STS_ENDPOINT": self.sts_url,
            "WIF_IAMCREDENTIALS_ENDPOINT": self.sts_url,
            "CIRCLE_OIDC_TOKEN_V2": self.circleci.token(2, ref=ref),
            "CIRCLE_BRANCH": ref.removeprefix("refs/heads/"),
            "DEPLOY_OUT_DIR": str(self.tmp / "out"),
            "DEPLOY_RETRY_SECONDS": "1",
            "DMLOCAL": str(Path(sys.executable).parent / "dmlocal"),
        }
        variables = {k: v for k, v in self.contexts[context].items() if k != "restricted"}
        # The provider's name as the bootstrap prints it, with the number it looked up.
        variables["GCP_WIF_PROVIDER"] = variables["GCP_WIF_PROVIDER"].replace(
            "PROJECT_NUMBER", PROJECT_NUMBER
        )
        return subprocess.run(
            [str(DEPLOY), *args],
            cwd=self.stack,
            env=env | variables,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def identity(self, context: str) -> str:
        return self.contexts[context]["GCP_DEPLOYER_SA"]

    def bindings_of(self, email: str) -> list[tuple[str, str, str]]:
        """Every grant this identity's path rests on: its roles, and who may become it."""
        return sorted(
            (resource, member, role)
            for resource, member, role in self.policy.bindings
            if member == f"serviceAccount:{email}" or resource.endswith(f"/{email}")
        )

    def close(self) -> None:
        for server in (self.sts, self.issuer, self.im, self.dm, self.oauth):
            server.shutdown()
        self.storage.shutdown()


@pytest.fixture(scope="module", params=["dm", "infra-manager"])
def project(request, tmp_path_factory):
    project = Project(tmp_path_factory.mktemp(request.param), request.param)
    yield project
    project.close()


def custom_roles_of(project: Project, email: str) -> dict[str, frozenset[str]]:
    return {
        role: project.policy.custom_roles[role]
        for _, member, role in project.policy.bindings
        if member == f"serviceAccount:{email}" and role in project.policy.custom_roles
    }


def test_the_printed_contexts_deploy_and_preview(project):
    """The contexts as printed: gcp-deploy on master deploys (three times: gcloud deletes the
    staged sources no revision needs before it uploads, which from the third apply on finds
    one), gcp-preview on a branch previews. Every permission of each
    custom role the bootstrap made was checked and granted on that path, so none is spare."""
    assert project.contexts["gcp-deploy"]["DEPLOY_ENGINE"] == project.engine
    assert project.contexts["gcp-preview"]["DEPLOY_ENGINE"] == project.engine
    for _ in range(3):
        deployed = project.run("gcp-deploy")
        assert deployed.returncode == 0, deployed.stderr
    previewed = project.run("gcp-preview", "--preview", ref=BRANCH)
    assert previewed.returncode == 0, previewed.stderr

    for context in ("gcp-deploy", "gcp-preview"):
        email = project.identity(context)
        used = project.policy.used_permissions(email)
        for role, permissions in custom_roles_of(project, email).items():
            assert permissions <= used, f"{role}: {sorted(permissions - used)} never needed"


def test_removing_any_grant_fails_its_path_with_gclouds_message(project):
    """Each grant of the deployer (for a deploy) and of the previewer (for a preview), removed
    alone: the path fails, and the operator sees gcloud's message naming a permission that
    grant gave (or, for roles/iam.workloadIdentityUser, the refused impersonation)."""
    paths = {"gcp-deploy": (), "gcp-preview": ("--preview",)}
    for context, args in paths.items():
        ref = "refs/heads/master" if context == "gcp-deploy" else BRANCH
        for binding in project.bindings_of(project.identity(context)):
            role = binding[2]
            project.policy.revoke(*binding)
            try:
                result = project.run(context, *args, ref=ref)
            finally:
                project.policy.grant(*binding)
            assert result.returncode != 0, f"{context} passed without {binding}"
            if role == "roles/iam.workloadIdentityUser":
                assert result.returncode == 3
                assert "iam.serviceAccounts.getAccessToken" in result.stderr, result.stderr
                continue
            denied = {a or b for a, b in DENIAL.findall(result.stderr)}
            assert denied & project.policy.role_permissions(role), (binding, result.stderr)


def test_a_branch_identity_cannot_deploy(project):
    """A branch job cannot become the deployer (no workloadIdentityUser for its ref: exit 3),
    and as the previewer a deploy over production is refused by the API (403, gcloud's message
    shown); under infra-manager the previewer cannot hand IM the deploying account either.
    Production is deployed first: with `dm`, where production does not exist the previewer's
    `deploymentmanager.deployments.create` creates it (docs/operations.md)."""
    deployed = project.run("gcp-deploy")
    assert deployed.returncode == 0, deployed.stderr
    refused = project.run("gcp-deploy", ref=BRANCH)
    assert refused.returncode == 3, refused.stderr

    as_previewer = project.run("gcp-preview", ref=BRANCH)
    assert as_previewer.returncode != 0
    assert DENIAL.search(as_previewer.stderr), as_previewer.stderr
    if project.engine == "infra-manager":
        runner = project.contexts["gcp-deploy"]["IM_SERVICE_ACCOUNT"]
        resource = f"projects/{project.project}/serviceAccounts/{runner}"
        member = f"serviceAccount:{project.identity('gcp-preview')}"
        assert not project.policy.allows({member}, "iam.serviceAccounts.actAs", resource)


def test_each_runner_role_is_needed_by_the_terraform_run_it_is_for(project):
    """Infrastructure Manager runs Terraform as the bootstrap's runner accounts. The stack's
    Terraform (`dmlocal terraform`, with an alert email so that it holds every kind of object
    the runner's roles are for), staged in Cloud Storage, is applied into a project holding
    nothing yet, asked through the config v1 API as the deployer: without any one compute or
    monitoring role of `hello-infra-manager`, the revision fails before anything is created,
    and the deployment reports the provider's `googleapi: Error 403` naming a permission of
    that role; with all of them it applies. Then a preview against that deployment as the
    previewer: each of the preview runner's read-only roles is needed for Terraform's refresh.
    roles/config.agent where the sources are is needed to read them (IM reads the blueprint as
    the runner); without it in the deployment's project, the deployment and the preview fail
    with BUCKET_CREATION_PERMISSION_DENIED (IM keeps the run's artifacts there). A change of the
    VM's metadata alone is the provider's instances.setMetadata: a runner holding everything
    Compute Instance Admin (v1) does except compute.instances.setMetadata is refused naming it."""
    if project.engine != "infra-manager":
        pytest.skip("Deployment Manager creates the resources as its own service agent")
    config = project.stack / "runner-check.yaml"  # beside deployment.yaml, for its imports
    declared = (project.stack / "deployment.yaml").read_text()
    config.write_text(declared.replace('alertEmail: ""', 'alertEmail: "ops@example.com"'))
    rendered = project.tmp / "runner-terraform"
    dmlocal = Path(sys.executable).parent / "dmlocal"
    subprocess.run([dmlocal, "terraform", config, "--out", rendered], check=True, cwd=project.stack)
    target = f"{project.project}-runner"  # the project Terraform creates the stack in
    bucket = f"{target}-sources"
    project.storage.create_bucket(bucket, target)
    for file in rendered.iterdir():
        data = file.read_bytes()
        project.storage.write(bucket, f"stack/{file.name}", data, "application/octet-stream")
    blueprint = {
        "gcsSource": f"gs://{bucket}/stack",
        "inputValues": {"project": {"inputValue": target}},
    }
    parent = f"projects/{project.project}/locations/{project.contexts['gcp-deploy']['IM_LOCATION']}"
    runners = {}
    for context in ("gcp-deploy", "gcp-preview"):
        runner = project.contexts[context]["IM_SERVICE_ACCOUNT"]
        runners[context] = runner
        bootstrapped = runner.replace(project.project, target)
        project.policy.add_bootstrap(
            bootstrap_commands(project.engine, PROJECT_ID=target),
            rename={f"serviceAccount:{bootstrapped}": f"serviceAccount:{runner}"},
        )

    def roles_of(runner: str) -> list[tuple[str, str, str]]:
        return sorted(
            b
            for b in project.policy.bindings
            if b[:2] == (f"projects/{target}", f"serviceAccount:{runner}")
        )

    def request(context: str, collection: str, item: str, body: dict, patch=False) -> dict:
        token = project.oauth.issue(project.identity(context), CLOUD_PLATFORM)
        url = f"{project.im.url}v1/{parent}/{collection}?{collection[:-1]}Id={item}"
        if patch:
            url = f"{project.im.url}v1/{parent}/{collection}/{item}"
        status, operation = call(url, "PATCH" if patch else "POST", body, token)
        assert status == 200, operation
        return operation["response"]

    def apply(name: str, source: dict = blueprint, patch: bool = False) -> dict:
        account = f"projects/{project.project}/serviceAccounts/{runners['gcp-deploy']}"
        body = {"serviceAccount": account, "terraformBlueprint": source}
        return request("gcp-deploy", "deployments", name, body, patch)

    def refused_without_each_role(context: str, run, message_of) -> None:
        """`run` fails without each role of the context's runner, naming one of its permissions."""
        for number, binding in enumerate(roles_of(runners[context])):
            project.policy.revoke(*binding)
            try:
                failed = run(f"runner-{number}")
            finally:
                project.policy.grant(*binding)
            assert failed["state"] == "FAILED", binding
            message = message_of(failed)
            assert "googleapi: Error 403" in message, failed
            denied = {a or b for a, b in RUNNER_DENIAL.findall(message)}
            assert denied & project.policy.role_permissions(binding[2]), failed

    refused_without_each_role("gcp-deploy", apply, lambda failed: failed["stateDetail"])
    assert not project.dm.cloud_resources(target), "a refused run created something"
    applied = apply("runner-all")
    assert applied["state"] == "ACTIVE", applied

    def preview(name: str) -> dict:
        account = f"projects/{project.project}/serviceAccounts/{runners['gcp-preview']}"
        body = {
            "serviceAccount": account,
            "terraformBlueprint": blueprint,
            "deployment": applied["name"],
        }
        return request("gcp-preview", "previews", name, body)

    refused_without_each_role("gcp-preview", preview, lambda f: f["errorStatus"]["message"])
    assert preview("runner-all")["state"] == "SUCCEEDED"

    for context, run, number in (("gcp-deploy", apply, 1), ("gcp-preview", preview, 2)):
        agent = (f"projects/{project.project}", f"serviceAccount:{runners[context]}")
        project.policy.revoke(*agent, "roles/config.agent")
        try:
            failed = run(f"agent-{number}")
        finally:
            project.policy.grant(*agent, "roles/config.agent")
        assert failed["state"] == "FAILED", failed
        assert failed["errorCode"] == "BUCKET_CREATION_PERMISSION_DENIED", failed
        assert "Permission 'storage.buckets.create' denied" in str(failed), failed

    for file in rendered.iterdir():  # the VM's metadata gains a key: nothing else changes
        data = json.loads(file.read_text())
        for vm in data.get("resource", {}).get("google_compute_instance", {}).values():
            vm["metadata"]["drill"] = "metadata-only"
        data = json.dumps(data).encode()
        project.storage.write(bucket, f"stack-2/{file.name}", data, "application/octet-stream")
    changed = {**blueprint, "gcsSource": f"gs://{bucket}/stack-2"}
    member = f"serviceAccount:{runners['gcp-deploy']}"
    admin = (f"projects/{target}", member, "roles/compute.instanceAdmin.v1")
    all_but = f"projects/{target}/roles/instanceAdminButSetMetadata"
    project.policy.custom_roles[all_but] = project.policy.role_permissions(admin[2]) - {
        "compute.instances.setMetadata"
    }
    project.policy.revoke(*admin)
    project.policy.grant(admin[0], member, all_but)
    try:
        refused = apply("runner-all", changed, patch=True)
    finally:
        project.policy.revoke(admin[0], member, all_but)
        project.policy.grant(*admin)
    assert refused["state"] == "FAILED", refused
    assert "Required 'compute.instances.setMetadata' permission" in refused["stateDetail"]
    assert apply("runner-all", changed, patch=True)["state"] == "ACTIVE"
