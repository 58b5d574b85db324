"""Rollout control over HTTP on a real server: the bearer token (missing, wrong, disabled), a
plan changed at run time that takes effect on the next search, and the audit log behind it."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.local_server import Server, running_server
from tests.serving.lifecycle.test_rollout import search

pytestmark = pytest.mark.server
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Actor": "alice"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("admin")
    with running_server(state, challenger_dir=str(tiny_model_dir), admin_token=TOKEN) as running:
        yield running


def change(server: Server, headers: dict[str, str], **body: object) -> httpx.Response:
    return httpx.post(server.url + "/v1/admin/rollout", json=body, headers=headers, timeout=30)


def test_admin_routes_need_the_token(server: Server) -> None:
    body = {"mode": "canary", "canary_share": 1.0, "reason": "try"}
    missing = change(server, {}, **body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert change(server, {"Authorization": "Bearer wrong"}, **body).status_code == 401
    assert change(server, {"Authorization": TOKEN}, **body).status_code == 401  # not a bearer header
    assert httpx.get(server.url + "/v1/admin/audit", timeout=10).status_code == 401
    assert httpx.get(server.url + "/v1/rollout", timeout=10).json()["mode"] == "off"  # nothing changed


def test_a_plan_change_takes_effect_and_is_audited(server: Server) -> None:
    assert search(server, "admin-1")["slot"] == "primary"
    changed = change(server, AUTH, mode="canary", canary_share=1.0, reason="all sessions to the challenger")
    assert changed.status_code == 200, changed.text
    assert search(server, "admin-1")["slot"] == "challenger"
    assert change(server, AUTH, mode="shadow", reason="back to shadow").status_code == 200
    assert search(server, "admin-1")["slot"] == "primary"
    bad = change(server, AUTH, mode="blue", reason="x")
    assert bad.status_code == 422 and "rollout mode" in bad.json()["error"]["message"]
    assert change(server, AUTH, mode="off", canary_share=2, reason="x").status_code == 422
    entries = httpx.get(server.url + "/v1/admin/audit", headers=AUTH, timeout=10).json()["entries"]
    assert [e["reason"] for e in entries[:2]] == ["back to shadow", "all sessions to the challenger"]
    first = entries[1]
    assert first["actor"] == "alice" and first["action"] == "rollout"
    assert first["details"]["before"]["mode"] == "off" and first["details"]["after"]["canary_share"] == 1.0
    assert first["details"]["challenger"].startswith("tiny@")
    assert (server.db_path.parent / "audit.sqlite3").is_file()
    bad_limit = httpx.get(server.url + "/v1/admin/audit", params={"limit": 0}, headers=AUTH, timeout=10)
    assert bad_limit.status_code == 422 and bad_limit.json()["error"]["type"] == "invalid_request"


def test_without_a_token_admin_routes_are_disabled_not_open(tmp_path: Path) -> None:
    with running_server(tmp_path) as plain:
        response = change(plain, {"Authorization": "Bearer anything"}, mode="off", reason="x")
        assert response.status_code == 403 and "disabled" in response.json()["error"]["message"]


def test_a_canary_without_a_challenger_is_a_conflict(tmp_path: Path) -> None:
    with running_server(tmp_path, admin_token=TOKEN) as plain:
        response = change(plain, AUTH, mode="canary", canary_share=0.1, reason="x")
        assert response.status_code == 409 and "needs a challenger" in response.json()["error"]["message"]
