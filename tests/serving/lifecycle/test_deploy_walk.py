"""docs/deploy.md's deployment walk, literally: register, serve, shadow, canary to promotion, the
silent drill rolled back, blue-green. One real server, one real MLflow registry, real traffic from
many sessions, the default ramp (5% -> 25% -> 50% -> 100%) with short holds and windows.

What it proves, each of which failed before (issue 34): the canary completes its last step and
promotes the candidate; a new canary judges only its own challenger's searches; the drill is
rolled back and never becomes champion, standby or previous; after `swap` a spoken "yes" is still
answered with words; the registry and the service call each model by one name."""

import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.cli import main
from serving.lifecycle.drills import silent_copy
from serving.lifecycle.registry import CHAMPION, PREVIOUS, Registry
from serving.local_server import Server, running_server
from serving.settings import DEFAULT_MODEL_DIR
from tests.signals import SAMPLES_DIR

pytestmark = [pytest.mark.server, pytest.mark.slow]
TOKEN = "walk-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Actor": "walker"}
YES = SAMPLES_DIR / "speech_commands_yes_022cd682.flac"
FAST = {"canary_min_samples": "5", "canary_hold_s": "20", "canary_window_s": "20", "canary_step_s": "0.5"}
"""The defaults' ramp (5/25/50/100%) and proportions (hold = window: at 100% the champion's live
window empties before the hold ends, as at the defaults' 120 s), scaled down to minutes."""


