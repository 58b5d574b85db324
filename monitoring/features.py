"""What the monitors measure, from events: per-clip features for drift and windowed rates for alarms.

Two kinds of quantity:

- **features**, one value per voice request, whose *distribution* is compared with the reference
  profile (input: duration, loudness, clipping, silence, speech ratio, sample rate; output:
  confidence, words per transcript);
- **window metrics**, one number per time window (rates, ratios, percentiles), compared with a
  threshold. `WINDOW_METRICS` lists them; each also knows how many events it rests on, so an
  alarm can refuse to judge a window with too few samples.

Windows are [start, end) in event time (the request's own timestamps), never the wall clock.
"""

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from monitoring.events import Event
from monitoring.sessions import session_signals

NUMERIC_FEATURES = (
    "duration_s",
    "rms_dbfs",
    "peak_dbfs",
    "clipping_ratio",
    "leading_silence_ms",
    "trailing_silence_ms",
    "speech_ratio",
    "confidence",
    "transcript_words",
)
CATEGORICAL_FEATURES = ("sample_rate_hz",)
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES

AUDIO_KINDS = ("voice_search", "transcribe", "openai_transcription")
SEARCH_KINDS = ("voice_search", "text_search")
FAILED = ("client_error", "server_error")
SILENT_DBFS = -100.0
"""Stand-in for the -inf dBFS of digital silence, so distributions stay finite."""

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str | None) -> list[str]:
    """Lower-case word tokens (transcripts and typed queries are compared on these)."""
    return _WORD.findall(text.lower()) if text else []


def empty_audio(event: Event) -> str | None:
    """Why a request's audio was unusable as speech: "empty" (no bytes), "all_zero" (digital
    silence: a muted microphone, a missing track), or None."""
    if event.audio_bytes == 0 or event.error_type == "empty_audio":
        return "empty"
    return "all_zero" if event.is_all_zero else None


def clip_features(event: Event) -> dict[str, float | str] | None:
    """The drift features of one answered voice request, or None when it carried no usable audio."""
    if event.kind not in AUDIO_KINDS or event.outcome in FAILED or event.duration_s is None:
        return None
    values: dict[str, float | str] = {}
    for name in NUMERIC_FEATURES:
        if name == "transcript_words":
            values[name] = float(len(words(event.transcript)))
            continue
        value = getattr(event, name)
        if value is not None:
            values[name] = max(float(value), SILENT_DBFS) if name.endswith("dbfs") else float(value)
    if event.sample_rate_hz:
        values["sample_rate_hz"] = str(event.sample_rate_hz)
    return values


def feature_columns(rows: Iterable[dict[str, float | str]]) -> dict[str, list[float | str]]:
    """Per-feature value lists from per-clip feature dicts."""
    columns: dict[str, list[float | str]] = {name: [] for name in FEATURES}
    for row in rows:
        for name, value in row.items():
            if name in columns:
                columns[name].append(value)
    return columns


def event_features(events: Iterable[Event]) -> dict[str, list[float | str]]:
    return feature_columns(f for f in (clip_features(e) for e in events) if f is not None)


@dataclass(frozen=True)
class WindowValue:
    """A window metric: its value (None when nothing to measure) and the events it rests on."""

    value: float | None
    samples: int


@dataclass(frozen=True)
class WindowContext:
    """What a window metric may need besides the events."""

    vocabulary: frozenset[str] = frozenset()
    redo_window_s: float = 30.0
    tokenize: Callable[[str], list[str]] = words
    """How text becomes vocabulary words: the service passes its one text normalizer, so typed
    "São Paulo" and the training text's "sao paulo" meet as the same words."""


MetricFn = Callable[[Sequence[Event], float, WindowContext], WindowValue]


def _ratio(numerator: int, denominator: int) -> WindowValue:
    return WindowValue(numerator / denominator if denominator else None, denominator)


def _p95(values: Sequence[float]) -> WindowValue:
    return WindowValue(float(np.percentile(values, 95)) if values else None, len(values))


def _mean(values: Sequence[float]) -> WindowValue:
    return WindowValue(float(np.mean(values)) if values else None, len(values))


def _voice(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.kind == "voice_search" and e.outcome not in FAILED]


def _audio_requests(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.kind in AUDIO_KINDS]


