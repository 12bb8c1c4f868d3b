"""Workload Identity Federation from CircleCI to the deployer, end to end, offline.

Real: the `gcloud` 528 binary (create-cred-config, auth login --cred-file, and google-auth inside
it doing the STS token exchange and the impersonation call, then the Deployment Manager calls),
scripts/deploy.sh, and scripts/gcp-bootstrap.sh, whose `--dry-run` output is where the provider's
issuer, audience, attribute mapping and condition and the workloadIdentityUser bindings come from
(parsed here, not copied). Emulated: Google's servers only. STS and IAM Credentials are
emulators/workload_identity.py (CEL by cel-python); the OAuth and Deployment Manager emulators
are the ones tests/pipeline/test_deploy.py uses (its Pipeline class). CircleCI's OIDC issuer is
emulators/oidc_issuer.py: its JWKS and discovery document on loopback, tokens signed here with
a throwaway key, claims as CircleCI documents them.

Sources the rules and claims follow:
  * CircleCI, "Using OpenID Connect tokens in jobs" (circleci.com/docs/openid-connect-tokens):
    `iss` is https://oidc.circleci.com/org/<org-id>, `aud` the org id, `sub` for
    CIRCLE_OIDC_TOKEN is org/<org>/project/<project>/user/<user> (three UUIDs: 127 bytes) and for
    CIRCLE_OIDC_TOKEN_V2 adds /vcs-origin/<origin>/vcs-ref/<ref>; additional claims
    oidc.circleci.com/project-id, context-ids, vcs-origin, vcs-ref, ssh-rerun, org-id.
  * Google, iam.v1 WorkloadIdentityPoolProvider (discovery document in google-api-python-client,
    cloud.google.com/iam/docs/reference/rest/v1/projects.locations.workloadIdentityPools.providers):
    attributeMapping values are CEL over `assertion`; `google.subject` "Cannot exceed 127 bytes";
    attributeCondition is CEL over assertion/google/attribute; allowedAudiences, else the
    provider's full resource name.
  * Google, sts.v1 and iamcredentials.v1 discovery documents: POST /v1/token (token exchange),
    POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken.
  * Google, "Principal identifiers" (cloud.google.com/iam/docs/principal-identifiers):
    principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/S
    and principalSet://.../attribute.NAME/VALUE, bound with roles/iam.workloadIdentityUser.
  * Google's STS error text for the subject limit ("The size of mapped attribute google.subject
    exceeds the 127 bytes limit"), as quoted in gitlab-org/gitlab!114147.

Endpoints: gcloud 528's create-cred-config always writes https://sts.googleapis.com and
https://iamcredentials.googleapis.com (command_lib/iam/byoid_utilities/cred_config.py: no flag,
and no api_endpoint_overrides property for STS). deploy.sh therefore rewrites just those two
origins in the file when WIF_STS_ENDPOINT / WIF_IAMCREDENTIALS_ENDPOINT are set, and
test_the_endpoint_rewrite_changes_only_the_two_urls checks the rest of gcloud's file is left
as gcloud wrote it. Everything gcloud does with the file afterwards is unmodified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from emulators import iam
from emulators.iam import flags
from emulators.oauth2 import new_service_account_key
from emulators.oidc_issuer import CIRCLECI_OIDC_ORIGIN, OidcIssuerEmulator
from emulators.workload_identity import WorkloadIdentityEmulator, parse_attribute_mapping
from tests.conftest import REPO
from tests.pipeline.test_deploy import DEPLOY, GCLOUD, Pipeline

BOOTSTRAP = REPO / "scripts" / "gcp-bootstrap.sh"
PROJECT_ID = "hello-proj"
PROJECT_NUMBER = "123456789012"
ORG_ID = str(uuid.uuid4())
CIRCLE_PROJECT_ID = str(uuid.uuid4())
USER_ID = str(uuid.uuid4())
LONG_ORIGIN = (
    "github.com/a-devops-organisation-with-a-rather-long-name/"
    "hello-world-web-server-on-compute-engine-deployment-manager-templates"
)

pytestmark = pytest.mark.skipif(GCLOUD is None, reason="needs the real gcloud on PATH")


SETTINGS = {
    "PROJECT_ID": PROJECT_ID,
    "PROJECT_NUMBER": PROJECT_NUMBER,
    "CIRCLE_ORG_ID": ORG_ID,
    "CIRCLE_PROJECT_ID": CIRCLE_PROJECT_ID,
}


def bootstrap_dry_run(engine: str = "dm", **overrides: str) -> str:
    """What `gcp-bootstrap.sh --engine ENGINE --dry-run` prints for this test's project and
    CircleCI ids."""
    return iam.bootstrap_dry_run(engine, **(SETTINGS | overrides))


def bootstrap_commands(engine: str = "dm", **overrides: str) -> list[list[str]]:
    return iam.bootstrap_commands(engine, **(SETTINGS | overrides))


def provider_command(commands: list[list[str]]) -> list[str]:
    (command,) = [
        c
        for c in commands
        if c[:4] == ["gcloud", "iam", "workload-identity-pools", "providers"]
        and c[4].endswith("-oidc")
    ]
    return command


def configure_from_bootstrap(sts: WorkloadIdentityEmulator, commands: list[list[str]]) -> str:
    """Adds the provider and the bindings the bootstrap script creates (workloadIdentityUser
    among them, in the STS emulator's policy), the way the IAM API would hold them; returns the
    provider's resource name."""
    command = provider_command(commands)
    f = flags(command)
    name = (
        f"projects/{PROJECT_NUMBER}/locations/{f['location']}/workloadIdentityPools/"
        f"{f['workload-identity-pool']}/providers/{command[5]}"
    )
    sts.add_provider(
        name,
        issuer_uri=f["issuer-uri"],
        # gcloud's --attribute-mapping is an ArgDict: KEY=VALUE pairs split on commas.
        attribute_mapping=parse_attribute_mapping(f["attribute-mapping"]),
        attribute_condition=f.get("attribute-condition"),
        allowed_audiences=f["allowed-audiences"].split(","),
    )
    sts.policy.add_bootstrap(commands)
    return name


def printed_contexts(out: str) -> dict[str, dict]:
    """The CircleCI contexts gcp-bootstrap.sh prints: each one's variables, and `restricted`."""
    contexts: dict[str, dict] = {}
    for line in out.split("CircleCI contexts")[1].splitlines():
        if line.startswith("  gcp-"):
            name = line.split()[0]
            contexts[name] = {"restricted": "restrict to" in line}
        elif line.startswith("    ") and "=" in line:
            key, _, value = line.strip().partition("=")
            contexts[name][key] = value
    return contexts


class CircleCI:
    """Mints tokens as CircleCI's issuer for this organization does."""

    def __init__(self, issuer: OidcIssuerEmulator):
        self.issuer = issuer

    def claims(self, version: int, ref: str = "refs/heads/master", **extra) -> dict:
        project = extra.pop("project_id", CIRCLE_PROJECT_ID)
        now = int(time.time())
        sub = f"org/{ORG_ID}/project/{project}/user/{USER_ID}"
        if version == 2:
            sub += f"/vcs-origin/{LONG_ORIGIN}/vcs-ref/{ref}"
        return {
            "iss": f"{CIRCLECI_OIDC_ORIGIN}/org/{ORG_ID}",
            "sub": sub,
            "aud": ORG_ID,
            "iat": now,
            "exp": now + 3600,
            "oidc.circleci.com/project-id": project,
            "oidc.circleci.com/org-id": ORG_ID,
            "oidc.circleci.com/context-ids": [str(uuid.uuid4())],
            "oidc.circleci.com/vcs-origin": LONG_ORIGIN,
            "oidc.circleci.com/vcs-ref": ref,
            "oidc.circleci.com/ssh-rerun": False,
        } | extra

    def token(self, version: int = 2, **kwargs) -> str:
        return self.issuer.mint(self.claims(version, **kwargs))


class Federation:
    def __init__(self, tmp: Path):
        self.pipeline = Pipeline(tmp)
        self.deployer = f"hello-deployer@{PROJECT_ID}.iam.gserviceaccount.com"
        self.pipeline.deployers.append(self.deployer)
        self.issuer = OidcIssuerEmulator(f"{CIRCLECI_OIDC_ORIGIN}/org/{ORG_ID}")
        self.issuer.serve()
        self.sts = WorkloadIdentityEmulator(
            issue_access_token=self.pipeline.oauth.issue,
            policy=self.pipeline.policy,
            url_overrides={CIRCLECI_OIDC_ORIGIN: self.issuer.base_url},
        )
        self.sts_url = self.sts.serve()
        self.commands = bootstrap_commands()
        self.provider = configure_from_bootstrap(self.sts, self.commands)
        self.circleci = CircleCI(self.issuer)
        self.previewer = f"hello-previewer@{PROJECT_ID}.iam.gserviceaccount.com"
        self.drift_checker = f"hello-drift-check@{PROJECT_ID}.iam.gserviceaccount.com"
        # The caller's own gcloud config: an operator's account, active, that deploy.sh must
        # neither write to nor switch away from.
        self.caller_config = tmp / "caller-gcloud"
        self.caller_config.mkdir()
        operator = f"operator@{PROJECT_ID}.iam.gserviceaccount.com"
        key, public_pem = new_service_account_key(operator, PROJECT_ID, self.pipeline.token_url)
        self.pipeline.oauth.register_key(operator, key["private_key_id"], public_pem)
        key_file = tmp / "operator.json"
        key_file.write_text(json.dumps(key))
        activated = subprocess.run(
            [GCLOUD, "auth", "activate-service-account", f"--key-file={key_file}", "--quiet"],
            env=self.pipeline.env(PROJECT_ID, config_dir=self.caller_config),
            capture_output=True,
            text=True,
            timeout=60,
        )
        key_file.unlink()
        assert activated.returncode == 0, activated.stderr
        self.operator = operator

    def deploy(
        self, project: str, *args: str, token: str | None = None, sa: str | None = None, **extra
    ):
        wif = {}
        if token is not None:
            wif = {
                "GCP_WIF_PROVIDER": self.provider,
                "GCP_DEPLOYER_SA": sa or self.deployer,
                "CIRCLE_OIDC_TOKEN_V2": token,
                "WIF_STS_ENDPOINT": self.sts_url,
                "WIF_IAMCREDENTIALS_ENDPOINT": self.sts_url,
            }
        return self.pipeline.deploy(
            project, *args, CLOUDSDK_CONFIG=str(self.caller_config), **wif, **extra
        )

    def caller_files(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.caller_config)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.caller_config.rglob("*"))
            if p.is_file()
        }

    def caller_active_account(self) -> str:
        listed = subprocess.run(
            [GCLOUD, "auth", "list", "--format=value(account)", "--filter=status:ACTIVE"],
            env=self.pipeline.env(PROJECT_ID, config_dir=self.caller_config),
            capture_output=True,
            text=True,
            check=True,
        )
        return listed.stdout.strip()

    def close(self) -> None:
        self.sts.shutdown()
        self.issuer.shutdown()
        self.pipeline.close()


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    federation = Federation(tmp_path_factory.mktemp("wif"))
    yield federation
    federation.close()


