"""Per-clip drift features and window metrics, on events built by hand."""

import math
from typing import Any

import numpy as np
import pytest

from monitoring.alarms import WindowedEvents
from monitoring.events import Event
from monitoring.features import (
    FEATURES,
    SILENT_DBFS,
    WINDOW_METRICS,
    WindowContext,
    clip_features,
    event_features,
    feature_columns,
    window_metric,
    words,
)
from tests.monitoring.factory import make


def clip(request_id: str, **fields: Any) -> Event:
    """An answered voice search with full audio statistics."""
    values: dict[str, Any] = {
        "duration_s": 2.0,
        "sample_rate_hz": 16000,
        "rms_dbfs": -25.0,
        "peak_dbfs": -3.0,
        "clipping_ratio": 0.0,
        "leading_silence_ms": 120.0,
        "trailing_silence_ms": 200.0,
        "speech_ratio": 0.8,
        "confidence": 0.6,
        "transcript": "weather in paris",
    }
    values.update(fields)
    return make(request_id, **values)


def metric(name: str, events: list[Event], seconds: float = 60.0, **context: Any) -> tuple[float | None, int]:
    value = window_metric(name, events, seconds, WindowContext(**context))
    return value.value, value.samples


def assert_metric(name: str, events: list[Event], value: float, samples: int, **options: Any) -> None:
    """`name` over `events` is `value`, resting on `samples` events."""
    got, got_samples = metric(name, events, **options)
    assert got == pytest.approx(value), name
    assert got_samples == samples, name


def test_words_are_lower_case_tokens_and_none_is_no_words() -> None:
    assert words("Weather in PARIS, tomorrow's!") == ["weather", "in", "paris", "tomorrow's"]
    assert words(None) == []
    assert words("") == []


def test_clip_features_of_an_answered_voice_search() -> None:
    features = clip_features(clip("r", transcript="coffee near the station"))
    assert features is not None
    assert features["rms_dbfs"] == -25.0
    assert features["transcript_words"] == 4.0
    assert features["sample_rate_hz"] == "16000"  # categorical: a string
    assert set(features) == set(FEATURES)


def test_clip_features_skip_failed_requests_and_requests_without_audio() -> None:
    assert clip_features(clip("bad", outcome="client_error", status_code=415)) is None
    assert clip_features(clip("boom", outcome="server_error", status_code=500)) is None
    assert clip_features(make("typed", kind="text_search", query_text="paris")) is None
    assert clip_features(clip("no-audio", duration_s=None)) is None
    # A transcription request is audio too.
    assert clip_features(clip("t", kind="transcribe")) is not None


def test_clip_features_clamp_minus_infinity_dbfs_of_digital_silence() -> None:
    features = clip_features(clip("silent", rms_dbfs=-math.inf, peak_dbfs=-math.inf, transcript=None))
    assert features is not None
    assert features["rms_dbfs"] == SILENT_DBFS
    assert features["peak_dbfs"] == SILENT_DBFS
    assert features["transcript_words"] == 0.0
    # A loud clip is not clamped.
    loud = clip_features(clip("loud", rms_dbfs=-3.5))
    assert loud is not None and loud["rms_dbfs"] == -3.5


def test_clip_features_leave_out_what_was_not_measured() -> None:
    features = clip_features(clip("r", confidence=None, sample_rate_hz=None))
    assert features is not None
    assert "confidence" not in features and "sample_rate_hz" not in features


def test_event_features_collect_one_column_per_feature() -> None:
    events = [
        clip("a", rms_dbfs=-20.0),
        clip("b", rms_dbfs=-30.0, sample_rate_hz=8000),
        clip("c", outcome="server_error", status_code=500, rms_dbfs=-99.0),
        make("d", kind="text_search", query_text="paris"),
    ]
    columns = event_features(events)
    assert columns["rms_dbfs"] == [-20.0, -30.0]
    assert columns["sample_rate_hz"] == ["16000", "8000"]
    assert set(columns) == set(FEATURES)
    assert feature_columns([{"unknown": 1.0}]) == {name: [] for name in FEATURES}


def test_null_transcript_ratio_counts_answered_voice_searches_only() -> None:
    events = [
        make("v1"),
        make("v2", outcome="null_transcript"),
        make("v3", outcome="null_transcript"),
        make("v4", outcome="no_result"),
        make("failed", outcome="server_error", status_code=500),
        make("typed", kind="text_search", outcome="no_result"),
        make("tr", kind="transcribe", outcome="null_transcript"),
    ]
    assert_metric("null_transcript_ratio", events, 2 / 4, 4)


def test_no_result_ratio_counts_null_transcripts_as_searches_without_results() -> None:
    events = [
        make("v1"),
        make("v2", outcome="null_transcript"),
        make("v3", outcome="no_result"),
        make("t1", kind="text_search"),
        make("t2", kind="text_search", outcome="no_result"),
        make("bad", outcome="client_error", status_code=422),
        make("tr", kind="transcribe"),
    ]
    assert_metric("no_result_ratio", events, 3 / 5, 5)


