"""Shadow and canary with two real models in a real server: the bundled champion and a tiny
random challenger (it says nonsense, which is all the machinery needs)."""

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.lifecycle.rollout import RolloutPlan, routes_to_challenger, session_bucket
from serving.local_server import Server, running_server
from tests.signals import SPEECH_SAMPLE

pytestmark = pytest.mark.server


def test_session_buckets_are_stable_and_spread() -> None:
    buckets = [session_bucket(f"session-{i}") for i in range(2000)]
    assert buckets[:5] == [session_bucket(f"session-{i}") for i in range(5)]
    assert all(0 <= b < 1 for b in buckets)
    assert 0.45 < sum(b < 0.5 for b in buckets) / len(buckets) < 0.55
    plan = RolloutPlan("canary", 0.05)
    share = sum(routes_to_challenger(plan, f"s{i}") for i in range(4000)) / 4000
    assert 0.035 < share < 0.065
    assert not routes_to_challenger(RolloutPlan("shadow", 1.0), "s1")


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="rollout mode"):
        RolloutPlan("blue", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 0 and 1"):
        RolloutPlan("canary", 1.5)


def search(server: Server, session: str) -> dict[str, object]:
    with SPEECH_SAMPLE.open("rb") as f:
        files = {"file": ("q.flac", f, "audio/flac")}
        response = httpx.post(
            server.url + "/v1/search", files=files, data={"session_id": session}, timeout=60
        )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def shadow_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("shadow")
    with running_server(state, challenger_dir=str(tiny_model_dir), rollout_mode="shadow") as server:
        yield server


def test_shadow_records_the_challenger_beside_every_answer(
    shadow_server: Server, tiny_model_dir: Path
) -> None:
    answers = [search(shadow_server, f"shadow-{i}") for i in range(4)]
    assert {a["slot"] for a in answers} == {"primary"}  # the champion answers every user
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = httpx.get(shadow_server.url + "/v1/rollout", timeout=10).json()
        if state["shadow"]["recorded"] == 4:
            break
        time.sleep(0.5)
    assert state["mode"] == "shadow" and state["shadow"]["dropped"] == 0
    assert state["challenger"]["model_version"].startswith("tiny@")
    comparison = state["comparison"]
    assert comparison["pairs"] == 4 and comparison["challenger_failures"] == 0
    assert comparison["challenger_recognition_p95_s"] > 0
    shadows = rows(
        shadow_server.db_path, "SELECT target_request_id, slot, model_version FROM events WHERE kind='shadow'"
    )
    searches = {
        r[0] for r in rows(shadow_server.db_path, "SELECT request_id FROM events WHERE kind='voice_search'")
    }
    assert len(shadows) == 4 and {s[0] for s in shadows} == searches
    assert {s[1] for s in shadows} == {"challenger"}


@pytest.fixture(scope="module")
def canary_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("canary")
    with running_server(
        state, challenger_dir=str(tiny_model_dir), rollout_mode="canary", canary_share="0.5"
    ) as server:
        yield server


def test_canary_routes_sticky_sessions_and_records_the_slot(canary_server: Server) -> None:
    sessions = [f"canary-{i}" for i in range(8)]
    expected = {s: routes_to_challenger(RolloutPlan("canary", 0.5), s) for s in sessions}
    assert any(expected.values()) and not all(expected.values())
    for session in sessions + sessions[:3]:  # repeats stay where they were
        answer = search(canary_server, session)
        assert answer["slot"] == ("challenger" if expected[session] else "primary")
        assert str(answer["model_version"]).startswith("tiny@") == expected[session]
    recorded = rows(canary_server.db_path, "SELECT session_id, slot FROM events WHERE kind='voice_search'")
    assert {(s, "challenger" if expected[s] else "primary") for s in sessions} == set(recorded)
    assert len(recorded) == 11


def test_a_rollout_without_a_challenger_refuses_to_start(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="needs a challenger"),
        running_server(tmp_path, rollout_mode="shadow"),
    ):
        pass