def admin(server: Server, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/admin/{route}", json=body, headers=AUTH, timeout=60)


def voice_search(server: Server, session: str) -> dict[str, Any]:
    with YES.open("rb") as f:
        response = httpx.post(
            server.url + "/v1/search", files={"file": ("yes.flac", f, "audio/flac")},
            data={"session_id": session}, timeout=60,
        )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def traffic_until(server: Server, done: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
    """Voice searches from 4 users at a time, each session a search and often a second one, as
    people search (a new session after it), until `done(/v1/rollout)` holds."""
    stop = threading.Event()
    sent = [0]

    def user(worker: int) -> None:
        rng = random.Random(worker)
        session = 0
        while not stop.is_set():
            for _ in range(rng.choice((1, 2, 2, 3))):
                voice_search(server, f"user-{worker}-{session}")
                sent[0] += 1
            session += 1

    deadline = time.monotonic() + timeout_s
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(user, w) for w in range(4)]
        try:
            while time.monotonic() < deadline:
                state: dict[str, Any] = httpx.get(server.url + "/v1/rollout", timeout=10).json()
                if done(state):
                    return state
                for future in futures:
                    if future.done():
                        future.result()  # a failed search fails the walk
                time.sleep(0.5)
        finally:
            stop.set()
    raise AssertionError(
        f"not done after {timeout_s} s and {sent[0]} searches: {state}\n{server.log()[-3000:]}"
    )


def audit(server: Server) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = httpx.get(
        server.url + "/v1/admin/audit", headers=AUTH, timeout=10
    ).json()["entries"]
    return list(reversed(entries))  # oldest first


def test_the_readme_deployment_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow = tmp_path / "mlflow"
    monkeypatch.setenv("VOICE_SEARCH_MLFLOW_DIR", str(mlflow))
    registry = Registry.embedded(mlflow, "voice-search")

    # 1. Register a candidate: a copy of the bundled model.
    candidate_dir = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "candidate")
    assert (
        main(["models", "register", str(candidate_dir), "--alias", "challenger", "--note", "my candidate"])
        == 0
    )
    assert main(["models", "list"]) == 0
    candidate = registry.get("challenger")
    assert registry.get(CHAMPION).version == 1 and candidate.version == 2

    # 2. Serve with the admin routes on.
    settings = FAST | {"admin_token": TOKEN, "mlflow_dir": str(mlflow)}
    with running_server(tmp_path / "state", **settings) as server:
        # 3. The challenger from the registry, shadowed.
        loaded = admin(server, "challenger", {"version": "challenger", "reason": "try the candidate"})
        assert loaded.status_code == 200, loaded.text
        assert admin(server, "rollout", {"mode": "shadow", "reason": "listen first"}).status_code == 200
        for i in range(4):
            voice_search(server, f"shadow-{i}")
        rollout = httpx.get(server.url + "/v1/rollout?window=1h", timeout=10).json()
        assert rollout["challenger"]["model_version"] == candidate.model_version  # one name

        # 4. The canary ramps 5% -> 100% by its gates and is promoted.
        body = {"mode": "canary", "canary_share": 0.05, "auto": True, "reason": "shadow agreed"}
        assert admin(server, "rollout", body).status_code == 200
        state = traffic_until(server, lambda s: s["mode"] == "off", timeout_s=600)
        actions = [e["action"] for e in audit(server)]
        assert actions[-1] == "promote", (
            actions,
            audit(server)[-1]["reason"],
            audit(server)[-1]["details"]["gates"],
        )
        assert [e["details"]["after"]["canary_share"] for e in audit(server) if e["action"] == "advance"] == [
            0.25, 0.5, 1.0,
        ]  # fmt: skip
        assert state["champion"]["model_version"] == candidate.model_version
        time.sleep(1)  # the registry follows the service off its event loop
        assert registry.get(CHAMPION).version == candidate.version and registry.get(PREVIOUS).version == 1

        # 5. The silent drill, registered and canaried, rolls itself back on its own searches.
        drill_dir = silent_copy(DEFAULT_MODEL_DIR, tmp_path / "silent")
        assert main(["models", "register", str(drill_dir), "--alias", "challenger", "--note", "drill"]) == 0
        drill = registry.get("challenger")
        assert admin(server, "rollout", {"mode": "off", "reason": "load the drill"}).status_code == 200
        assert (
            admin(server, "challenger", {"version": "challenger", "reason": "rollback drill"}).status_code
            == 200
        )
        began = len(audit(server))
        body = {"mode": "canary", "canary_share": 0.05, "auto": True, "reason": "drill"}
        assert admin(server, "rollout", body).status_code == 200
        state = traffic_until(server, lambda s: s["mode"] == "off", timeout_s=300)
        since = audit(server)[began:]
        assert [e["action"] for e in since] == ["rollout", "rollback"], since  # never an advance
        gates = {g["name"]: g for g in since[-1]["details"]["gates"]}
        assert gates["null_transcripts"]["passed"] is False and gates["null_transcripts"]["challenger"] == 1.0
        assert state["champion"]["model_version"] == candidate.model_version
        time.sleep(1)
        drilled = registry.get(drill.version)
        assert drilled.tags.get("failed_gates") and not drilled.aliases
        capsys.readouterr()
        assert main(["models", "list"]) == 0
        listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
        assert "failed gates" in listed[str(drill.version)] and "champion" in listed[str(candidate.version)]
        assert registry.get(CHAMPION).version == candidate.version and registry.get(PREVIOUS).version == 1

        # 6. Blue-green: the drill is no standby; the previous champion is loaded and swapped in.
        refused = admin(server, "swap", {"reason": "switch to green"})
        assert refused.status_code == 409 and "failed its canary gates" in refused.json()["error"]["message"]
        again = admin(server, "challenger", {"version": str(drill.version), "reason": "retry the drill"})
        assert again.status_code == 409
        standby = admin(server, "challenger", {"version": "previous", "reason": "standby"})
        assert standby.status_code == 200, standby.text
        assert admin(server, "swap", {"reason": "switch to green"}).status_code == 200
        answer = voice_search(server, "after-swap")
        assert answer["transcript"] and answer["model_version"] != drill.model_version
        assert admin(server, "swap", {"reason": "switch back"}).status_code == 200
        assert voice_search(server, "after-swap-back")["model_version"] == candidate.model_version
        time.sleep(1)
        assert registry.get(CHAMPION).version == candidate.version
        assert registry.get(PREVIOUS).version == 1  # never the drill
