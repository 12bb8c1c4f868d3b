"""The uptime check and the alert, deployed by scripts/deploy.sh through both engines, offline.

Real: the `gcloud` 528 binary, scripts/deploy.sh (and scripts/lib/infra-manager.sh),
deployment.yaml and vm.py, the dmlocal expansion, `dmlocal terraform` and the google provider
6.50.0 schema the upload is checked against. Emulated: Google's servers (Deployment Manager,
Infrastructure Manager, Cloud Storage, OAuth, as in test_deploy.py and
test_deploy_infra_manager.py) and Cloud Monitoring, whose documented rules and refusals
emulators/monitoring.py applies to what either engine creates.
"""

from __future__ import annotations

import json

import pytest

from emulators import monitoring
from tests.conftest import copy_stack
from tests.pipeline.test_deploy import Pipeline, edit_config
from tests.pipeline.test_deploy_infra_manager import InfraManagerPipeline
from tests.pipeline.test_wif import bootstrap_commands, flags

EMAIL = "oncall@example.com"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Both engines' emulators, as test_deploy_infra_manager.py sets them up, with a stack that
    mails EMAIL: the check, the channel and the alert are all deployed."""
    pipeline = InfraManagerPipeline(tmp_path_factory.mktemp("monitoring-pipeline"))
    key_file = pipeline.tmp / "key.json"
    key_file.write_text(json.dumps(pipeline.key))
    activated = pipeline.gcloud("p", "auth", "activate-service-account", f"--key-file={key_file}")
    key_file.unlink()
    assert activated.returncode == 0, activated.stderr
    edit_config(pipeline.stack, 'alertEmail: ""', f"alertEmail: {EMAIL}")
    yield pipeline
    pipeline.close()


def deploy(pipeline: InfraManagerPipeline, project: str, engine: str):
    if engine == "dm":
        return Pipeline.deploy(pipeline, project, DEPLOY_ENGINE="dm")
    return pipeline.deploy(project)


def monitoring_objects(pipeline, project: str) -> dict[str, dict]:
    cloud = pipeline.dm.cloud_resources(project)
    return {name: body for type_ in monitoring.TYPES for name, body in cloud.get(type_, {}).items()}


@pytest.mark.parametrize("engine", ["dm", "infra-manager"])
def test_the_check_and_the_alert_exist_and_point_at_the_public_ip(pipeline, engine):
    """Deploying with alertEmail set creates the uptime check on the static IP (HTTPS, the
    certificate validated), the email channel, and an alert policy that notifies that channel
    by its server-assigned name, on either engine."""
    project = f"mon-{engine}"
    result = deploy(pipeline, project, engine)
    assert result.returncode == 0, result.stderr
    ip = pipeline.dm.cloud_resources(project)["compute.v1.address"]["hello-vm-ip"]["address"]
    objects = monitoring_objects(pipeline, project)
    assert set(objects) == {"hello-vm-uptime", "hello-vm-alert-email", "hello-vm-down-alert"}
    check, channel, policy = (
        objects["hello-vm-uptime"],
        objects["hello-vm-alert-email"],
        objects["hello-vm-down-alert"],
    )
    assert check["name"].startswith(f"projects/{project}/uptimeCheckConfigs/")
    assert check["monitoredResource"]["labels"] == {"project_id": project, "host": ip}
    assert check["httpCheck"] == {"path": "/", "port": 443, "useSsl": True, "validateSsl": True}
    assert channel["labels"] == {"email_address": EMAIL}
    assert policy["notificationChannels"] == [channel["name"]]
    (condition,) = policy["conditions"]
    assert f'resource.label.host="{ip}"' in condition["conditionThreshold"]["filter"]


@pytest.mark.parametrize("engine", ["dm", "infra-manager"])
def test_monitoring_refuses_too_few_checker_locations(pipeline, tmp_path, engine):
    """Two one-location regions are fewer than the three checker locations Monitoring demands:
    the deploy fails with Monitoring's reason, and no uptime check exists."""
    stack = copy_stack(tmp_path)
    vm = stack / "vm.py"
    text = vm.read_text()
    assert 'UPTIME_REGIONS = ["USA", "EUROPE", "ASIA_PACIFIC"]' in text
    vm.write_text(text.replace('["USA", "EUROPE", "ASIA_PACIFIC"]', '["EUROPE", "ASIA_PACIFIC"]'))
    project = f"mon-few-{engine}"
    if engine == "dm":
        result = Pipeline.deploy(pipeline, project, stack=stack, DEPLOY_ENGINE="dm")
    else:
        result = pipeline.deploy(project, stack=stack)
    assert result.returncode != 0
    assert "fewer than 3 checker locations" in result.stderr
    assert "hello-vm-uptime" not in monitoring_objects(pipeline, project)