def _requests_per_second(events: Sequence[Event], seconds: float, _: WindowContext) -> WindowValue:
    return WindowValue(len(events) / seconds if seconds > 0 else None, len(events))


def _client_error_ratio(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    return _ratio(sum(e.outcome == "client_error" for e in events), len(events))


def _server_error_ratio(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    return _ratio(sum(e.outcome == "server_error" for e in events), len(events))


def _latency_p95(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    return _p95([e.latency_s for e in _voice(events) if e.latency_s is not None])


def _asr_p95(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    return _p95([e.timings_s["asr"] for e in _voice(events) if "asr" in e.timings_s])


def _null_transcript_ratio(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    voice = _voice(events)
    return _ratio(sum(e.outcome == "null_transcript" for e in voice), len(voice))


def _no_result_ratio(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    searches = [e for e in events if e.kind in SEARCH_KINDS and e.outcome not in FAILED]
    return _ratio(sum(e.outcome in ("no_result", "null_transcript") for e in searches), len(searches))


def _empty_audio_ratio(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    audio = _audio_requests(events)
    return _ratio(sum(empty_audio(e) is not None for e in audio), len(audio))


def _redo_ratio(events: Sequence[Event], _s: float, context: WindowContext) -> WindowValue:
    signals = session_signals(events, context.redo_window_s)
    return _ratio(len(signals.redo), signals.voice_searches)


def _switch_ratio(events: Sequence[Event], _s: float, context: WindowContext) -> WindowValue:
    signals = session_signals(events, context.redo_window_s)
    return _ratio(len(signals.switch_to_typing), signals.voice_searches)


def _click_ratio(events: Sequence[Event], _s: float, context: WindowContext) -> WindowValue:
    voice = {e.request_id for e in _voice(events)}
    clicked = set(session_signals(events, context.redo_window_s).clicked) & voice
    return _ratio(len(clicked), len(voice))


def _mean_confidence(events: Sequence[Event], _s: float, _c: WindowContext) -> WindowValue:
    return _mean([e.confidence for e in _voice(events) if e.transcript and e.confidence is not None])


def _typed_oov_ratio(events: Sequence[Event], _s: float, context: WindowContext) -> WindowValue:
    """Words users typed or corrected that the training text never had: new vocabulary (concept drift)."""
    typed = [
        w
        for e in events
        if e.outcome not in FAILED
        for w in context.tokenize(e.query_text or e.corrected_text or "")
    ]
    return _oov(typed, context)


def _transcript_oov_ratio(events: Sequence[Event], _s: float, context: WindowContext) -> WindowValue:
    return _oov([w for e in _voice(events) for w in context.tokenize(e.transcript or "")], context)


def _oov(tokens: Sequence[str], context: WindowContext) -> WindowValue:
    if not context.vocabulary:
        return WindowValue(None, 0)
    return _ratio(sum(t not in context.vocabulary for t in tokens), len(tokens))


WINDOW_METRICS: dict[str, MetricFn] = {
    "requests_per_second": _requests_per_second,
    "client_error_ratio": _client_error_ratio,
    "server_error_ratio": _server_error_ratio,
    "latency_p95_seconds": _latency_p95,
    "asr_p95_seconds": _asr_p95,
    "null_transcript_ratio": _null_transcript_ratio,
    "no_result_ratio": _no_result_ratio,
    "empty_audio_ratio": _empty_audio_ratio,
    "redo_ratio": _redo_ratio,
    "switch_to_typing_ratio": _switch_ratio,
    "click_ratio": _click_ratio,
    "mean_confidence": _mean_confidence,
    "typed_oov_ratio": _typed_oov_ratio,
    "transcript_oov_ratio": _transcript_oov_ratio,
}
"""Window metrics by name: the names alarm rules, the dashboard and reports use."""


def window_metric(
    name: str, events: Sequence[Event], seconds: float, context: WindowContext | None = None
) -> WindowValue:
    """One window metric over `events` (already limited to a window of `seconds`)."""
    try:
        fn = WINDOW_METRICS[name]
    except KeyError:
        raise KeyError(f"unknown window metric {name!r}; known: {', '.join(WINDOW_METRICS)}") from None
    return fn(events, seconds, context or WindowContext())


def through(t: float) -> float:
    """The end of a window that includes an event at exactly `t` (windows are [start, end))."""
    return math.nextafter(t, math.inf)