def test_circleci_subjects_are_at_or_over_googles_limit(federation):
    """Why google.subject cannot be `assertion.sub`: CircleCI's V1 sub is three UUIDs, exactly
    127 bytes; V2 adds the repository and ref, well past Google's 127-byte limit."""
    v1 = federation.circleci.claims(1)["sub"]
    v2 = federation.circleci.claims(2)["sub"]
    assert len(v1.encode()) == 127
    assert len(v2.encode()) > 127


@pytest.mark.parametrize("version", [2, 1])
def test_deploy_with_a_circleci_token_through_sts_and_impersonation(federation, version):
    """deploy.sh with CircleCI's token (V2 as in CI, and V1) on master: gcloud exchanges it at
    STS, which verifies it against CircleCI's JWKS and applies the bootstrap script's mapping and
    condition; impersonates the deployer, whose policy binds the master ref's principal set; and
    deploys with the deployer's token. The caller's gcloud config is byte-identical afterwards and
    its active account is still the operator's.
    """
    project = f"proj-wif-v{version}"
    before = federation.caller_files()
    exchanges = len(federation.sts.exchanges)
    result = federation.deploy(project, token=federation.circleci.token(version))
    assert result.returncode == 0, result.stderr
    assert "does not exist: creating it" in result.stderr

    (exchange,) = federation.sts.exchanges[exchanges:]
    assert exchange["google"]["subject"] == CIRCLE_PROJECT_ID
    assert exchange["attribute"]["vcs_ref"] == "refs/heads/master"
    assert exchange["attribute"]["vcs_origin"] == LONG_ORIGIN
    pool = federation.provider.split("/providers/")[0]
    assert (
        f"principal://iam.googleapis.com/{pool}/subject/{CIRCLE_PROJECT_ID}",
        federation.deployer,
    ) in federation.sts.impersonations
    # DM saw the deployer: the emulator answers 401 to any token the OAuth emulator did not issue.
    assert federation.pipeline.dm.live_manifest(project, "hello") is not None

    assert federation.caller_files() == before
    assert federation.caller_active_account() == federation.operator


