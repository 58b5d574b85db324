"""Alarm rules: durations, validation, YAML loading, the engine's states and transitions, notifiers."""

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitoring.alarms import (
    AlarmEngine,
    Rule,
    Transition,
    WebhookNotifier,
    load_rules,
    parse_duration,
)
from monitoring.drift import ReferenceProfile
from monitoring.events import Event, Outcome
from tests.monitoring.factory import make


class Recorder:
    """A notifier that keeps what it is told."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []

    def notify(self, transition: Transition) -> None:
        self.transitions.append(transition)


class Broken:
    def notify(self, transition: Transition) -> None:
        raise RuntimeError("the pager is down")


def null_rule(**overrides: Any) -> Rule:
    values: dict[str, Any] = {
        "name": "null_transcripts",
        "metric": "null_transcript_ratio",
        "window_s": 60.0,
        "threshold": 0.5,
        "min_samples": 10,
    }
    values.update(overrides)
    return Rule(**values)


def voice(start: float, count: int, null: bool, step: float = 1.0, prefix: str = "") -> list[Event]:
    """`count` voice searches one `step` apart from `start`, all null transcripts or all answered."""
    outcome: Outcome = "null_transcript" if null else "ok"
    return [make(f"{prefix}{start + i * step}", start + i * step, outcome=outcome) for i in range(count)]


# Durations.


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        ("1.5m", 90.0),
        (" 30 s ", 30.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "2w", "-5m", "5 minutes", "1h30m", "1.2.3s", "ms500"])
def test_bad_durations_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# Rules.


def test_a_rule_watches_a_metric_or_a_drift_subject() -> None:
    assert null_rule().subject == "null_transcript_ratio"
    drift = Rule("loud", window_s=60.0, threshold=0.3, drift="rms_dbfs", test="psi")
    assert drift.subject == "drift:rms_dbfs:psi"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drift": "rms_dbfs", "test": "psi"}, "exactly one"),
        ({"metric": None}, "exactly one"),
        ({"metric": "latency_p99"}, "unknown metric 'latency_p99'"),
        ({"metric": None, "drift": "loudness", "test": "psi"}, "unknown feature 'loudness'"),
        ({"metric": None, "drift": "rms_dbfs"}, "'test' must be one of"),
        ({"metric": None, "drift": "rms_dbfs", "test": "anderson"}, "'test' must be one of"),
        ({"comparator": "=="}, "comparator"),
        ({"severity": "page"}, "severity"),
        ({"window_s": 0.0}, "window must be positive"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_invalid_rules_are_refused_naming_the_rule(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        null_rule(**overrides)
    assert "'null_transcripts'" in str(raised.value)


RULES_YAML = """
rules:
  - name: volume_drift
    drift: rms_dbfs
    test: psi
    window: 2m
    comparator: ">"
    threshold: 0.5
    severity: warning
    min_samples: 60
    description: clip loudness moved
  - name: slow
    metric: latency_p95_seconds
    window: 90
    threshold: 0.5
    severity: critical
