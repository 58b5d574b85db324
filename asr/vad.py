"""Voice activity detection: where in a clip is there speech.

Silero VAD (its weights ship inside the `silero-vad` wheel) run through ONNX Runtime, which measured
about twice as fast as its TorchScript build on 2 CPU threads here. Segments longer than
`max_segment_s` are split, so the recognizer's memory is bounded by the segment length and never
by the recording's length.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from asr.audio import SAMPLE_RATE_HZ, Samples


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
    """Silero's knobs, named with their units. Defaults follow Silero's own, except the padding."""

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 200
    """Wider than Silero's 30 ms default: CTC models need context around word edges."""
    max_segment_s: float = 10.0
    """Longest span recognized at once: bounds model memory, with the pipeline's batch budget.
    Silero cuts over-long speech at its longest inner pause, so cuts rarely fall inside words."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if self.max_segment_s <= 1.0:
            raise ValueError("max_segment_s must exceed 1 s")


class VoiceActivityDetector(Protocol):
    """Finds speech in float32 mono 16 kHz samples; returns ordered, non-overlapping segments."""

    def detect(self, samples: Samples) -> list[SpeechSegment]: ...


class SileroVAD:
    """Silero VAD through ONNX Runtime. Stateful per call, so one instance serves one thread."""

    def __init__(self, model: Any, options: VADOptions) -> None:
        self._model = model
        self.options = options

    @classmethod
    def load(cls, options: VADOptions | None = None) -> "SileroVAD":
        # Importing silero_vad calls torch.set_num_threads(1) for the whole process, which halved
        # the acoustic model's speed here; keep the caller's thread count.
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad

        torch.set_num_threads(threads)
        return cls(load_silero_vad(onnx=True), options or VADOptions())

    def detect(self, samples: Samples) -> list[SpeechSegment]:
        from silero_vad import get_speech_timestamps

        o = self.options
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(samples)),
            self._model,
            threshold=o.threshold,
            sampling_rate=SAMPLE_RATE_HZ,
            min_speech_duration_ms=o.min_speech_ms,
            min_silence_duration_ms=o.min_silence_ms,
            speech_pad_ms=o.speech_pad_ms,
            max_speech_duration_s=o.max_segment_s,
        )
        segments = [SpeechSegment(s["start"] / SAMPLE_RATE_HZ, s["end"] / SAMPLE_RATE_HZ) for s in stamps]
        return split_long_segments(segments, o.max_segment_s)


class WholeClipVAD:
    """No detection (`--no-vad`): the whole clip is speech, cut into `max_segment_s` windows."""

    def __init__(self, max_segment_s: float = VADOptions.max_segment_s) -> None:
        self.max_segment_s = max_segment_s

    def detect(self, samples: Samples) -> list[SpeechSegment]:
        if samples.size == 0:
            return []
        whole = SpeechSegment(0.0, len(samples) / SAMPLE_RATE_HZ)
        return split_long_segments([whole], self.max_segment_s)


def split_long_segments(segments: Sequence[SpeechSegment], max_segment_s: float) -> list[SpeechSegment]:
    """Cut every segment longer than `max_segment_s` into equal parts no longer than it."""
    out: list[SpeechSegment] = []
    for seg in segments:
        parts = max(1, int(np.ceil(seg.duration_s / max_segment_s - 1e-9)))
        step = seg.duration_s / parts
        out.extend(SpeechSegment(seg.start_s + i * step, seg.start_s + (i + 1) * step) for i in range(parts))
    return out