def test_client_and_server_error_ratios_are_over_every_request() -> None:
    events = [
        make("ok"),
        make("c1", outcome="client_error", status_code=415),
        make("c2", kind="text_search", outcome="client_error", status_code=422),
        make("s1", outcome="server_error", status_code=503),
    ]
    assert_metric("client_error_ratio", events, 0.5, 4)
    assert_metric("server_error_ratio", events, 0.25, 4)


def test_latency_p95_is_over_answered_voice_searches() -> None:
    latencies = [0.01 * i for i in range(1, 101)]
    events = [make(f"v{i}", latency_s=s) for i, s in enumerate(latencies)]
    events += [
        make("slow-typed", kind="text_search", latency_s=50.0),
        make("slow-failed", outcome="server_error", status_code=500, latency_s=60.0),
        make("unmeasured"),
    ]
    value, samples = metric("latency_p95_seconds", events)
    assert samples == 100
    assert value == pytest.approx(float(np.percentile(latencies, 95)))


def test_asr_p95_reads_the_asr_stage_timing() -> None:
    events = [make(f"v{i}", timings_s={"asr": 0.1 * (i + 1), "search": 9.0}) for i in range(10)]
    events.append(make("no-asr", timings_s={"search": 9.0}))
    value, samples = metric("asr_p95_seconds", events)
    assert samples == 10
    assert value == pytest.approx(float(np.percentile([0.1 * (i + 1) for i in range(10)], 95)))


def test_metrics_of_an_empty_window_have_no_value_and_no_samples() -> None:
    for name in WINDOW_METRICS:
        value, samples = metric(name, [], vocabulary=frozenset({"paris"}))
        assert samples == 0, name
        assert value is None or name == "requests_per_second", name


def test_requests_per_second_divides_by_the_window() -> None:
    events = [make(f"r{i}", at=float(i)) for i in range(30)]
    assert_metric("requests_per_second", events, 0.5, 30, seconds=60.0)


def test_empty_audio_ratio_counts_empty_and_all_zero_audio() -> None:
    events = [
        make("ok", audio_bytes=3000),
        make("empty", audio_bytes=0, outcome="client_error", status_code=400),
        make("zero", audio_bytes=3000, is_all_zero=True, outcome="null_transcript"),
        make("typed", kind="text_search"),
    ]
    assert_metric("empty_audio_ratio", events, 2 / 3, 3)


def test_typed_oov_ratio_counts_words_not_in_the_vocabulary() -> None:
    vocabulary = frozenset({"weather", "in", "paris"})
    events = [
        make("t1", kind="text_search", query_text="Weather in Paris"),  # 3 known
        make("t2", kind="text_search", query_text="weather in Zanzibar"),  # 1 new of 3
        make("f", kind="feedback", corrected_text="paris bistro"),  # 1 new of 2
        make("bad", kind="text_search", query_text="unknown words here", outcome="client_error"),
        make("v", transcript="quokka sightings"),  # spoken, not typed
    ]
    assert_metric("typed_oov_ratio", events, 2 / 8, 8, vocabulary=vocabulary)
    # Without a vocabulary there is nothing to compare with.
    assert metric("typed_oov_ratio", events) == (None, 0)


def test_transcript_oov_ratio_reads_voice_transcripts() -> None:
    vocabulary = frozenset({"weather", "in", "paris"})
    events = [make("v1", transcript="weather in quito"), make("t", kind="text_search", query_text="x y")]
    assert_metric("transcript_oov_ratio", events, 1 / 3, 3, vocabulary=vocabulary)


def test_mean_confidence_ignores_empty_transcripts() -> None:
    events = [
        make("a", transcript="paris", confidence=0.8),
        make("b", transcript="rome", confidence=0.4),
        make("c", transcript=None, confidence=0.0, outcome="null_transcript"),
    ]
    assert_metric("mean_confidence", events, 0.6, 2)


def test_session_ratios_and_clicks_from_window_events() -> None:
    events = [
        make("v1", at=0.0, session_id="s"),
        make("v2", at=5.0, session_id="s"),  # v1 redone
        make("t", at=8.0, kind="text_search", session_id="s"),  # v2 typed instead
        make("v3", at=100.0, session_id="s"),
        make("c", at=101.0, kind="feedback", session_id="s", target_request_id="v3", clicked_id="x"),
    ]
    assert_metric("redo_ratio", events, 1 / 3, 3, redo_window_s=30.0)
    assert_metric("switch_to_typing_ratio", events, 1 / 3, 3, redo_window_s=30.0)
    assert_metric("click_ratio", events, 1 / 3, 3, redo_window_s=30.0)


def test_an_unknown_window_metric_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="latency_p99"):
        window_metric("latency_p99", [], 60.0)


def test_in_window_is_half_open() -> None:
    events = [make(f"r{t}", at=float(t)) for t in (9, 10, 15, 20, 21)]
    assert [e.request_id for e in WindowedEvents(events).between(10.0, 20.0)] == ["r10", "r15"]
