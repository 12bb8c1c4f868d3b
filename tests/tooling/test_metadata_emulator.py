"""The metadata server emulator, over real HTTP on loopback (no VM).

Real: the HTTP exchanges, and the expanded config from dmlocal (what `make preview` renders).
What is emulated: the server itself (Google's metadata server cannot run here).
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from dmlocal.expand import default_env, expand_path
from emulators.metadata import MetadataEmulator, from_expanded_config
from tests.conftest import REPO

FLAVOR = {"Metadata-Flavor": "Google"}


@pytest.fixture(scope="module")
def rendered() -> tuple[dict, str]:
    expansion = expand_path(str(REPO / "deployment.yaml"), default_env("hello", "local-project"))
    return from_expanded_config({"resources": expansion.resources})


@pytest.fixture
def server(rendered):
    instance, network_name = rendered
    with MetadataEmulator(
        instance,
        network_name=network_name,
        network={"ip": "169.254.169.15", "mac": "42:01:0a:80:00:02"},
    ) as emulator:
        yield emulator


def request(server, path, method="GET", headers=FLAVOR, body=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read().decode()
    conn.close()
    return response, data


def admin_put(server, path, value):
    conn = http.client.HTTPConnection("127.0.0.1", server.admin_port, timeout=10)
    conn.request("PUT", path, body=json.dumps(value), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def test_attributes_are_the_rendered_metadata_byte_for_byte(server):
    for key, path in [
        ("startup-script", "app/startup.sh"),
        ("app-py", "app/app.py"),
        ("app-requirements", "app/requirements.txt"),
        ("app-service", "app/hello@.service"),
        ("app-watch-service", "app/hello-metadata-watch.service"),
        ("app-converge-service", "app/hello-converge.service"),
        ("app-converge-path", "app/hello-converge.path"),
    ]:
        response, body = request(server, f"/computeMetadata/v1/instance/attributes/{key}")
        assert response.status == 200, key
        assert body == (REPO / path).read_text(), key
        assert response.getheader("Metadata-Flavor") == "Google"
        assert response.getheader("ETag")


def test_flavor_header_is_required_and_echoed(server):
    response, body = request(server, "/computeMetadata/v1/instance/name", headers={})
    assert response.status == 403
    assert "Metadata-Flavor" in body
    response, _ = request(
        server, "/computeMetadata/v1/instance/name", headers={"Metadata-Flavor": "google"}
    )
    assert response.status == 403
    response, _ = request(
        server,
        "/computeMetadata/v1/instance/name",
        headers={**FLAVOR, "X-Forwarded-For": "1.2.3.4"},
    )
    assert response.status == 403
    response, body = request(server, "/", headers={})
    assert (response.status, body) == (200, "computeMetadata/\n")
    assert response.getheader("Metadata-Flavor") == "Google"


def test_unknown_keys_are_404(server):
    for path in (
        "/computeMetadata/v1/instance/attributes/no-such-key",
        "/computeMetadata/v1/instance/nope",
        "/computeMetadata/v2/instance/name",
        "/computeMetadata/v1/instance/network-interfaces/7/ip",
    ):
        response, _ = request(server, path)
        assert response.status == 404, path


def test_identity_and_network_as_gce_shows_them(server):
    def get(path):
        response, body = request(server, f"/computeMetadata/v1/{path}")
        assert response.status == 200, path
        return body

    assert get("instance/name") == "hello-vm"
    assert get("instance/zone") == "projects/123456789012/zones/us-central1-a"
    assert get("instance/hostname") == "hello-vm.us-central1-a.c.local-project.internal"
    assert get("instance/machine-type").endswith("/machineTypes/e2-small")
    assert int(get("instance/id")) > 0
    assert get("instance/network-interfaces/0/ip") == "169.254.169.15"
    assert get("instance/network-interfaces/0/network").endswith("/networks/hello-vpc")
    assert json.loads(get("instance/tags")) == ["hello-web"]
    assert get("project/project-id") == "local-project"
    assert get("project/numeric-project-id") == "123456789012"
    assert "attributes/" in get("instance/").splitlines()
    assert get("instance/network-interfaces/") == "0/\n"


def test_recursive_json_camelcases_gce_keys_but_not_attribute_keys(server):
    # The exact request the 2021 Debian guest agent sends, double slash included.
    response, body = request(
        server, "/computeMetadata/v1//?recursive=true&alt=json&timeout_sec=60&last_etag=NONE"
    )
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    tree = json.loads(body)
    instance = tree["instance"]
    assert instance["attributes"]["enable-oslogin"] == "TRUE"
    assert instance["attributes"]["block-project-ssh-keys"] == "TRUE"
    assert instance["networkInterfaces"][0]["mac"] == "42:01:0a:80:00:02"
    assert instance["machineType"].endswith("e2-small")
    assert isinstance(instance["id"], int)
    assert tree["project"]["projectId"] == "local-project"
    attributes = json.loads(
        request(server, "/computeMetadata/v1/instance/attributes/?recursive=true")[1]
    )
    assert set(attributes) >= {"startup-script", "app-py", "enable-oslogin"}


def test_alt_text_and_json_for_leaves_and_directories(server):
    _, text = request(server, "/computeMetadata/v1/instance/name?alt=json")
    assert json.loads(text) == "hello-vm"
    _, listing = request(server, "/computeMetadata/v1/instance/attributes/?alt=json")
    assert "startup-script" in json.loads(listing)
    _, flat = request(server, "/computeMetadata/v1/instance/scheduling/?recursive=true&alt=text")
    assert "automatic-restart TRUE" in flat.splitlines()
    response, _ = request(server, "/computeMetadata/v1/instance/name?alt=xml")
    assert response.status == 400


def test_wait_for_change_answers_at_once_for_a_stale_etag(server):
    started = time.monotonic()
    response, _ = request(
        server, "/computeMetadata/v1/instance/attributes/?wait_for_change=true&last_etag=NONE"
    )
    assert response.status == 200
    assert time.monotonic() - started < 2


def test_wait_for_change_times_out_with_unchanged_content(server):
    path = "/computeMetadata/v1/instance/attributes/?recursive=true"
    etag = request(server, path)[0].getheader("ETag")
    started = time.monotonic()
    response, _ = request(server, f"{path}&wait_for_change=true&last_etag={etag}&timeout_sec=1")
    elapsed = time.monotonic() - started
    assert response.status == 200
    assert response.getheader("ETag") == etag
    assert 0.9 <= elapsed < 5


def test_metadata_update_wakes_a_waiter_with_a_new_etag(server):
    path = "/computeMetadata/v1/instance/attributes/?recursive=true"
    first, body = request(server, path)
    etag = first.getheader("ETag")
    attributes = json.loads(body)
    result = {}

    def waiter():
        result["response"], result["body"] = request(
            server, f"{path}&wait_for_change=true&last_etag={etag}&timeout_sec=30", timeout=40
        )

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the waiter returned before any change"
    changed = {**attributes, "app-py": attributes["app-py"].replace("BenchSci", "Tests")}
    status = admin_put(
        server,
        "/instance/metadata",
        {"items": [{"key": k, "value": v} for k, v in changed.items()]},
    )
    assert status == 200
    thread.join(10)
    assert not thread.is_alive()
    assert result["response"].getheader("ETag") != etag
    assert "Hello World from Tests!" in json.loads(result["body"])["app-py"]
    # The waiter on a path that did not change keeps waiting: ETags are per path.
    name_etag = request(server, "/computeMetadata/v1/instance/name")[0].getheader("ETag")
    admin_put(server, "/instance/metadata", {"items": [{"key": "x", "value": "1"}]})
    started = time.monotonic()
    response, _ = request(
        server,
        f"/computeMetadata/v1/instance/name?wait_for_change=true&last_etag={name_etag}"
        "&timeout_sec=1",
    )
    assert time.monotonic() - started >= 0.9
    assert response.getheader("ETag") == name_etag


def test_guest_attributes_need_enabling_and_never_change_the_etag(server):
    put = "/computeMetadata/v1/instance/guest-attributes/hostkeys/ssh-ed25519"
    response, _ = request(server, put, method="PUT", body="AAAA")
    assert response.status == 403  # enable-guest-attributes is not set by vm.py
    attributes = json.loads(
        request(server, "/computeMetadata/v1/instance/attributes/?recursive=true")[1]
    )
    attributes["enable-guest-attributes"] = "TRUE"
    admin_put(
        server,
        "/instance/metadata",
        {"items": [{"key": k, "value": v} for k, v in attributes.items()]},
    )
    root = "/computeMetadata/v1/?recursive=true"
    etag = request(server, root)[0].getheader("ETag")
    response, _ = request(server, put, method="PUT", body="AAAA")
    assert response.status == 200
    assert request(server, root)[0].getheader("ETag") == etag
    response, body = request(server, put)
    assert (response.status, body) == (200, "AAAA")
    response, _ = request(
        server, "/computeMetadata/v1/instance/attributes/x", method="PUT", body=""
    )
    assert response.status == 405
