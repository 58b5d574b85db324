"""Voice activity detection: where in a clip is there speech.

Silero VAD's network (its ONNX file ships inside the `silero-vad` wheel) run through ONNX Runtime
on numpy. Only the weights come from the package: importing it would import torch, which a device
(`voice-search client`) should not need, and its ONNX build measured about twice as fast as the
TorchScript one on 2 CPU threads here. Segments longer than `max_segment_s` are split, so the
recognizer's memory is bounded by the segment length and never by the recording's length.
"""

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from asr.audio import SAMPLE_RATE_HZ, Samples
from asr.errors import ModelLoadError

WINDOW = 512
"""Samples per speech probability (32 ms): the only window Silero's 16 kHz network takes."""
CONTEXT = 64
"""Samples of the previous window the network sees in front of each new one."""
EXIT_MARGIN = 0.15
"""Speech ends when the probability falls below `threshold - EXIT_MARGIN` (Silero's hysteresis)."""
MIN_CUT_PAUSE_WINDOWS = 4
"""A pause must last this many quiet windows (128 ms) to cut over-long speech at it; Silero's own
rule asks for more than 98 ms. Shorter dips are often inside words."""


@dataclass(frozen=True)
class SpeechSegment:
    """A span of the clip, in seconds from the clip's start."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def slice(self, samples: Samples) -> Samples:
        """The samples of this span from a 16 kHz clip."""
        return samples[round(self.start_s * SAMPLE_RATE_HZ) : round(self.end_s * SAMPLE_RATE_HZ)]


@dataclass(frozen=True)
class VADOptions:
    """Silero's knobs, named with their units. Defaults follow Silero's own, except the padding and
    the shortest speech."""

    threshold: float = 0.5
    min_speech_ms: int = 100
    """Silero's 250 ms dropped a third of FSDD's spoken digits ("six" often lasts 150-250 ms) with
    confident speech in them: a single-word query came back empty. At 100 ms, on dev clips left out
    of the reported sample, digits went from 46.5% to 81.0% right with no false speech on Speech
    Commands' `_silence_` (docs/benchmarks.md, "Shortest speech")."""
    min_silence_ms: int = 100
    speech_pad_ms: int = 200
    """Wider than Silero's 30 ms default: CTC models need context around word edges."""
    max_segment_s: float = 10.0
    """Longest span recognized at once: bounds model memory, with the pipeline's batch budget.
    Over-long speech is cut at its longest inner pause, so cuts rarely fall inside words."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if self.max_segment_s <= 1.0:
            raise ValueError("max_segment_s must exceed 1 s")


class VoiceActivityDetector(Protocol):
    """Finds speech in float32 mono 16 kHz samples; returns ordered, non-overlapping segments."""

    def detect(self, samples: Samples) -> list[SpeechSegment]: ...

    def detect_many(self, clips: Sequence[Samples]) -> list[list[SpeechSegment]]:
        """`detect` for several clips at once (the server's micro-batches)."""
        ...


class SileroVAD:
    """Silero VAD on an ONNX Runtime session. The network's recurrent state lives in each call, and
    ONNX Runtime sessions may run concurrently, so one instance can serve several threads."""

    def __init__(self, session: Any, options: VADOptions) -> None:
        self._session = session
        self.options = options

    @classmethod
    def load(cls, options: VADOptions | None = None) -> "SileroVAD":
        import onnxruntime as ort

        settings = ort.SessionOptions()
        # One thread: the network is tiny and runs window by window, so more threads only add overhead.
        settings.intra_op_num_threads = settings.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(silero_weights()), settings, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(f"cannot load the Silero VAD network: {e}") from e
        return cls(session, options or VADOptions())

    def probabilities(self, samples: Samples) -> np.ndarray:
        """Speech probability of each 32 ms window; the last window is zero-padded."""
        return self.probabilities_many([samples])[0]

    def probabilities_many(self, clips: Sequence[Samples]) -> list[np.ndarray]:
        """`probabilities` of several clips, run side by side as one batch: the network is called
        once per window position instead of once per window of each clip, which measured about
        half the time per clip at 8 clips (each call's fixed cost is shared). A clip shorter than
        the longest is zero-padded; its windows past its end are computed and dropped."""
        if not clips:
            return []
        counts = [-(-len(c) // WINDOW) for c in clips]
        padded = np.zeros((len(clips), max(counts) * WINDOW + CONTEXT), np.float32)
        for row, clip in zip(padded, clips, strict=True):
            row[CONTEXT : CONTEXT + len(clip)] = clip
        state = np.zeros((2, len(clips), 128), np.float32)
        rate = np.array(SAMPLE_RATE_HZ, np.int64)
        probs = np.empty((len(clips), max(counts)), np.float32)
        for i in range(max(counts)):
            window = padded[:, i * WINDOW : (i + 1) * WINDOW + CONTEXT]
            out, state = self._session.run(None, {"input": window, "state": state, "sr": rate})
            probs[:, i] = out[:, 0]
        return [probs[k, :count] for k, count in enumerate(counts)]

    def detect(self, samples: Samples) -> list[SpeechSegment]:
        return self.detect_many([samples])[0]

    def detect_many(self, clips: Sequence[Samples]) -> list[list[SpeechSegment]]:
        return [
            segments_from_probabilities(probs, len(clip), self.options)
            for probs, clip in zip(self.probabilities_many(clips), clips, strict=True)
        ]


def silero_weights() -> Path:
    """The ONNX file inside the installed `silero-vad` wheel, found without importing the package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the silero-vad package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


def segments_from_probabilities(
    probs: np.ndarray, n_samples: int, options: VADOptions
) -> list[SpeechSegment]:
    """Speech spans from per-window probabilities, with Silero's rules: speech starts at a window
    at or above `threshold` and ends where the probability stays below the exit threshold for
    `min_silence_ms`; spans of at most `min_speech_ms` are dropped; each span is padded by
    `speech_pad_ms`, never past the middle of the gap to its neighbour. Spans too long to fit
    `max_segment_s` once padded are cut at their longest pause (our rule: Silero cuts at the
    longest pause seen when the limit is reached, so long speech may be cut elsewhere than by
    the silero package; shorter speech gets the same spans)."""
    o = options
    pad = o.speech_pad_ms * SAMPLE_RATE_HZ // 1000
    spans = [
        (start, end)
        for start, end in _hysteresis(probs, n_samples, o)
        if end - start > o.min_speech_ms * SAMPLE_RATE_HZ / 1000
    ]
    # The same limit as Silero's: the padded span, plus the window the limit is noticed in, fits.
    longest = o.max_segment_s * SAMPLE_RATE_HZ - WINDOW - 2 * pad
    quiet = probs < _exit_threshold(o)
    shortest = o.min_speech_ms * SAMPLE_RATE_HZ / 1000
    spans = [part for span in spans for part in _cut_at_pauses(span, quiet, longest, shortest)]
    segments = []
    for k, (start, end) in enumerate(spans):
        before = (spans[k - 1][1] + start) / 2 if k else 0
        after = (end + spans[k + 1][0]) / 2 if k + 1 < len(spans) else n_samples
        segments.append(
            SpeechSegment(max(start - pad, before) / SAMPLE_RATE_HZ, min(end + pad, after) / SAMPLE_RATE_HZ)
        )
    return split_long_segments(segments, o.max_segment_s)


def _hysteresis(probs: np.ndarray, n_samples: int, o: VADOptions) -> list[tuple[int, int]]:
    """(start, end) sample spans of speech, before the length rules and padding."""
    exit_below = _exit_threshold(o)
    min_silence = o.min_silence_ms * SAMPLE_RATE_HZ / 1000
    spans: list[tuple[int, int]] = []
    start = quiet_from = None
    for i, p in enumerate(probs.tolist()):
        at = i * WINDOW
        if start is None:
            if p >= o.threshold:
                start = at
            continue
        if p >= o.threshold:
            quiet_from = None
        elif p < exit_below:
            quiet_from = at if quiet_from is None else quiet_from
            if at - quiet_from >= min_silence:
                spans.append((start, quiet_from))
                start = quiet_from = None
    if start is not None:
        spans.append((start, n_samples))
    return spans


def _exit_threshold(o: VADOptions) -> float:
    return max(o.threshold - EXIT_MARGIN, 0.01)


def _cut_at_pauses(
    span: tuple[int, int], quiet: np.ndarray, longest: float, shortest: float
) -> list[tuple[int, int]]:
    """Split an over-long span at its longest inner pause of at least `MIN_CUT_PAUSE_WINDOWS`
    that leaves both sides longer than `shortest`, recursively; a span with no such pause is
    left for `split_long_segments` to cut evenly."""
    start, end = span
    if end - start <= longest:
        return [span]
    pauses = [
        (to - at, at, to)
        for at, to in _quiet_runs(quiet, start // WINDOW + 1, min(end // WINDOW, len(quiet)) - 1)
        if to - at >= MIN_CUT_PAUSE_WINDOWS
        and at * WINDOW - start > shortest
        and end - to * WINDOW > shortest
    ]
    if not pauses:
        return [span]
    _, at, to = max(pauses)
    return _cut_at_pauses((start, at * WINDOW), quiet, longest, shortest) + _cut_at_pauses(
        (to * WINDOW, end), quiet, longest, shortest
    )


def _quiet_runs(quiet: np.ndarray, first: int, last: int) -> list[tuple[int, int]]:
    """(first, past-the-end) window indices of each run of quiet windows in [first, last)."""
    runs: list[tuple[int, int]] = []
    at = None
    for i in range(first, last):
        if quiet[i] and at is None:
            at = i
        elif not quiet[i] and at is not None:
            runs.append((at, i))
            at = None
    if at is not None:
        runs.append((at, last))
    return runs


class WholeClipVAD:
    """No detection (`--no-vad`): the whole clip is speech, cut into `max_segment_s` windows."""

    def __init__(self, max_segment_s: float = VADOptions.max_segment_s) -> None:
        self.max_segment_s = max_segment_s

    def detect(self, samples: Samples) -> list[SpeechSegment]:
        if samples.size == 0:
            return []
        whole = SpeechSegment(0.0, len(samples) / SAMPLE_RATE_HZ)
        return split_long_segments([whole], self.max_segment_s)

    def detect_many(self, clips: Sequence[Samples]) -> list[list[SpeechSegment]]:
        return [self.detect(clip) for clip in clips]


def split_long_segments(segments: Sequence[SpeechSegment], max_segment_s: float) -> list[SpeechSegment]:
    """Cut every segment longer than `max_segment_s` into equal parts no longer than it."""
    out: list[SpeechSegment] = []
    for seg in segments:
        parts = max(1, int(np.ceil(seg.duration_s / max_segment_s - 1e-9)))
        step = seg.duration_s / parts
        out.extend(SpeechSegment(seg.start_s + i * step, seg.start_s + (i + 1) * step) for i in range(parts))
    return out