def test_a_key_run_leaves_the_callers_gcloud_config_as_it_was(federation):
    """The key fallback (GCP_SA_KEY_B64) logs in inside deploy.sh's own config: every file under
    the caller's CLOUDSDK_CONFIG hashes the same afterwards, and the active account is unchanged.
    """
    before = federation.caller_files()
    result = federation.deploy("proj-key", GCP_SA_KEY_B64=federation.pipeline.key_b64)
    assert result.returncode == 0, result.stderr
    assert federation.caller_files() == before
    assert federation.caller_active_account() == federation.operator


def test_a_token_from_another_circleci_project_is_refused(federation):
    """A token CircleCI issued for another project of the same organization (same issuer, same
    audience, valid signature) fails the attribute condition: exit 3, DM never called."""
    requests = len(federation.pipeline.dm.requests)
    token = federation.circleci.token(2, project_id=str(uuid.uuid4()))
    result = federation.deploy("proj-other", "--auth-only", token=token)
    assert result.returncode == 3, result.stderr
    assert federation.sts.rejections[-1] == (
        "The given credential is rejected by the attribute condition."
    )
    assert len(federation.pipeline.dm.requests) == requests


def test_a_branch_token_may_preview_but_not_deploy(federation):
    """A branch's token passes the provider (same project) but is not in the deployer's
    principal set (vcs_ref is not master): generateAccessToken for the deployer is refused. The
    same token may become the preview service account."""
    token = federation.circleci.token(2, ref="refs/heads/feature/try-something")
    refused = federation.deploy("proj-branch", "--auth-only", token=token)
    assert refused.returncode == 3, refused.stderr
    assert "iam.serviceAccounts.getAccessToken' denied" in federation.sts.rejections[-1]

    allowed = federation.deploy("proj-branch", "--auth-only", token=token, sa=federation.previewer)
    assert allowed.returncode == 0, allowed.stderr


