"""The canary end to end on a real server with two real models: a deliberately degraded copy of
the bundled model (its blank always wins: null transcripts) is rolled back by its gates, with an
alarm and an audit entry; an identical copy ramps through every step and is promoted; a
blue-green swap under steady load fails and loses no request."""

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from asr.model import model_version
from serving.lifecycle.drills import silent_copy
from serving.local_server import Server, running_server
from serving.settings import DEFAULT_MODEL_DIR
from tests.serving.lifecycle.test_rollout import search
from tests.serving.webhook import Webhook, webhook_server

pytestmark = [pytest.mark.server, pytest.mark.slow]
TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    with webhook_server() as running:
        yield running


CANARY = {"canary_min_samples": "4", "canary_step_s": "0.3", "canary_window_s": "600", "admin_token": TOKEN}


def wait_for(
    server: Server, predicate: Any, timeout_s: float = 60, traffic: str | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    i = 0
    while time.monotonic() < deadline:
        state: dict[str, Any] = httpx.get(server.url + "/v1/rollout", timeout=10).json()
        if predicate(state):
            return state
        if traffic:
            search(server, f"{traffic}-{i}")
            i += 1
        else:
            time.sleep(0.3)
    raise AssertionError(f"the rollout never got there: {state}")


def audit(server: Server) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = httpx.get(
        server.url + "/v1/admin/audit", headers=AUTH, timeout=10
    ).json()["entries"]
    return entries


def test_a_degraded_challenger_is_rolled_back_by_its_gates(tmp_path: Path, webhook: Webhook) -> None:
    bad = silent_copy(DEFAULT_MODEL_DIR, tmp_path / "degraded")
    settings = CANARY | {"challenger_dir": str(bad), "rollout_mode": "canary", "canary_share": "0.5",
                         "canary_auto": "true", "alert_webhook_url": webhook.url}  # fmt: skip
    (tmp_path / "state").mkdir()
    with running_server(tmp_path / "state", **settings) as server:
        state = wait_for(server, lambda s: s["mode"] == "off", traffic="degraded")
        assert {g["name"]: g["passed"] for g in state["gates"]}["null_transcripts"] is False
        rollback = audit(server)[0]
        assert rollback["actor"] == "automation" and rollback["action"] == "rollback"
        assert "null_transcripts" in rollback["reason"]
        gates = {g["name"]: g for g in rollback["details"]["gates"]}
        assert gates["null_transcripts"]["challenger"] == 1.0
        for i in range(6):  # everyone is back on the champion
            assert search(server, f"after-{i}")["slot"] == "primary"
        with sqlite3.connect(server.db_path) as db:
            seen = db.execute(
                "SELECT COUNT(DISTINCT session_id) FROM events WHERE slot='challenger'"
            ).fetchone()[0]
        assert seen >= 4  # the gate waited for its minimum sample, then acted
    deadline = time.monotonic() + 10
    while not webhook.alarms("canary_rollback") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert webhook.alarms("canary_rollback")[0]["firing"] is True


def test_a_good_challenger_ramps_through_every_step_and_is_promoted(tmp_path: Path) -> None:
    good = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "good")
    settings = CANARY | {"challenger_dir": str(good), "canary_steps": "0.5,1", "canary_hold_s": "1"}
    (tmp_path / "state").mkdir()
    with running_server(tmp_path / "state", **settings) as server:
        body = {"mode": "canary", "canary_share": 0.5, "auto": True, "reason": "ramp the copy"}
        assert (
            httpx.post(server.url + "/v1/admin/rollout", json=body, headers=AUTH, timeout=10).status_code
            == 200
        )
        wait_for(server, lambda s: s["mode"] == "off", timeout_s=120, traffic="good")
        actions = [e["action"] for e in audit(server)]
        assert actions[:3] == ["promote", "advance", "rollout"]
        assert audit(server)[1]["details"]["after"]["canary_share"] == 1.0
        assert httpx.get(server.url + "/v1/rollout", timeout=10).json()["champion"][
            "model_version"
        ] == model_version(good)


def test_blue_green_swap_under_load_loses_and_fails_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    with running_server(tmp_path, challenger_dir=str(tiny_model_dir), admin_token=TOKEN) as server:
        statuses: list[int] = []
        stop = threading.Event()

        def client(worker: int) -> None:
            i = 0
            while not stop.is_set():
                search(server, f"bg-{worker}-{i}")  # asserts a 200
                statuses.append(200)
                i += 1

        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client, w) for w in range(3)]
            time.sleep(2)
            swapped = httpx.post(
                server.url + "/v1/admin/swap", json={"reason": "go green"}, headers=AUTH, timeout=30
            )
            time.sleep(2)
            stop.set()
            for future in futures:
                future.result()
        assert swapped.status_code == 200
        assert swapped.json()["details"]["after"]["champion"].startswith("tiny@")
        with sqlite3.connect(server.db_path) as db:
            rows = db.execute(
                "SELECT status_code, model_version FROM events WHERE kind='voice_search'"
            ).fetchall()
        assert len(rows) == len(statuses) and all(status == 200 for status, _ in rows)
        versions = {version.split("@")[0] for _, version in rows}
        assert versions == {"voice-search-small", "tiny"}  # both sides of the switch answered
