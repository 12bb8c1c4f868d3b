"""network.py: a custom-mode VPC and one subnet, as deployment.yaml configures them."""

import pytest
import yaml

from tests.conftest import REPO, by_name, copy_stack, deployment_properties, render, run_dmlocal


def rendered():
    return by_name(render("network.py", "hello-vpc", deployment_properties("hello-vpc")))


def test_network_is_custom_mode():
    network = rendered()["hello-vpc"]
    assert network["type"] == "compute.v1.network"
    assert network["properties"]["autoCreateSubnetworks"] is False


def test_exactly_one_network_and_one_subnet():
    assert sorted((r["type"], n) for n, r in rendered().items()) == [
        ("compute.v1.network", "hello-vpc"),
        ("compute.v1.subnetwork", "hello-vpc-subnet"),
    ]


def test_subnet_takes_region_and_cidr_from_deployment_yaml_and_joins_the_vpc():
    configured = deployment_properties("hello-vpc")
    subnet = rendered()["hello-vpc-subnet"]["properties"]
    assert subnet["region"] == configured["region"]
    assert subnet["ipCidrRange"] == configured["subnetCidr"]
    assert subnet["network"] == "$(ref.hello-vpc.selfLink)"
    assert subnet["privateIpGoogleAccess"] is True


def test_other_values_flow_through():
    result = by_name(
        render("network.py", "edge", {"region": "europe-west1", "subnetCidr": "10.0.8.0/22"})
    )
    assert result["edge-subnet"]["properties"]["region"] == "europe-west1"
    assert result["edge-subnet"]["properties"]["ipCidrRange"] == "10.0.8.0/22"
    assert result["edge-subnet"]["properties"]["network"] == "$(ref.edge.selfLink)"


def test_subnet_flow_logs_take_their_settings_from_deployment_yaml():
    configured = deployment_properties("hello-vpc")
    log_config = rendered()["hello-vpc-subnet"]["properties"]["logConfig"]
    assert log_config == {
        "enable": True,
        "aggregationInterval": configured["flowLogAggregationInterval"],
        "flowSampling": configured["flowLogSampling"],
        "metadata": configured["flowLogMetadata"],
    }


def test_flow_logs_default_to_the_schemas_values_and_can_be_tuned():
    minimal = {"region": "europe-west1", "subnetCidr": "10.0.8.0/22"}
    schema = yaml.safe_load((REPO / "network.py.schema").read_text())["properties"]
    log_config = by_name(render("network.py", "edge", minimal))["edge-subnet"]["properties"][
        "logConfig"
    ]
    assert log_config["aggregationInterval"] == schema["flowLogAggregationInterval"]["default"]
    assert log_config["flowSampling"] == schema["flowLogSampling"]["default"]
    assert log_config["metadata"] == schema["flowLogMetadata"]["default"]
    tuned = {**minimal, "flowLogSampling": 0.25, "flowLogAggregationInterval": "INTERVAL_1_MIN"}
    log_config = by_name(render("network.py", "edge", tuned))["edge-subnet"]["properties"][
        "logConfig"
    ]
    assert (log_config["flowSampling"], log_config["aggregationInterval"]) == (
        0.25,
        "INTERVAL_1_MIN",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("flowLogSampling", 1.5), ("flowLogAggregationInterval", "INTERVAL_7_SEC")],
)
def test_bad_flow_log_settings_fail_preview_naming_the_field(tmp_path, field, value):
    stack = copy_stack(tmp_path)
    config = stack / "deployment.yaml"
    config.write_text(
        config.read_text().replace(
            f"      {field}: {deployment_properties('hello-vpc')[field]}\n",
            f"      {field}: {value}\n",
        )
    )
    result = run_dmlocal("preview", "deployment.yaml", cwd=stack)
    assert result.returncode != 0
    assert field in result.stderr
    assert "hello-vpc" in result.stderr
