"""Prometheus metrics of the service: software, input and output, plus the monitors' own verdicts.

Names follow Prometheus conventions: the `voice_search_` prefix, base units (seconds, bytes,
ratios), `_total` for counters, and only low-cardinality labels (route, status, stage, slot,
model_version, sample rate, alert, feature, test), never a user, session or request id.

Everything here is fed from `Event`s (the same rows the store keeps), so /metrics and the event
store can never disagree about what happened; the few live gauges (in-flight requests, queue
depth) are set by the service directly.
"""

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitoring.events import Event
from monitoring.features import AUDIO_KINDS, SEARCH_KINDS, SILENT_DBFS, empty_audio, words

PREFIX = "voice_search"
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS_S = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
DBFS_BUCKETS = (-80.0, -60.0, -50.0, -45.0, -40.0, -35.0, -30.0, -25.0, -20.0, -15.0, -10.0, -5.0, 0.0)
RATIO_BUCKETS = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SILENCE_BUCKETS_S = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
WORD_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0)

COMMON_SAMPLE_RATES = frozenset({8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000})
"""Sample rates labelled as themselves; any other is "other", so labels stay few."""


class ServiceMetrics:
    """The service's metrics in their own registry (so tests and several apps never collide)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, routes: Iterable[str] | None = None
    ) -> None:
        """`routes`: the service's paths; requests to any other path are labelled "other" (a
        scanner probing random URLs must not create a time series per URL)."""
        self.registry = registry or CollectorRegistry()
        self.routes = frozenset(routes) if routes is not None else None
        ProcessCollector(namespace=PREFIX, registry=self.registry)  # CPU seconds, resident memory
        PlatformCollector(registry=self.registry)
        r, p = self.registry, PREFIX

        # Software.
        self.requests = Counter(f"{p}_requests", "Requests answered", ["route", "status"], registry=r)
        self.request_duration = Histogram(
            f"{p}_request_duration_seconds",
            "End-to-end latency as the server saw it",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_duration = Histogram(
            f"{p}_stage_duration_seconds",
            "Latency of one pipeline stage (decode, preprocess, vad, asr, decoding, search)",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge(f"{p}_requests_in_flight", "Requests being handled now", registry=r)
        self.streams_open = Gauge(f"{p}_streams_open", "Streaming voice searches open now", registry=r)
        self.stream_first_partial = Histogram(
            f"{p}_stream_first_partial_seconds",
            "Streaming: from the first audio received to the first partial result sent",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stream_final = Histogram(
            f"{p}_stream_final_seconds",
            "Streaming: from the end of the utterance (the client's end, or the endpoint) to the final sent",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_depth = Gauge(f"{p}_queue_depth", "Clips waiting for the recognizer", registry=r)
        self.model_load = Gauge(
            f"{p}_model_load_seconds",
            "Time to load model, VAD, decoder and index",
            ["model_version"],
            registry=r,
        )
        self.model_info = Gauge(
            f"{p}_model_info",
            "The model this process serves (value 1)",
            ["model_version", "slot"],
            registry=r,
        )
        self.event_store_errors = Counter(
            f"{p}_event_store_errors", "Events that could not be written", registry=r
        )

        # Input.
        self.clip_duration = Histogram(
            f"{p}_clip_duration_seconds", "Duration of received clips", buckets=DURATION_BUCKETS_S, registry=r
        )
        self.clip_rms = Histogram(
            f"{p}_clip_rms_dbfs",
            "Clip loudness (RMS, dBFS) before normalization",
            buckets=DBFS_BUCKETS,
            registry=r,
        )
        self.clip_clipping = Histogram(
            f"{p}_clip_clipping_ratio", "Fraction of samples at full scale", buckets=RATIO_BUCKETS, registry=r
        )
        self.clip_leading_silence = Histogram(
            f"{p}_clip_leading_silence_seconds",
            "Silence before the speech",
            buckets=SILENCE_BUCKETS_S,
            registry=r,
        )
        self.clip_trailing_silence = Histogram(
            f"{p}_clip_trailing_silence_seconds",
            "Silence after the speech",
            buckets=SILENCE_BUCKETS_S,
            registry=r,
        )
        self.clip_speech = Histogram(
            f"{p}_clip_speech_ratio",
            "Fraction of frames above the silence threshold",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.sample_rates = Counter(
            f"{p}_clip_sample_rate", "Clips received by source sample rate", ["sample_rate_hz"], registry=r
        )
        self.empty_audio = Counter(
            f"{p}_empty_audio",
            "Requests whose audio was missing, empty or digital silence",
            ["reason"],
            registry=r,
        )

        # Output.
        self.searches = Counter(
            f"{p}_searches", "Searches answered", ["kind", "slot", "model_version"], registry=r
        )
        self.null_transcripts = Counter(
            f"{p}_null_transcripts",
            "Voice requests with nothing recognized",
            ["slot", "model_version"],
            registry=r,
        )
        self.no_results = Counter(f"{p}_no_result_searches", "Searches with no hit", ["kind"], registry=r)
        self.confidence = Histogram(
            f"{p}_transcript_confidence",
            "Recognizer confidence of non-empty transcripts",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.words = Histogram(
            f"{p}_transcript_words", "Words per non-empty transcript", buckets=WORD_BUCKETS, registry=r
        )
        self.redo = Counter(f"{p}_redo", "Voice searches redone by voice (no click in between)", registry=r)
        self.switch_to_typing = Counter(
            f"{p}_switch_to_typing", "Voice searches followed by a typed search", registry=r
        )
        self.clicks = Counter(f"{p}_clicks", "Clicks on search results", registry=r)

        # The monitors' verdicts (set by the alarm engine).
        self.alert_firing = Gauge(
            f"{p}_alert_firing", "1 while the alarm fires, else 0", ["alert", "severity"], registry=r
        )
        self.alarm_value = Gauge(
            f"{p}_alarm_value",
            "The value an alarm rule last compared to its threshold",
            ["alert"],
            registry=r,
        )
        self.drift_score = Gauge(
            f"{p}_drift_score",
            "Latest drift statistic of a feature against the reference profile",
            ["feature", "test"],
            registry=r,
        )

    def observe(self, event: Event, signals: Iterable[str] = ()) -> None:
        """Count one recorded event; `signals` are the session signals it completed (see
        `SessionTracker`): redo, switch_to_typing, click."""
        route = event.route if self.routes is None or event.route in self.routes else "other"
        self.requests.labels(route, str(event.status_code)).inc()
        if event.latency_s is not None:
            self.request_duration.labels(route).observe(event.latency_s)
        for stage, seconds in event.timings_s.items():
            self.stage_duration.labels(stage).observe(seconds)
        if event.kind in AUDIO_KINDS:
            self._observe_input(event)
        if event.kind in SEARCH_KINDS and event.status_code < 400:
            slot, version = event.slot or "", event.model_version or ""
            self.searches.labels(event.kind, slot, version).inc()
            if event.outcome == "no_result":
                self.no_results.labels(event.kind).inc()
        if event.kind in AUDIO_KINDS and event.outcome == "null_transcript":
            self.null_transcripts.labels(event.slot or "", event.model_version or "").inc()
        if event.transcript:
            if event.confidence is not None:
                self.confidence.observe(event.confidence)
            self.words.observe(len(words(event.transcript)))
        for signal in signals:
            {"redo": self.redo, "switch_to_typing": self.switch_to_typing, "click": self.clicks}[signal].inc()

    def _observe_input(self, event: Event) -> None:
        reason = empty_audio(event)
        if reason is not None:
            self.empty_audio.labels(reason).inc()
        if event.duration_s is None:
            return
        self.clip_duration.observe(event.duration_s)
        observe: list[tuple[Histogram, float | None]] = [
            (self.clip_rms, event.rms_dbfs),
            (self.clip_clipping, event.clipping_ratio),
            (self.clip_speech, event.speech_ratio),
            (self.clip_leading_silence, _seconds(event.leading_silence_ms)),
            (self.clip_trailing_silence, _seconds(event.trailing_silence_ms)),
        ]
        for histogram, value in observe:
            if value is not None:
                histogram.observe(max(value, SILENT_DBFS))  # -inf dBFS (digital silence): the first bucket
        if event.sample_rate_hz:
            rate = event.sample_rate_hz
            self.sample_rates.labels(str(rate) if rate in COMMON_SAMPLE_RATES else "other").inc()

    def track_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time."""
        self.queue_depth.set_function(depth)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000