"""


def test_load_rules_reads_yaml_with_durations_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "alarms.yml"
    path.write_text(RULES_YAML)
    volume, slow = load_rules(path)
    assert volume == Rule(
        name="volume_drift",
        window_s=120.0,
        threshold=0.5,
        comparator=">",
        severity="warning",
        min_samples=60,
        drift="rms_dbfs",
        test="psi",
        description="clip loudness moved",
    )
    assert (slow.window_s, slow.comparator, slow.min_samples, slow.severity) == (90.0, ">", 1, "critical")


def test_the_bundled_rules_load() -> None:
    rules = load_rules(Path(__file__).resolve().parents[2] / "data" / "monitoring" / "alarms.yml")
    assert rules and len({r.name for r in rules}) == len(rules)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("metric: nope\n    window: 1m\n    threshold: 1", "unknown metric 'nope'"),
        ("metric: redo_ratio\n    threshold: 1", "window"),  # no window
        ("metric: redo_ratio\n    window: soon\n    threshold: 1", "not a duration"),
        ("metric: redo_ratio\n    window: 1m\n    threshold: 1\n    colour: red", "colour"),
        ("metric: redo_ratio\n    window: 1m", "threshold"),
    ],
)
def test_load_rules_names_the_file_and_the_bad_rule(tmp_path: Path, rule: str, message: str) -> None:
    path = tmp_path / "alarms.yml"
    good = "  - name: fine\n    metric: redo_ratio\n    window: 1m\n    threshold: 0.5\n"
    path.write_text(f"rules:\n{good}  - name: the_bad_one\n    {rule}\n")
    with pytest.raises(ValueError, match=message) as raised:
        load_rules(path)
    assert "alarms.yml" in str(raised.value)
    assert "'the_bad_one'" in str(raised.value)
    assert "'fine'" not in str(raised.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rules: {}\n", "'rules' list"),
        ("- name: x\n", "'rules' list"),
        ("rules:\n  - metric: redo_ratio\n", "needs a name"),
        ("rules: [unclosed\n", "cannot read"),
        (
            "rules:\n"
            "  - {name: twin, metric: redo_ratio, window: 1m, threshold: 1}\n"
            "  - {name: twin, metric: click_ratio, window: 1m, threshold: 1}\n",
            "unique",
        ),
    ],
)
def test_load_rules_refuses_malformed_files(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "alarms.yml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_rules(path)


def test_load_rules_of_a_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.yml"):
        load_rules(tmp_path / "nowhere.yml")


# The engine.


def test_a_window_with_too_few_samples_is_insufficient_data_and_does_not_fire() -> None:
    recorder = Recorder()
    engine = AlarmEngine([null_rule(min_samples=10)], notifiers=[recorder])
    events = voice(0.0, 9, null=True)  # every one null, but only nine
    (state,) = engine.evaluate(events, now=30.0).states
    assert state.state == "insufficient_data"
    assert state.samples == 9 and state.value == pytest.approx(1.0)
    assert recorder.transitions == [] and list(engine.history) == []
    # The tenth sample makes it judgeable, and it fires.
    events += voice(9.0, 1, null=True)
    (state,) = engine.evaluate(events, now=30.0).states
    assert state.state == "firing"
    assert [t.firing for t in recorder.transitions] == [True]


def test_a_window_without_a_value_is_insufficient_data() -> None:
    engine = AlarmEngine([null_rule(min_samples=1)])
    typed_only = [make(f"t{i}", float(i), kind="text_search") for i in range(20)]
    (state,) = engine.evaluate(typed_only, now=30.0).states
    assert state.state == "insufficient_data" and state.value is None and state.samples == 0


def test_a_metric_rule_fires_on_crossing_and_resolves_after_with_two_transitions() -> None:
    recorder = Recorder()
    rule = null_rule(window_s=60.0, threshold=0.5, min_samples=10, severity="critical")
    engine = AlarmEngine([rule], notifiers=[recorder])
    # 0-60 s answered, 60-120 s all null transcripts, 120-240 s answered again.
    events = voice(0.0, 60, null=False) + voice(60.0, 60, null=True) + voice(120.0, 120, null=False)
    states = [engine.evaluate(events, now=float(t)).states[0] for t in range(60, 241, 10)]
    assert [s.state for s in states[:3]] == ["ok", "ok", "ok"]  # 60, 70, 80: at most a third null
    assert states[6].state == "firing"  # 120: the window is all null
    assert states[-1].state == "ok"  # 240: all answered again
    assert len(recorder.transitions) == 2
    fired, resolved = recorder.transitions
    assert fired.firing and not resolved.firing
    assert fired.rule == resolved.rule == "null_transcripts"
    assert fired.severity == "critical" and fired.subject == "null_transcript_ratio"
    assert fired.value is not None and fired.value > 0.5 and fired.threshold == 0.5
    assert resolved.value is not None and resolved.value <= 0.5
    # It fired at the first evaluation past half null (> 90 s) and resolved at the first back at half.
    assert fired.at == 100.0 and resolved.at == 150.0
    assert list(engine.history) == recorder.transitions
    # `since` holds while the state holds.
    firing = [s for s in states if s.state == "firing"]
    assert {s.since for s in firing} == {100.0}


def test_a_steady_state_notifies_once() -> None:
    recorder = Recorder()
    engine = AlarmEngine([null_rule(min_samples=5)], notifiers=[recorder])
    events = voice(0.0, 300, null=True)
    for t in range(60, 300, 10):
        engine.evaluate(events, now=float(t))
    assert len(recorder.transitions) == 1


def test_windows_are_event_time_and_half_open() -> None:
    engine = AlarmEngine([null_rule(window_s=60.0, min_samples=10)])
    now = 1_000_000.0
    answered_inside = voice(now - 60.0, 10, null=False, step=5.0, prefix="in-")  # [now-60, now-15]
    null_before = voice(now - 200.0, 100, null=True, step=1.0, prefix="old-")  # [now-200, now-101]
    null_at_start_edge = [make("edge-start", now - 60.0 - 1e-3, outcome="null_transcript")]
    null_at_now = [make("edge-now", now, outcome="null_transcript")]
    null_after = voice(now + 1.0, 100, null=True, prefix="future-")
    events = answered_inside + null_before + null_at_start_edge + null_at_now + null_after
    (state,) = engine.evaluate(events, now=now).states
    assert state.state == "ok"
    assert state.samples == 10 and state.value == 0.0
    assert state.evaluated_at == now


def test_a_drift_rule_compares_the_window_with_the_reference() -> None:
    rng = np.random.default_rng(0)
    reference = ReferenceProfile(features={"rms_dbfs": [float(v) for v in rng.normal(-25.0, 5.0, 2000)]})
    rule = Rule("volume", window_s=60.0, threshold=0.5, drift="rms_dbfs", test="psi", min_samples=30)
    recorder = Recorder()
    engine = AlarmEngine([rule], reference=reference, notifiers=[recorder])

    def clips(start: float, loc: float) -> list[Event]:
        return [
            make(f"c{start}-{i}", start + i, duration_s=2.0, rms_dbfs=float(v))
            for i, v in enumerate(rng.normal(loc, 5.0, 60))
        ]

    events = clips(0.0, -25.0) + clips(60.0, -15.0)
    quiet = engine.evaluate(events, now=60.0)
    assert quiet.states[0].state == "ok"
    assert quiet.drift[0].feature == "rms_dbfs" and not quiet.drift[0].drifted
    loud = engine.evaluate(events, now=120.0)
    assert loud.states[0].state == "firing" and loud.states[0].samples == 60
    assert loud.drift[0].drifted and loud.drift[0].statistic == loud.states[0].value
    assert [t.subject for t in recorder.transitions] == ["drift:rms_dbfs:psi"]


def test_the_drift_table_and_the_alarm_agree_on_a_small_window() -> None:
    """Loud traffic, but fewer clips than the rule's minimum: the alarm waits for data, and the
    table neither calls the watched feature drifted nor an unwatched one (the rules' floor)."""
    rng = np.random.default_rng(1)
    profile: dict[str, list[float | str]] = {
        f: [float(v) for v in rng.normal(-25.0, 5.0, 2000)] for f in ("rms_dbfs", "peak_dbfs")
    }
    rule = Rule("volume", window_s=60.0, threshold=0.5, drift="rms_dbfs", test="psi", min_samples=150)
    engine = AlarmEngine([rule], reference=ReferenceProfile(features=profile))
    loud: list[float | str] = [float(v) for v in rng.normal(-10.0, 5.0, 40)]
    evaluation = engine.evaluate(
        [make(f"c{i}", float(i), duration_s=2.0, rms_dbfs=float(v)) for i, v in enumerate(loud)], now=60.0
    )
    assert evaluation.states[0].state == "insufficient_data"
    table = {r.feature: r for r in engine.drift_table({"rms_dbfs": loud, "peak_dbfs": loud})}
    for result in table.values():
        assert result.statistic > 0.5 and not result.drifted and not result.judged
        assert result.min_samples == 150
    enough: list[float | str] = [float(v) for v in rng.normal(-10.0, 5.0, 150)]
    assert all(r.drifted and r.judged for r in engine.drift_table({"rms_dbfs": enough, "peak_dbfs": enough}))


def test_a_drift_rule_without_a_reference_is_insufficient_data() -> None:
    rule = Rule("volume", window_s=60.0, threshold=0.5, drift="rms_dbfs", test="psi")
    engine = AlarmEngine([rule])
    events = [make(f"c{i}", float(i), duration_s=2.0, rms_dbfs=-20.0) for i in range(50)]
    evaluation = engine.evaluate(events, now=60.0)
    assert evaluation.states[0].state == "insufficient_data" and evaluation.drift == []


def test_a_failing_notifier_does_not_stop_the_others() -> None:
    recorder = Recorder()
    engine = AlarmEngine([null_rule(min_samples=1)], notifiers=[Broken(), recorder])
    (state,) = engine.evaluate(voice(0.0, 5, null=True), now=10.0).states
    assert state.state == "firing"
    assert len(recorder.transitions) == 1


def test_the_snapshot_is_json_ready() -> None:
    engine = AlarmEngine([null_rule(min_samples=1)])
    engine.evaluate(voice(0.0, 5, null=True), now=10.0)
    snapshot = json.loads(json.dumps(engine.snapshot()))
    assert snapshot["alerts"][0]["state"] == "firing"
    assert snapshot["history"][0]["firing"] is True


def test_the_vocabulary_of_the_reference_feeds_oov_rules() -> None:
    rule = Rule("new_words", window_s=60.0, threshold=0.2, metric="typed_oov_ratio")
    engine = AlarmEngine([rule], reference=ReferenceProfile(features={}, vocabulary=frozenset({"paris"})))
    events = [make(f"t{i}", float(i), kind="text_search", query_text="zanzibar") for i in range(5)]
    (state,) = engine.evaluate(events, now=10.0).states
    assert state.state == "firing" and state.value == 1.0


# The webhook.


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        server: Any = self.server
        server.received.append((self.headers["Content-Type"], json.loads(self.rfile.read(length))))
        self.send_response(204)
        self.end_headers()
        server.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def hook_server() -> Iterator[Any]:
    server: Any = HTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []
    server.arrived = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


TRANSITION = Transition("null_transcripts", "critical", True, 123.5, 0.75, 0.5, "null_transcript_ratio")


def test_the_webhook_posts_the_transition_as_json(hook_server: Any) -> None:
    host, port = hook_server.server_address
    WebhookNotifier(f"http://{host}:{port}/alarms").notify(TRANSITION)
    assert hook_server.arrived.wait(10), "the webhook never arrived"
    ((content_type, body),) = hook_server.received
    assert content_type == "application/json"
    assert body == {
        "alarm": {
            "rule": "null_transcripts",
            "severity": "critical",
            "firing": True,
            "at": 123.5,
            "value": 0.75,
            "threshold": 0.5,
            "subject": "null_transcript_ratio",
        }
    }


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in r.getMessage() for r in caplog.records):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("url", ["closed", "http://[invalid", "not a url"])
def test_a_failing_webhook_only_logs(caplog: pytest.LogCaptureFixture, url: str) -> None:
    if url == "closed":  # a port nothing listens on
        server = HTTPServer(("127.0.0.1", 0), _Hook)
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        server.server_close()
    caplog.set_level(logging.WARNING, logger="monitoring.alarms")
    errors: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = errors.append
    try:
        WebhookNotifier(url, timeout_s=2.0).notify(TRANSITION)  # returns at once, raises nothing
        assert wait_for_log(caplog, "alarm webhook"), "the failure was not logged"
    finally:
        threading.excepthook = previous
    assert errors == []
    assert any(url in r.getMessage() for r in caplog.records)


