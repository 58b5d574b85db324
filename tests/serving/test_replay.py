"""Proof by replay, short: every injected shift fires its alarm and unshifted traffic fires none.

A real server (bundled model, real SQLite file) judges the shipped alarm rules, with their
thresholds unchanged and their windows shortened to 30 s so the test's traffic (4 requests/s of
traffic time, replayed as fast as the server answers) fills them quickly; a window is judged
from 60 events, as PSI over deciles of fewer is mostly sampling noise. The reference profile
is built by `voice-search monitor baseline` from the same synthesized queries the replay draws
from, as the shipped one is built from the training queries.
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from asr.corpus.domain import DomainPack
from asr.corpus.tts import EspeakEngine, Voice
from serving.local_server import Server, running_server
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_MONITORING_DIR, REPO_ROOT
from serving.simulation.replay import (
    EXPECTED_ALARM,
    SHIFTS,
    Clip,
    Scenario,
    Traffic,
    novel_queries,
    run_scenarios,
    shift_clip,
)
from tests.serving.events import rows

pytestmark = pytest.mark.server

WINDOW = "30s"
MIN_SAMPLES = 60
RATE_RPS = 4.0
SHIFT_S = 30.0
SLOW_SHIFT_S = 10.0
"""The slow model's shift is shorter: each of its requests sleeps 1.5 s, so 30 s of it took 3.7 of the
test's 8.5 minutes alone, and the latency rule is judged from 20 events (40 slow ones here)."""
CONCURRENCY = 2
"""Requests in flight. The latency alarm (p95 > 1 s) judges wall time: at 3 in flight, a machine
busy with other work (a training run beside the tests) queued requests past 1 s and fired it
in a scenario that does not slow the model; 2 cuts the queueing a request sees by a third and
still batches."""


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Clip]]:
    """60 domain queries voiced by six espeak-ng voices, as a manifest and as clips."""
    folder = tmp_path_factory.mktemp("queries")
    engine = EspeakEngine()
    voices = [
        Voice("espeak", name)
        for name in ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb-scotland+f1", "en-029+m2", "en-us-nyc+f4")
    ]
    clips, lines = [], []
    for n, query in enumerate(DomainPack.load(DEFAULT_DOMAIN_DIR).expand(60, seed=1)):
        samples, rate = engine.synthesize(query.text, voices[n % len(voices)])
        sf.write(folder / f"{n}.wav", samples, rate)
        entries = ",".join(query.entry_ids)
        lines.append(json.dumps({"audio": f"{n}.wav", "text": query.text, "entries": entries}))
        clips.append(Clip(samples, rate, query.text, query.entry_ids))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, clips


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, labelled: tuple[Path, list[Clip]]) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("replay")
    profile = state / "reference.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "monitor",
            "baseline",
            "--manifest",
            str(labelled[0]),
            "--limit",
            "60",
            "--out",
            str(profile),
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    shipped = yaml.safe_load((DEFAULT_MONITORING_DIR / "alarms.yml").read_text())
    for rule in shipped["rules"]:
        rule["window"] = WINDOW
        rule["min_samples"] = min(rule["min_samples"], MIN_SAMPLES)
    rules = state / "alarms.yml"
    rules.write_text(yaml.safe_dump(shipped))
    settings = {
        "trust_client_time": "true",
        "fault_injection": "true",
        "alarm_step_s": "2",
        "alarm_rules": str(rules),
        "reference_profile": str(profile),
    }
    with running_server(state, **settings) as running:
        yield running


def test_every_shift_fires_its_alarm_and_unshifted_traffic_fires_none(
    server: Server, labelled: tuple[Path, list[Clip]]
) -> None:
    scenarios = [Scenario("none", 60.0, 0.0)] + [
        Scenario(s, 35.0, SLOW_SHIFT_S if s == "slow_model" else SHIFT_S) for s in EXPECTED_ALARM
    ]
    novel = novel_queries(12, seed=0)
    results = run_scenarios(
        server.url,
        scenarios,
        labelled[1],
        Traffic(rate_rps=RATE_RPS, concurrency=CONCURRENCY),
        novel,
        step_s=2.0,
    )
    by_shift = {r.shift: r for r in results}
    report = {r.shift: (r.detected_by, r.detection_s, r.fired, r.false_alarms) for r in results}
    assert by_shift["none"].fired == [], report
    for shift, alarm in EXPECTED_ALARM.items():
        result = by_shift[shift]
        assert result.false_alarms == [], report
        assert alarm in result.fired, report
        shift_s = result.end - result.shift_start
        assert result.expected_alarm_s is not None and result.expected_alarm_s <= shift_s, report
    # Every request of the replay is an event in the store, stamped with its traffic time.
    sent = sum(r.requests for r in results)
    recorded = rows(server, "SELECT COUNT(*), MIN(created_at) FROM events")[0]
    assert recorded[0] == sent
    assert recorded[1] < results[0].start + 1


def test_shifts_change_the_audio_as_named(labelled: tuple[Path, list[Clip]]) -> None:
    import numpy as np

    clip = labelled[1][0]
    rng = np.random.default_rng(0)

    def rms_db(x: np.ndarray) -> float:
        return float(20 * np.log10(np.sqrt(np.mean(np.square(x)))))

    assert rms_db(shift_clip(clip, "volume_drop", rng).samples) == pytest.approx(
        rms_db(clip.samples) - 10, abs=0.2
    )
    assert shift_clip(clip, "narrowband", rng).rate == 8000
    longer = shift_clip(clip, "leading_silence", rng)
    assert len(longer.samples) == len(clip.samples) + 2 * clip.rate
    clipped = shift_clip(clip, "clipping", rng).samples
    assert np.mean(np.abs(clipped) >= 0.999) > 0.01
    assert set(SHIFTS) == {"none", *EXPECTED_ALARM}


def test_event_times_out_of_range_are_refused_and_still_recorded(server: Server) -> None:
    import httpx

    for stamp in ("nan", "inf", "1e15", "yesterday"):
        response = httpx.post(
            server.url + "/v1/search/text",
            json={"session_id": "clock", "query": "weather in paris"},
            headers={"X-Event-Time": stamp},
        )
        assert response.status_code == 422, stamp
        assert "X-Event-Time" in response.json()["error"]["message"]
    assert (
        rows(server, "SELECT COUNT(*) FROM events WHERE session_id IS NULL AND status_code = 422")[0][0] >= 4
    )
    assert httpx.get(server.url + "/v1/alerts").status_code == 200
