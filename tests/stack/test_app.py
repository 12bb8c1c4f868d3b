"""The Flask app, through Flask's test client."""

import json

import pytest

import app.app as app_module
from app.app import GREETING, app


@pytest.fixture
def client():
    return app.test_client()


@pytest.mark.parametrize("path", ["/", "/hello"])
def test_greeting_routes_return_exactly_the_greeting(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == GREETING
    assert response.mimetype == "text/plain"


def test_greeting_is_exactly_the_required_text():
    assert GREETING == "Hello World from BenchSci!"


def test_healthz_is_ok_and_names_the_version_a_converge_recorded(client, tmp_path, monkeypatch):
    monkeypatch.setattr(app_module, "VERSION_FILE", tmp_path / "version")
    monkeypatch.setattr(app_module, "REFUSED_FILE", tmp_path / "refused.json")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "version": "unknown"}
    (tmp_path / "version").write_text("0123456789abcdef\n")
    assert client.get("/healthz").get_json() == {"status": "ok", "version": "0123456789abcdef"}


def test_healthz_names_a_release_the_vm_refused_until_that_release_serves(
    client, tmp_path, monkeypatch
):
    """startup.sh records a refused release in refused.json; smoke.sh fails at once on it."""
    monkeypatch.setattr(app_module, "VERSION_FILE", tmp_path / "version")
    monkeypatch.setattr(app_module, "REFUSED_FILE", tmp_path / "refused.json")
    (tmp_path / "version").write_text("aaaaaaaaaaaaaaaa\n")
    (tmp_path / "refused.json").write_text(
        json.dumps({"version": "bbbbbbbbbbbbbbbb", "reason": "it did not start", "retryAfter": 1})
    )
    assert client.get("/healthz").get_json() == {
        "status": "ok",
        "version": "aaaaaaaaaaaaaaaa",
        "refused": {"version": "bbbbbbbbbbbbbbbb", "reason": "it did not start"},
    }
    # The same version serving (a later retry succeeded before the record was cleared).
    (tmp_path / "version").write_text("bbbbbbbbbbbbbbbb\n")
    assert "refused" not in client.get("/healthz").get_json()
    (tmp_path / "refused.json").write_text("{not json")
    assert client.get("/healthz").status_code == 200


def test_unknown_path_is_404(client):
    assert client.get("/nope").status_code == 404


def test_greeting_routes_are_read_only(client):
    assert client.post("/").status_code == 405


def test_not_in_debug_mode():
    assert app.debug is False
