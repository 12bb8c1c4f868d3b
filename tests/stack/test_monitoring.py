"""vm.py's Cloud Monitoring resources: the uptime check on the static IP and the alert on it.

Real: vm.py and vm.py.schema run as DM runs them (schema defaults applied), and the Monitoring v3
discovery document from google-api-python-client. Nothing is emulated here.
"""

import pytest

from dmlocal.compute_api import check_resource, discovery
from dmlocal.errors import ConfigError
from tests.conftest import REPO, deployment_properties, render

CHECK = "gcp-types/monitoring-v3:projects.uptimeCheckConfigs"
CHANNEL = "gcp-types/monitoring-v3:projects.notificationChannels"
POLICY = "gcp-types/monitoring-v3:projects.alertPolicies"


def monitoring(**overrides) -> dict[str, dict]:
    """The Monitoring resources vm.py declares, by type."""
    properties = {**deployment_properties("hello-vm"), **overrides}
    resources = render("vm.py", "hello-vm", properties)["resources"]
    found = {r["type"]: r for r in resources if r["type"].startswith("gcp-types/monitoring")}
    names = [r["name"] for r in resources if r["type"].startswith("gcp-types/monitoring")]
    assert len(found) == len(names), "one resource of each Monitoring type at most"
    return found


def check(**overrides) -> dict:
    return monitoring(**overrides)[CHECK]["properties"]


def test_the_check_probes_the_static_ip_from_at_least_three_regions():
    properties = check()
    assert properties["monitoredResource"] == {
        "type": "uptime_url",
        "labels": {"project_id": "test-project", "host": "$(ref.hello-vm-ip.address)"},
    }
    assert properties["parent"] == "projects/test-project"
    # USA alone is three checker locations, the other regions one each (docs/monitoring.md).
    locations = {"USA": 3, "EUROPE": 1, "SOUTH_AMERICA": 1, "ASIA_PACIFIC": 1}
    assert sum(locations.get(region, 1) for region in properties["selectedRegions"]) >= 3
    assert len(set(properties["selectedRegions"])) >= 3, "three distinct regions"


def test_the_check_expects_the_greeting_app_py_serves_on_slash():
    app = (REPO / "app" / "app.py").read_text()
    properties = check()
    (matcher,) = properties["contentMatchers"]
    assert matcher["matcher"] == "CONTAINS_STRING"
    assert f'GREETING = "{matcher["content"]}"' in app
    assert properties["httpCheck"]["path"] == "/"


def test_https_with_certificate_validation_when_acme_directory_is_set():
    http = check(acmeDirectory="https://acme.example/directory")["httpCheck"]
    assert (http["port"], http["useSsl"], http["validateSsl"]) == (443, True, True)


def test_plain_http_on_80_when_https_is_off():
    http = check(acmeDirectory="")["httpCheck"]
    assert (http["port"], http["useSsl"], http["validateSsl"]) == (80, False, False)


def test_certificate_validation_can_be_turned_off_alone():
    http = check(uptimeCheckValidatesCertificate=False)["httpCheck"]
    assert (http["port"], http["useSsl"], http["validateSsl"]) == (443, True, False)


def test_no_alert_without_alert_email():
    assert set(monitoring(alertEmail="")) == {CHECK}


def test_alert_email_adds_an_email_channel_and_a_policy_that_notifies_it():
    found = monitoring(alertEmail="oncall@example.com")
    channel, policy = found[CHANNEL], found[POLICY]["properties"]
    assert channel["properties"]["type"] == "email"
    assert channel["properties"]["labels"] == {"email_address": "oncall@example.com"}
    assert policy["notificationChannels"] == [f"$(ref.{channel['name']}.name)"]
    assert policy["name"] == channel["properties"]["name"] == "projects/test-project"


def test_the_alert_fires_when_more_than_one_region_fails_for_minutes():
    policy = monitoring(alertEmail="oncall@example.com")[POLICY]["properties"]
    (condition,) = policy["conditions"]
    threshold = condition["conditionThreshold"]
    assert (
        'metric.type="monitoring.googleapis.com/uptime_check/check_passed"' in threshold["filter"]
    )
    assert 'resource.label.host="$(ref.hello-vm-ip.address)"' in threshold["filter"]
    (aggregation,) = threshold["aggregations"]
    # Failing checker series are counted per host; more than one is an outage.
    assert aggregation["crossSeriesReducer"] == "REDUCE_COUNT_FALSE"
    assert aggregation["groupByFields"] == ["resource.label.host"]
    assert (threshold["comparison"], threshold["thresholdValue"]) == ("COMPARISON_GT", 1)
    assert 120 <= int(threshold["duration"].rstrip("s")) <= 600, "a few minutes"


def test_uptime_check_false_removes_check_and_alert():
    assert monitoring(uptimeCheck=False) == {}


def test_an_alert_without_its_check_is_refused_naming_both_properties():
    with pytest.raises(ValueError, match="alertEmail is set but uptimeCheck is false"):
        monitoring(uptimeCheck=False, alertEmail="oncall@example.com")


def test_alert_email_must_be_an_address():
    with pytest.raises(ConfigError, match="alertEmail"):
        monitoring(alertEmail="oncall")


@pytest.mark.parametrize("acme", ["", "https://acme.example/directory"])
def test_every_body_passes_the_monitoring_v3_schema(acme):
    for resource in monitoring(acmeDirectory=acme, alertEmail="oncall@example.com").values():
        assert check_resource(resource, "vm.py") == [], resource["name"]


def test_the_regions_are_values_the_api_accepts():
    schema = discovery("monitoring.v3")["schemas"]["UptimeCheckConfig"]
    valid = schema["properties"]["selectedRegions"]["items"]["enum"]
    assert set(check()["selectedRegions"]) <= set(valid) - {"REGION_UNSPECIFIED"}
