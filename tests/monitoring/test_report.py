"""The monitoring report, built from a real SQLite event store and rendered as text and HTML."""

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from monitoring.alarms import AlarmEngine, Rule
from monitoring.drift import ReferenceProfile
from monitoring.events import Event, Outcome, SQLiteEventStore
from monitoring.report import build_report, render_html, render_text

START = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
STEP_S = 2.0
HALF = 300  # events per half: 10 minutes each


def voice(i: int, at: float, rms_dbfs: float, null: bool, transcript: str = "weather in paris") -> Event:
    outcome: Outcome = "null_transcript" if null else "ok"
    return Event(
        request_id=f"r{i}",
        created_at=at,
        kind="voice_search",
        route="/v1/search/voice",
        status_code=200,
        outcome=outcome,
        session_id=f"s{i}",
        transcript=None if null else transcript,
        confidence=0.0 if null else 0.7,
        latency_s=0.05,
        duration_s=2.0,
        sample_rate_hz=16000,
        rms_dbfs=rms_dbfs,
        peak_dbfs=rms_dbfs + 15.0,
        clipping_ratio=0.0,
    )


def reference(source: str = "corpus/train.jsonl") -> ReferenceProfile:
    rng = np.random.default_rng(0)
    return ReferenceProfile(
        features={
            "rms_dbfs": [float(v) for v in rng.normal(-25.0, 4.0, 2000)],
            "sample_rate_hz": ["16000"] * 2000,
        },
        vocabulary=frozenset({"weather", "in", "paris"}),
        source=source,
    )


def rules(name_prefix: str = "", description: str = "") -> list[Rule]:
    return [
        Rule(
            f"{name_prefix}null_transcripts",
            window_s=120.0,
            threshold=0.5,
            min_samples=20,
            metric="null_transcript_ratio",
            severity="critical",
            description=description,
        ),
        Rule(
            f"{name_prefix}volume_drift",
            window_s=120.0,
            threshold=1.0,
            min_samples=30,
            drift="rms_dbfs",
            test="psi",
            description=description,
        ),
    ]


def fill(store: SQLiteEventStore, transcript: str = "weather in paris") -> None:
    """Ten quiet, well-recognized minutes, then ten minutes 10 dB louder with 80% null transcripts."""
    rng = np.random.default_rng(1)
    for i in range(2 * HALF):
        shifted = i >= HALF
        rms = float(rng.normal(-15.0 if shifted else -25.0, 4.0))
        store.record(voice(i, START + i * STEP_S, rms, null=shifted and i % 5 != 0, transcript=transcript))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    yield store
    store.close()


