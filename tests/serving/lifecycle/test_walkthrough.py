"""docs/deploy.md's deployment walkthrough as one test, with a real MLflow store, a real server and
two real models: register a challenger, load it from the registry, shadow it, read the comparison,
canary it until it is promoted (the registry's aliases follow), then switch back blue-green."""

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.cli import main
from serving.lifecycle.registry import CHAMPION, PREVIOUS, Registry
from serving.local_server import Server, running_server
from serving.settings import DEFAULT_MODEL_DIR
from tests.serving.lifecycle.test_canary import AUTH, TOKEN, audit, wait_for
from tests.serving.lifecycle.test_rollout import search

pytestmark = [pytest.mark.server, pytest.mark.slow]


def admin(server: Server, path: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(server.url + path, json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_register_shadow_canary_promote_and_switch_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mlflow_dir = tmp_path / "mlflow"
    monkeypatch.setenv("VOICE_SEARCH_MLFLOW_DIR", str(mlflow_dir))
    candidate = shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "candidate")
    assert main(["models", "register", str(candidate), "--alias", "challenger", "--note", "walkthrough"]) == 0
    capsys.readouterr()
    registry = Registry.embedded(mlflow_dir, "voice-search")
    assert registry.get("challenger").version == 2 and registry.get(CHAMPION).version == 1

    settings = {"admin_token": TOKEN, "mlflow_dir": str(mlflow_dir), "canary_steps": "0.5,1",
                "canary_hold_s": "1", "canary_min_samples": "4", "canary_step_s": "0.3",
                "canary_window_s": "600"}  # fmt: skip
    (tmp_path / "state").mkdir()
    with running_server(tmp_path / "state", **settings) as server:
        loaded = admin(server, "/v1/admin/challenger", version="challenger", reason="try version 2")
        assert loaded["details"]["registry_version"] == 2

        admin(server, "/v1/admin/rollout", mode="shadow", reason="listen first")
        for i in range(4):
            search(server, f"walk-shadow-{i}")
        state = wait_for(server, lambda s: s["comparison"]["pairs"] >= 4)
        assert state["comparison"]["disagreement_wer"] == 0.0  # the copy says what the champion says

        admin(server, "/v1/admin/rollout", mode="canary", canary_share=0.5, auto=True, reason="shadow agreed")
        wait_for(server, lambda s: s["mode"] == "off", timeout_s=120, traffic="walk-canary")
        assert [e["action"] for e in audit(server)][:2] == ["promote", "advance"]
        deadline = time.monotonic() + 30
        while registry.get(CHAMPION).version != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert registry.get(CHAMPION).version == 2 and registry.get(PREVIOUS).version == 1

        swapped = admin(server, "/v1/admin/swap", reason="switch back to blue")
        assert swapped["details"]["after"]["champion"] == swapped["details"]["before"]["challenger"]
        assert search(server, "walk-after")["slot"] == "primary"
        assert registry.get(CHAMPION).version == 1 and registry.get(PREVIOUS).version == 2