def test_turning_the_check_off_removes_alert_channel_and_check_in_order(pipeline):
    """uptimeCheck: false (and alertEmail: "") on a deployed stack deletes the policy before
    the channel it uses (Monitoring refuses the other order), then the check."""
    project = "mon-off"
    assert deploy(pipeline, project, "dm").returncode == 0
    edit_config(pipeline.stack, f"alertEmail: {EMAIL}", 'alertEmail: ""')
    edit_config(pipeline.stack, "uptimeCheck: true", "uptimeCheck: false")
    try:
        result = deploy(pipeline, project, "dm")
    finally:
        edit_config(pipeline.stack, 'alertEmail: ""', f"alertEmail: {EMAIL}")
        edit_config(pipeline.stack, "uptimeCheck: false", "uptimeCheck: true")
    assert result.returncode == 0, result.stderr
    assert monitoring_objects(pipeline, project) == {}


def test_a_channel_an_alert_uses_cannot_be_deleted():
    """Monitoring's documented refusal, on the emulated cloud directly: deleting a notification
    channel an alert policy references fails unless force is set."""
    channel = {"name": "projects/p/notificationChannels/1"}
    policy = {"name": "projects/p/alertPolicies/2", "notificationChannels": [channel["name"]]}
    objects = {monitoring.POLICY: {"alert": policy}, monitoring.CHANNEL: {"mail": channel}}
    with pytest.raises(monitoring.Refused, match="used by alert policies"):
        monitoring.check_delete(monitoring.CHANNEL, channel, objects)
    monitoring.check_delete(monitoring.CHANNEL, channel, {monitoring.CHANNEL: {"mail": channel}})


def test_the_bootstrap_grants_exactly_the_three_monitoring_editor_roles():
    """The identity that creates the objects, the account Infrastructure Manager runs Terraform
    as, gets the three per-object editor roles Google names for API users and no broader
    Monitoring role; the read-only preview account gets roles/monitoring.viewer. With Deployment
    Manager, which creates them as its own service agent, and for the CircleCI identities of
    either engine, no monitoring role at all. Real: scripts/gcp-bootstrap.sh --dry-run."""
    wanted = {
        "hello-infra-manager": {
            "roles/monitoring.uptimeCheckConfigEditor",
            "roles/monitoring.notificationChannelEditor",
            "roles/monitoring.alertPolicyEditor",
        },
        "hello-infra-manager-preview": {"roles/monitoring.viewer"},
    }
    for engine in ("dm", "infra-manager"):
        granted: dict[str, set[str]] = {}
        for argv in bootstrap_commands(engine):
            if "add-iam-policy-binding" in argv and argv[1] == "projects":
                member = flags(argv)["member"].split("@")[0].removeprefix("serviceAccount:")
                granted.setdefault(member, set()).add(flags(argv)["role"])
        for member, roles in granted.items():
            monitoring_roles = {r for r in roles if r.startswith("roles/monitoring.")}
            assert monitoring_roles == wanted.get(member, set()), (engine, member)
        assert engine == "dm" or set(wanted) <= set(granted)
