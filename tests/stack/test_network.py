"""network.py: a custom-mode VPC and one subnet, as deployment.yaml configures them."""

from tests.conftest import by_name, deployment_properties, render


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
