"""vm.py: the instance's wiring, its hardening, and the app it carries in metadata."""

import pytest

from dmlocal.errors import ConfigError
from tests.conftest import REPO, by_name, deployment_imports, deployment_properties, render


def rendered(**overrides):
    properties = {**deployment_properties("hello-vm"), **overrides}
    return by_name(render("vm.py", "hello-vm", properties))


def instance(**overrides):
    return rendered(**overrides)["hello-vm"]["properties"]


def metadata(**overrides):
    return {i["key"]: i["value"] for i in instance(**overrides)["metadata"]["items"]}


def test_creates_a_static_address_an_instance_and_the_uptime_check_on_the_address():
    assert {n: r["type"] for n, r in rendered().items()} == {
        "hello-vm-ip": "compute.v1.address",
        "hello-vm": "compute.v1.instance",
        "hello-vm-uptime": "gcp-types/monitoring-v3:projects.uptimeCheckConfigs",
    }


def test_static_address_is_external_and_in_the_zones_region():
    address = rendered(zone="europe-west4-b")["hello-vm-ip"]["properties"]
    assert address["region"] == "europe-west4"
    assert address["addressType"] == "EXTERNAL"


def test_instance_sits_in_the_subnet_with_the_static_ip_as_nat_ip():
    (interface,) = instance()["networkInterfaces"]
    assert interface["subnetwork"] == deployment_properties("hello-vm")["subnetwork"]
    (access,) = interface["accessConfigs"]
    assert access["type"] == "ONE_TO_ONE_NAT"
    assert access["natIP"] == "$(ref.hello-vm-ip.address)"


def test_instance_is_tagged_for_the_firewall():
    assert instance()["tags"]["items"] == [deployment_properties("hello-vm")["networkTag"]]
    assert instance(networkTag="blue")["tags"]["items"] == ["blue"]


def test_debian_12_family_and_small_machine_type_by_default():
    properties = instance()
    (disk,) = properties["disks"]
    assert disk["initializeParams"]["sourceImage"].endswith("/images/family/debian-12")
    assert disk["boot"] is True
    assert properties["machineType"] == "zones/us-central1-a/machineTypes/e2-small"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("startup-script", "app/startup.sh"),
        ("app-py", "app/app.py"),
        ("app-requirements", "app/requirements.txt"),
        ("app-service", "app/hello@.service"),
        ("app-watch-service", "app/hello-metadata-watch.service"),
        ("app-converge-service", "app/hello-converge.service"),
        ("app-converge-path", "app/hello-converge.path"),
        ("tls-script", "app/hello-tls.sh"),
        ("tls-nginx-site", "app/nginx-hello.conf"),
        ("tls-nginx-https", "app/nginx-hello-tls.conf"),
        ("tls-nginx-hardening", "app/nginx-hardening.conf"),
        ("tls-cert-service", "app/hello-cert.service"),
        ("tls-cert-timer", "app/hello-cert.timer"),
        ("tls-acme-requirements", "app/acme-requirements.txt"),
    ],
)
def test_metadata_carries_committed_files_byte_for_byte(key, path):
    assert metadata()[key] == (REPO / path).read_text()


def test_acme_ca_reaches_the_instance_and_optional_keys_only_when_set():
    items = metadata()
    assert items["acme-directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert "acme-email" not in items and "acme-directory-ca" not in items
    items = metadata(acmeDirectory="", acmeEmail="ops@example.com")
    assert items["acme-directory"] == ""
    assert items["acme-email"] == "ops@example.com"


def test_a_bad_acme_directory_is_refused_by_the_schema():
    with pytest.raises(
        ConfigError, match=r"properties\.acmeDirectory: .* acmeDirectory must be an https:// URL"
    ):
        metadata(acmeDirectory="http://insecure.example/directory")


def test_os_login_on_and_project_ssh_keys_blocked():
    items = metadata()
    assert items["enable-oslogin"] == "TRUE"
    assert items["block-project-ssh-keys"] == "TRUE"


def test_shielded_vm_and_no_service_account():
    properties = instance()
    assert all(properties["shieldedInstanceConfig"].values())
    assert properties["serviceAccounts"] == []


def test_deletion_protection_is_on_by_default_and_can_be_turned_off():
    without = {
        k: v for k, v in deployment_properties("hello-vm").items() if k != "deletionProtection"
    }
    assert by_name(render("vm.py", "hello-vm", without))["hello-vm"]["properties"][
        "deletionProtection"
    ]
    assert instance(deletionProtection=False)["deletionProtection"] is False


def test_public_ip_output_points_at_the_address():
    result = render("vm.py", "hello-vm", deployment_properties("hello-vm"))
    outputs = {o["name"]: o["value"] for o in result["outputs"]}
    assert outputs["publicIp"] == "$(ref.hello-vm-ip.address)"


def test_missing_app_import_is_named():
    imports = {k: v for k, v in deployment_imports().items() if k != "app/app.py"}
    with pytest.raises(ValueError, match=r"imported .*app/app\.py"):
        render("vm.py", "hello-vm", deployment_properties("hello-vm"), imports=imports)
