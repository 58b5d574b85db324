"""Automatic retraining. The decision rules on their own; then the whole loop on a real server:
users correct transcripts, the strong labels reach the trigger's count, the server starts a
retrain in the background (tiny model, a few CPU steps, real MLflow, a frozen golden set), the
gate passes it, the retrain hands the challenger back to the server in shadow mode, and after the
shadow period the server's worker starts the automatic canary, every step in the audit log with
what triggered it."""

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from asr.corpus.datasets import freeze_golden
from serving.lifecycle.triggers import TriggerPolicy, decide
from serving.local_server import running_server
from tests.signals import SAMPLES_DIR

POLICY = TriggerPolicy(alarms=("null_transcripts",), alarm_for_s=600, new_labels=200, cooldown_s=3600)


def test_an_alarm_must_fire_long_enough() -> None:
    assert decide(POLICY, 1000.0, {"null_transcripts": 500.0}, 0, None, 0) is None
    assert (
        decide(POLICY, 1100.0, {"null_transcripts": 500.0}, 0, None, 0)
        == "alarm null_transcripts firing for 600 s"
    )
    assert decide(POLICY, 5000.0, {"latency_p95_high": 0.0}, 0, None, 0) is None  # not a retraining alarm


def test_labels_cooldown_and_cap() -> None:
    assert decide(POLICY, 0.0, {}, 199, None, 0) is None
    assert decide(POLICY, 0.0, {}, 200, None, 0) == "200 new strong labels"
    assert decide(POLICY, 4000.0, {}, 250, last_started=1000.0, running=0) is None  # cooling down
    assert decide(POLICY, 4700.0, {}, 250, last_started=1000.0, running=0) == "250 new strong labels"
    assert decide(POLICY, 9000.0, {}, 250, last_started=1000.0, running=1) is None  # one at a time
    assert decide(TriggerPolicy((), 600, 0, 0), 0.0, {}, 10**6, None, 0) is None  # labels trigger off


TOKEN = "trigger-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def clips() -> list[tuple[bytes, str]]:
    """16 distinct real recordings: the four samples at four gains."""
    found = []
    for line in (SAMPLES_DIR / "manifest.jsonl").read_text().splitlines():
        sample = json.loads(line)
        audio, rate = sf.read(SAMPLES_DIR / sample["audio"], dtype="float32")
        for gain in (1.0, 0.8, 0.6, 0.4):
            buffer = io.BytesIO()
            sf.write(buffer, np.asarray(audio * gain, dtype=np.float32), rate, format="FLAC")
            found.append((buffer.getvalue(), sample["text"]))
    return found


@pytest.mark.server
def test_strong_labels_trigger_a_retrain_that_shadows_then_canaries(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    freeze_golden(SAMPLES_DIR / "manifest.jsonl", "samples", tmp_path / "golden")
    settings = {
        "model_dir": str(tiny_model_dir), "bias_decoding": "false", "retain_audio": "true",
        "admin_token": TOKEN, "mlflow_dir": str(tmp_path / "mlflow"), "golden_dir": str(tmp_path / "golden"),
        "retrain_auto": "true", "retrain_new_labels": "16", "retrain_check_s": "1", "retrain_steps": "20",
        "retrain_replay": f"{SAMPLES_DIR / 'manifest.jsonl'}:0.5",
        # Milliseconds of a tiny model on a loaded CI machine: speed is not what this test is about.
        "retrain_max_rtf_ratio": "10", "retrain_deploy": "canary", "retrain_shadow_s": "5",
        # The tiny random model learns the labels in 20 steps only with every layer training (the
        # default keeps the bundled model's front end and first layer).
        "retrain_freeze_layers": "0",
    }  # fmt: skip
    with running_server(tmp_path, **settings) as server:
        assert httpx.get(server.url + "/v1/retrain", timeout=10).json()["runs"] == []
        for n, (audio, text) in enumerate(clips()):
            files = {"file": ("q.flac", audio, "audio/flac")}
            answer = httpx.post(
                server.url + "/v1/search", files=files, data={"session_id": f"user-{n}"}, timeout=60
            )
            assert answer.status_code == 200, answer.text
            correction = {
                "request_id": answer.headers["x-request-id"],
                "kind": "correction",
                "corrected_text": text,
            }
            assert httpx.post(server.url + "/v1/feedback", json=correction, timeout=10).status_code == 200

        deadline = time.monotonic() + 600
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = httpx.get(server.url + "/v1/retrain", timeout=10).json()
            if state["runs"] and state["runs"][0]["returncode"] is not None:
                break
            time.sleep(2)
        assert state["runs"], server.log()
        run = state["runs"][0]
        log = (Path(run["out_dir"]) / "retrain.log").read_text()
        assert run["returncode"] == 0, log
        assert run["reason"] == "16 new strong labels" and run["result"]["registered"]["version"] == 2

        # Shadow first; after retrain_shadow_s the worker starts the automatic canary.
        rollout = httpx.get(server.url + "/v1/rollout", timeout=10).json()
        deadline = time.monotonic() + 60
        while rollout["mode"] != "canary" and time.monotonic() < deadline:
            time.sleep(1)
            rollout = httpx.get(server.url + "/v1/rollout", timeout=10).json()
        assert rollout["mode"] == "canary" and rollout["auto"] and rollout["canary_share"] == 0.05
        # One model, one name: the registry lists the version the service reports.
        assert rollout["challenger"]["model_version"] == run["result"]["registered"]["model_version"]
        entries = httpx.get(server.url + "/v1/admin/audit", headers=AUTH, timeout=10).json()["entries"]
        actions = [(e["actor"], e["action"]) for e in reversed(entries)]
        assert actions == [
            ("automation", "retrain_started"), ("automation", "retrain_registered"),
            ("automation", "rollout"), ("automation", "load_challenger"), ("automation", "rollout"),
            ("automation", "retrain_finished"), ("automation", "rollout"),
        ]  # fmt: skip
        assert "shadowed" in entries[0]["reason"] and entries[0]["details"]["canary_share"] == 0.05
        assert all(
            "16 new strong labels" in e["reason"] for e in entries if e["action"].startswith("retrain")
        )
        assert len(httpx.get(server.url + "/v1/retrain", timeout=10).json()["runs"]) == 1  # no second run