def test_a_shifted_second_half_fires_and_shows_in_the_drift_table(store: SQLiteEventStore) -> None:
    fill(store)
    engine = AlarmEngine(rules(), reference=reference())
    report = build_report(store, engine, span_s=3600.0, generated_at=123.0)

    newest = START + (2 * HALF - 1) * STEP_S
    assert report.end == newest and report.start == newest - 3600.0
    assert report.events == 2 * HALF
    assert report.by_kind == {"voice_search": 2 * HALF}
    assert report.by_outcome == {"ok": HALF + HALF // 5, "null_transcript": HALF - HALF // 5}
    assert report.metrics["null_transcript_ratio"]["value"] == pytest.approx(0.4)
    assert report.metrics["null_transcript_ratio"]["samples"] == 2 * HALF
    assert report.generated_at == 123.0
    assert report.reference == "corpus/train.jsonl"

    # Both rules fired after the shift and fire still at the end.
    fired = {t.rule: t for t in report.transitions if t.firing}
    assert set(fired) == {"null_transcripts", "volume_drift"}
    assert all(START + HALF * STEP_S < t.at <= newest + 1 for t in fired.values())
    assert not any(not t.firing for t in report.transitions)
    assert {s.rule: s.state for s in report.alarms} == {
        "null_transcripts": "firing",
        "volume_drift": "firing",
    }
    drift = {d.feature: d for d in report.drift}
    # The table judges the whole period (half of it shifted) with the rule's own test and threshold.
    assert drift["rms_dbfs"].threshold == 1.0 and drift["rms_dbfs"].current_n == 2 * HALF
    assert drift["rms_dbfs"].statistic > 0.25
    assert not drift["sample_rate_hz"].drifted

    text = render_text(report)
    assert text.splitlines()[0] == (
        f"voice-search monitoring report: {utc(newest - 3600.0)} to {utc(newest)}"
    )
    transitions = section(text, "Alarm transitions")
    assert any("null_transcripts" in line and "fired" in line for line in transitions)
    assert any("volume_drift" in line and "fired" in line for line in transitions)
    assert not any("resolved" in line for line in transitions)
    assert "Alarms at the end (2 firing)" in text
    table = section(text, "Drift against the reference (corpus/train.jsonl)")
    (rms_row,) = [line.split() for line in table if line.startswith("rms_dbfs")]
    assert rms_row[1] == "psi" and rms_row[-3] == "1" and rms_row[-1] == str(2 * HALF)
    (rate_row,) = [line.split() for line in table if line.startswith("sample_rate_hz")]
    assert rate_row[1] == "chi_square" and rate_row[-2] == "no"


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"


def section(text: str, title: str) -> list[str]:
    """The lines of one `## title` section, up to the blank line that ends it."""
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = lines.index("", start) if "" in lines[start:] else len(lines)
    return lines[start:end]


def test_an_unshifted_store_fires_nothing(store: SQLiteEventStore) -> None:
    rng = np.random.default_rng(2)
    for i in range(2 * HALF):
        store.record(voice(i, START + i * STEP_S, float(rng.normal(-25.0, 4.0)), null=i % 10 == 0))
    report = build_report(store, AlarmEngine(rules(), reference=reference()), span_s=3600.0)
    assert report.transitions == []
    assert all(s.state == "ok" for s in report.alarms)
    assert not any(d.drifted for d in report.drift)
    text = render_text(report)
    assert section(text, "Alarm transitions") == ["(none)"]
    assert "Alarms at the end (0 firing)" in text


def test_the_period_ends_at_the_newest_event_not_the_wall_clock(store: SQLiteEventStore) -> None:
    store.record(replace(voice(0, START - 10_000.0, -25.0, null=True), request_id="old"))  # before the period
    fill(store)
    report = build_report(store, AlarmEngine(rules()), span_s=600.0)
    assert report.end == START + (2 * HALF - 1) * STEP_S
    assert report.events == HALF  # the last ten minutes: the shifted half
    assert report.drift == [] and report.reference is None
    assert "Drift against the reference (none)" in render_text(report)


def test_an_empty_store_gives_an_empty_report(store: SQLiteEventStore) -> None:
    report = build_report(store, AlarmEngine(rules()), span_s=600.0)
    assert report.events == 0 and report.transitions == []
    assert all(s.state == "insufficient_data" for s in report.alarms)
    text = render_text(report)
    assert section(text, "Alarm transitions") == ["(none)"]
    metrics = {line.split()[0]: line.split()[1:] for line in section(text, "Metrics over the period")[1:]}
    assert metrics["null_transcript_ratio"] == ["-", "0"]
    assert "<html>" in render_html(report)


def test_html_escapes_names_sources_transcripts_and_descriptions(store: SQLiteEventStore) -> None:
    script = "<script>alert('x')</script>"
    fill(store, transcript=f"weather {script}")
    engine = AlarmEngine(
        rules(name_prefix=f"{script}_", description=script), reference=reference(source=script)
    )
    report = build_report(store, engine, span_s=3600.0)
    assert any(script in t.rule for t in report.transitions)  # the raw text is in the report...
    page = render_html(report)
    assert "<script" not in page  # ...but never raw in the page
    assert "&lt;script&gt;" in page
    assert page.count("&lt;script&gt;") >= 1 + len(report.transitions)  # the source and every rule row
    # Rows of firing alarms and fired transitions are marked.
    assert "<tr class='firing'>" in page


def test_text_columns_line_up(store: SQLiteEventStore) -> None:
    fill(store)
    text = render_text(build_report(store, AlarmEngine(rules(), reference=reference()), span_s=3600.0))
    header, *rows = section(text, "Alarms at the end (2 firing)")
    state_column = header.index("state")
    assert all(row[state_column:].startswith("firing") for row in rows)