def test_the_engine_survives_a_dead_webhook(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="monitoring.alarms")
    engine = AlarmEngine([null_rule(min_samples=1)], notifiers=[WebhookNotifier("http://127.0.0.1:9/x", 1.0)])
    (state,) = engine.evaluate(voice(0.0, 5, null=True), now=10.0).states
    assert state.state == "firing"
    assert wait_for_log(caplog, "alarm webhook")


def test_a_per_slot_rule_judges_each_answering_slot_and_retires_a_slot_that_left() -> None:
    """A canary: the champion answers, the challenger says nothing. Overall the window is under
    the threshold; the challenger's own alarm fires, and resolves when it stops answering."""
    recorder = Recorder()
    engine = AlarmEngine([null_rule(per_slot=True)], notifiers=[recorder])
    champion = [
        replace(e, slot="primary", session_id=f"a{i}") for i, e in enumerate(voice(0.0, 45, null=False))
    ]
    challenger = [
        replace(e, slot="challenger", session_id=f"b{i}")
        for i, e in enumerate(voice(0.0, 15, null=True, prefix="c"))
    ]
    states = {s.rule: s for s in engine.evaluate(champion + challenger, now=60.0).states}
    assert states["null_transcripts"].state == "ok" and states["null_transcripts"].value == 0.25
    assert states["null_transcripts[challenger]"].state == "firing"
    assert (
        states["null_transcripts[challenger]"].value == 1.0
        and states["null_transcripts[challenger]"].samples == 15
    )
    assert states["null_transcripts[primary]"].state == "ok"
    assert [(t.rule, t.firing) for t in recorder.transitions] == [("null_transcripts[challenger]", True)]

    # Rolled back: only the champion answers; the challenger's alarm resolves and is gone.
    later = [
        replace(e, slot="primary", session_id=f"d{i}")
        for i, e in enumerate(voice(60.0, 60, null=False, prefix="d"))
    ]
    rules = {s.rule for s in engine.evaluate(later, now=120.0).states}
    assert rules == {"null_transcripts"} and set(engine.states) == {"null_transcripts"}
    assert [(t.rule, t.firing) for t in recorder.transitions][-1] == ("null_transcripts[challenger]", False)


def test_per_slot_applies_to_metric_rules_only() -> None:
    with pytest.raises(ValueError, match="per_slot applies to metric rules only"):
        Rule(name="d", drift="rms_dbfs", test="psi", window_s=60, threshold=1.0, per_slot=True)
