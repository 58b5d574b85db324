"""Shadow comparison: the challenger's transcripts beside the champion's, on the same audio.

Each `shadow` event points at the voice search the champion answered. Agreement is the WER of
the challenger's transcript measured against the champion's (0 means they said the same words);
null-transcript rates and recognition latency are compared side by side.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

from monitoring.events import Event

RECOGNITION_STAGES = ("decode", "preprocess", "vad", "asr", "decoding")
"""The stages both models run; the champion's request latency also holds search and I/O."""


@dataclass(frozen=True)
class ShadowComparison:
    pairs: int
    disagreement_wer: float | None
    """WER of the challenger against the champion over the pairs where the champion said something."""
    champion_null_ratio: float | None
    challenger_null_ratio: float | None
    champion_recognition_p95_s: float | None
    challenger_recognition_p95_s: float | None
    challenger_failures: int
    champion_version: str | None = None
    challenger_version: str | None = None


def recognition_s(event: Event) -> float:
    return float(sum(event.timings_s.get(stage, 0.0) for stage in RECOGNITION_STAGES))


def compare_shadow(events: Sequence[Event]) -> ShadowComparison:
    """Pair each shadow event with its champion search in `events` and compare them."""
    searches = {e.request_id: e for e in events if e.kind == "voice_search"}
    shadows = [e for e in events if e.kind == "shadow" and e.target_request_id in searches]
    failures = sum(1 for e in shadows if e.outcome == "server_error")
    pairs = [(searches[str(e.target_request_id)], e) for e in shadows if e.outcome != "server_error"]
    spoken = [(c.transcript or "", s.transcript or "") for c, s in pairs if c.transcript]
    wer = None
    if spoken:
        wer = float(jiwer.process_words([c for c, _ in spoken], [s for _, s in spoken]).wer)
    return ShadowComparison(
        pairs=len(pairs),
        disagreement_wer=wer,
        champion_null_ratio=_ratio([c.outcome == "null_transcript" for c, _ in pairs]),
        challenger_null_ratio=_ratio([s.outcome == "null_transcript" for _, s in pairs]),
        champion_recognition_p95_s=_p95([recognition_s(c) for c, _ in pairs]),
        challenger_recognition_p95_s=_p95([recognition_s(s) for _, s in pairs]),
        challenger_failures=failures,
        champion_version=pairs[-1][0].model_version if pairs else None,
        challenger_version=pairs[-1][1].model_version if pairs else None,
    )


def _ratio(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _p95(values: Sequence[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None