def test_the_drift_check_account_is_master_only_and_holds_compute_viewer_alone(
    federation, monkeypatch
):
    """The scheduled drift check runs on master: `make drift` (drift.live, google-auth's
    identity-pool credentials, no gcloud) exchanges master's token at STS, becomes the
    drift-check account and reads the deployed stack with it; a branch's token may not. On the
    project, the bootstrap grants that account one role, roles/compute.viewer (read-only), and
    no binding lets it act as another account. With that token, the real gcloud lists and
    describes the stack's VM, and Compute Engine refuses deleting a firewall rule or the VM
    (403; gcloud prints the permission the account lacks), as the console incident would need."""
    from google.auth.exceptions import RefreshError
    from google.auth.transport.requests import Request

    from drift import cli, live

    monkeypatch.setenv("GCP_DEPLOYER_SA", federation.drift_checker)
    monkeypatch.setenv("WIF_STS_ENDPOINT", federation.sts_url)
    monkeypatch.setenv("WIF_IAMCREDENTIALS_ENDPOINT", federation.sts_url)
    monkeypatch.setenv("CIRCLE_OIDC_TOKEN_V2", federation.circleci.token(2))
    master = live.federated_credentials(federation.provider)
    master.refresh(Request())
    assert master.token and (
        ("principal://iam.googleapis.com/" + federation.provider.split("/providers/")[0]
         + f"/subject/{CIRCLE_PROJECT_ID}", federation.drift_checker)
        in federation.sts.impersonations
    )  # fmt: skip
    # And reads the stack with it: `drift check` through the emulated Compute Engine API.
    project = PROJECT_ID  # where the bootstrap granted the drift checker its role
    federation.pipeline.ensure_deployed(project)
    monkeypatch.setenv("GCP_WIF_PROVIDER", federation.provider)
    monkeypatch.setenv("GCP_PROJECT", project)
    monkeypatch.chdir(REPO)
    api = federation.pipeline.dm.compute_url
    assert cli.main(["check", "--api-root", api]) == cli.EXIT_OK

    token_file = federation.pipeline.tmp / "drift-check-token"
    token_file.write_text(master.token)
    env = federation.pipeline.env(
        project,
        CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE=api,
        CLOUDSDK_AUTH_ACCESS_TOKEN_FILE=str(token_file),
    )

    def gcloud_compute(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [GCLOUD, "compute", *args, "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    zone = "--zone=us-central1-a"
    listed = gcloud_compute("instances", "list", "--format=value(name)")
    assert listed.returncode == 0 and listed.stdout.split() == ["hello-vm"], listed.stderr
    described = gcloud_compute("instances", "describe", "hello-vm", zone, "--format=value(name)")
    assert described.returncode == 0, described.stderr
    rule = sorted(federation.pipeline.dm.cloud_resources(project)["compute.v1.firewall"])[0]
    for args, permission, resource in (
        (("firewall-rules", "delete", rule), "compute.firewalls.delete",
         f"projects/{project}/global/firewalls/{rule}"),
        (("instances", "delete", "hello-vm", zone), "compute.instances.delete",
         f"projects/{project}/zones/us-central1-a/instances/hello-vm"),
    ):  # fmt: skip
        refused = gcloud_compute(*args)
        assert refused.returncode == 1, refused.stderr
        assert f"Required '{permission}' permission for '{resource}'" in refused.stderr
    assert federation.pipeline.dm.cloud_resources(project)["compute.v1.instance"]

    monkeypatch.setenv("CIRCLE_OIDC_TOKEN_V2", federation.circleci.token(2, ref="refs/heads/x"))
    with pytest.raises(RefreshError):
        live.federated_credentials(federation.provider).refresh(Request())
    assert "iam.serviceAccounts.getAccessToken' denied" in federation.sts.rejections[-1]

    member = f"serviceAccount:{federation.drift_checker}"
    granted = [
        flags(c)["role"]
        for c in federation.commands
        if c[:3] == ["gcloud", "projects", "add-iam-policy-binding"]
        and flags(c)["member"] == member
    ]
    assert granted == ["roles/compute.viewer"]
    acts_as = [
        c for c in federation.commands
        if c[:4] == ["gcloud", "iam", "service-accounts", "add-iam-policy-binding"]
        and flags(c)["member"] == member
    ]  # fmt: skip
    assert acts_as == []


def test_an_ssh_rerun_token_is_refused(federation):
    """A job re-run with SSH (a person holds a shell) gets no credentials, even on master."""
    token = federation.circleci.token(2, **{"oidc.circleci.com/ssh-rerun": True})
    result = federation.deploy("proj-ssh", "--auth-only", token=token)
    assert result.returncode == 3, result.stderr
    assert "rejected by the attribute condition" in federation.sts.rejections[-1]


def test_a_forged_or_misaddressed_token_is_refused(federation):
    """Signed by a key not in CircleCI's JWKS (same kid); or addressed to another audience: STS
    refuses both before any mapping."""
    claims = federation.circleci.claims(2)
    forged = federation.issuer.mint(
        claims, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    result = federation.deploy("proj-forged", "--auth-only", token=forged)
    assert result.returncode == 3
    assert federation.sts.rejections[-1] == "Invalid JWT signature."

    misaddressed = federation.issuer.mint(claims | {"aud": "some-other-org"})
    result = federation.deploy("proj-forged", "--auth-only", token=misaddressed)
    assert result.returncode == 3
    assert "does not match the expected audience" in federation.sts.rejections[-1]


def test_a_mapping_whose_subject_exceeds_127_bytes_is_refused(federation):
    """The old mapping, google.subject=assertion.sub, on a second provider: the V2 token is
    refused with Google's 127-byte message, whatever the condition; the V1 sub (exactly 127
    bytes) still fits. This is what failed every deploy."""
    f = flags(provider_command(federation.commands))
    old = federation.provider.replace("/providers/circleci", "/providers/circleci-old")
    federation.sts.add_provider(
        old,
        issuer_uri=f["issuer-uri"],
        attribute_mapping={"google.subject": "assertion.sub"},
        allowed_audiences=[ORG_ID],
    )
    base = {
        "GCP_WIF_PROVIDER": old,
        "WIF_STS_ENDPOINT": federation.sts_url,
        "WIF_IAMCREDENTIALS_ENDPOINT": federation.sts_url,
        "GCP_DEPLOYER_SA": federation.deployer,
        "CLOUDSDK_CONFIG": str(federation.caller_config),
    }
    v2 = federation.pipeline.deploy(
        "proj-old", "--auth-only", **base, CIRCLE_OIDC_TOKEN_V2=federation.circleci.token(2)
    )
    assert v2.returncode == 3
    assert federation.sts.rejections[-1].startswith(
        "The size of mapped attribute google.subject exceeds the 127 bytes limit."
    )
    exchanges = len(federation.sts.exchanges)
    v1 = federation.pipeline.deploy(
        "proj-old", "--auth-only", **base, CIRCLE_OIDC_TOKEN_V2=federation.circleci.token(1)
    )
    # Exchanged (then refused impersonation: no binding names this subject).
    assert len(federation.sts.exchanges) == exchanges + 1
    assert v1.returncode == 3


def test_the_endpoint_rewrite_changes_only_the_two_urls(federation, tmp_path):
    """What deploy.sh feeds to `gcloud auth login --cred-file` differs from gcloud's own
    create-cred-config output only in the STS and IAM Credentials origins."""
    token_file = tmp_path / "token"
    token_file.write_text("t")
    env = federation.pipeline.env(PROJECT_ID, config_dir=tmp_path / "g")
    written = tmp_path / "cred.json"
    subprocess.run(
        [
            GCLOUD,
            "iam",
            "workload-identity-pools",
            "create-cred-config",
            federation.provider,
            f"--service-account={federation.deployer}",
            f"--credential-source-file={token_file}",
            f"--output-file={written}",
        ],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    script = (
        f"source <(sed -n '/^override_wif_endpoints()/,/^}}/p' {shlex.quote(str(DEPLOY))}); "
        f'die() {{ echo "$*" >&2; exit 3; }}; override_wif_endpoints {shlex.quote(str(written))}'
    )
    original = json.loads(written.read_text())
    subprocess.run(
        ["bash", "-c", script],
        env={
            "PATH": os.environ["PATH"],
            "WIF_STS_ENDPOINT": "http://127.0.0.1:1",
            "WIF_IAMCREDENTIALS_ENDPOINT": "http://127.0.0.1:2",
        },
        check=True,
    )
    rewritten = json.loads(written.read_text())
    assert rewritten["token_url"] == "http://127.0.0.1:1/v1/token"
    assert rewritten["service_account_impersonation_url"] == (
        f"http://127.0.0.1:2/v1/projects/-/serviceAccounts/{federation.deployer}:generateAccessToken"
    )
    for key in ("token_url", "service_account_impersonation_url"):
        del original[key], rewritten[key]
    assert rewritten == original


def test_bootstrap_dry_run_runs_nothing_and_every_create_is_described_first(tmp_path):
    """--dry-run only prints: it passes with only bash and cat on PATH (a gcloud call would fail).
    Every create is preceded by its describe, so a re-run creates nothing twice, for either
    engine. A missing setting, or a missing engine, is named."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    expected = {
        # three service accounts, the preview role, the pool, the provider
        "dm": 6,
        # five service accounts, the preview role, the bucket, its three roles, pool, provider
        "infra-manager": 12,
    }
    for engine, count in expected.items():
        commands = bootstrap_commands(engine, PATH=str(bin_dir))
        creates = [c for c in commands if {"create", "create-oidc"} & set(c)]
        assert len(creates) == count, engine
        for create in creates:
            before = commands[commands.index(create) - 1]
            assert "describe" in before, f"{shlex.join(create)} is not preceded by a describe"
    missing = subprocess.run(
        [str(BOOTSTRAP), "--engine", "dm", "--dry-run"],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "set PROJECT_ID" in missing.stderr
    no_engine = subprocess.run(
        [str(BOOTSTRAP), "--dry-run"], env={"PATH": str(bin_dir)}, capture_output=True, text=True
    )
    assert no_engine.returncode == 2 and "--engine infra-manager" in no_engine.stderr


def test_branch_jobs_use_the_unrestricted_preview_context():
    """CircleCI fails a job whose context's restrictions it does not meet (Unauthorized; see
    support.circleci.com "Troubleshooting Builds Unauthorized due to contexts"), so a branch job
    must not use the master-only context. The contexts gcp-bootstrap.sh prints: gcp-deploy is
    restricted and holds the deployer; gcp-preview is not and holds the previewer. The CircleCI
    config gives each job the matching one."""
    contexts = printed_contexts(bootstrap_dry_run())
    assert contexts["gcp-deploy"]["restricted"]
    assert contexts["gcp-deploy"]["GCP_DEPLOYER_SA"].startswith("hello-deployer@")
    assert not contexts["gcp-preview"]["restricted"]
    assert contexts["gcp-preview"]["GCP_DEPLOYER_SA"].startswith("hello-previewer@")

    assert contexts["gcp-drift"]["restricted"]
    assert contexts["gcp-drift"]["GCP_DEPLOYER_SA"].startswith("hello-drift-check@")

    config = yaml.safe_load((REPO / ".circleci" / "config.yml").read_text())
    workflow = config["workflows"]["test-preview-deploy"]
    jobs = {
        name: settings
        for entry in workflow["jobs"]
        if isinstance(entry, dict)
        for name, settings in entry.items()
    }
    assert jobs["preview"]["context"] == "gcp-preview"
    assert jobs["preview"]["filters"]["branches"] == {"ignore": "master"}
    assert jobs["deploy"]["context"] == "gcp-deploy"


def post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_emulator_refuses_what_google_documents_as_invalid(federation):
    """Request shapes gcloud never sends but Google refuses, straight over HTTP: an
    Authorization header on the token exchange, an unknown provider, no scope; a project id in
    place of the `-` wildcard, a lifetime over an hour, no bearer token. And provider settings the
    IAM API refuses: a mapping without google.subject, a key outside [a-z0-9_], invalid CEL.

    Real: nothing but HTTP. Emulated: STS and IAM Credentials.
    """
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "subject_token": federation.circleci.token(2),
        "audience": f"//iam.googleapis.com/{federation.provider}",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
    }
    url_form = {"Content-Type": "application/x-www-form-urlencoded"}

    def exchange(headers=url_form, **changes) -> tuple[int, dict]:
        body = urllib.parse.urlencode({k: v for k, v in (form | changes).items() if v}).encode()
        return post(f"{federation.sts_url}/v1/token", body, headers)

    status, ok = exchange()
    assert status == 200 and ok["token_type"] == "Bearer"
    assert exchange(url_form | {"Authorization": "Bearer x"})[0] == 400
    assert (
        exchange(
            audience="//iam.googleapis.com/projects/1/locations/global/"
            "workloadIdentityPools/none/providers/none"
        )[1]["error"]
        == "invalid_target"
    )
    assert exchange(scope="")[0] == 400

    def generate(name: str, body: dict, token: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{federation.sts_url}/v1/{name}:generateAccessToken"
        return post(url, json.dumps(body).encode(), headers)[0]

    scope = {"scope": ["https://www.googleapis.com/auth/cloud-platform"]}
    sa = f"projects/-/serviceAccounts/{federation.deployer}"
    assert generate(sa, scope, ok["access_token"]) == 200
    assert generate(sa.replace("/-/", f"/{PROJECT_ID}/"), scope, ok["access_token"]) == 400
    assert generate(sa, scope | {"lifetime": "7200s"}, ok["access_token"]) == 400
    assert generate(sa, {}, ok["access_token"]) == 400
    assert generate(sa, scope, None) == 401

    issuer = f"{CIRCLECI_OIDC_ORIGIN}/org/{ORG_ID}"
    name = federation.provider.replace("/providers/circleci", "/providers/circleci-bad")
    for mapping in (
        {"attribute.project_id": "assertion.sub"},
        {"google.subject": "assertion.sub", "attribute.Vcs-Ref": "assertion.sub"},
        {"google.subject": "assertion["},
    ):
        with pytest.raises(ValueError):
            federation.sts.add_provider(name, issuer, mapping)


def test_the_private_dir_with_the_login_is_gone_after_a_cancelled_run(federation, tmp_path):
    """CircleCI cancelling a job, or Ctrl-C, signals the whole process group mid-deploy: the
    private dir holding the OIDC token, the credential config and gcloud's own config (with the
    deployer's login) is removed all the same."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = federation.pipeline.env(
        "proj-cancelled",
        config_dir=federation.caller_config,
        TMPDIR=str(tmpdir),
        GCP_WIF_PROVIDER=federation.provider,
        GCP_DEPLOYER_SA=federation.deployer,
        CIRCLE_OIDC_TOKEN_V2=federation.circleci.token(2),
        WIF_STS_ENDPOINT=federation.sts_url,
        WIF_IAMCREDENTIALS_ENDPOINT=federation.sts_url,
    )
    process = subprocess.Popen(
        [str(DEPLOY)],
        cwd=federation.pipeline.stack,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmpdir.glob("tmp.*/gcloud/credentials.db")):
            assert process.poll() is None, "deploy.sh ended before it logged in"
            assert time.monotonic() < deadline, "deploy.sh never logged in"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    time.sleep(1)  # anything still running of the group would have written by now
    assert not list(tmpdir.iterdir()), "deploy.sh left its private dir behind"
