"""Evaluation: WER/CER, latency and real-time factor, overall and per slice of any manifest field.

A manifest's fields (`asr.manifest`) become slices (`speaker`, `voice`, `snr_db`, ...). References
and hypotheses both pass through the one normalizer, so punctuation and casing never count as
errors.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jiwer
import numpy as np

from asr.errors import ASRError
from asr.manifest import ManifestEntry
from asr.text import normalize_text


@dataclass(frozen=True)
class Outcome:
    """What happened to one entry: the hypothesis and timing, or the error that stopped it."""

    entry: ManifestEntry
    hypothesis: str
    latency_s: float
    duration_s: float
    error: str | None = None


@dataclass(frozen=True)
class Scores:
    """Error rates over a set of utterances (0.0 = perfect). Rates are None when undefined.

    `exact_match` is the fraction of utterances recognized word for word: the accuracy of
    isolated-word sets (digits, commands). `false_speech` is the fraction of empty references
    (silence clips) for which something was recognized.
    """

    utterances: int
    reference_words: int
    wer: float | None
    cer: float | None
    exact_match: float | None
    false_speech: float | None


@dataclass(frozen=True)
class EvaluationReport:
    """Scores overall and per slice, with speed: RTF = processing time / audio time."""

    overall: Scores
    slices: dict[str, dict[str, Scores]]
    real_time_factor: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    audio_s: float
    failures: list[tuple[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": vars(self.overall),
            "slices": {k: {v: vars(s) for v, s in by.items()} for k, by in self.slices.items()},
            "real_time_factor": self.real_time_factor,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "audio_s": self.audio_s,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }


class Transcribed(Protocol):
    """What evaluation needs from any recognizer's result (`asr.pipeline.Transcript` is one)."""

    @property
    def text(self) -> str: ...

    @property
    def duration_s(self) -> float: ...


@dataclass(frozen=True)
class PlainTranscript:
    """A result from a recognizer that is not ours (a peer being compared)."""

    text: str
    duration_s: float


def run_entry(transcribe: Callable[[Path], Transcribed], entry: ManifestEntry) -> Outcome:
    """Transcribe one entry, timing it.

    An `ASRError` (a broken file) becomes a failed outcome so one bad clip never stops a run.
    """
    started = time.perf_counter()
    try:
        result = transcribe(entry.audio)
    except ASRError as e:
        return Outcome(entry, "", time.perf_counter() - started, 0.0, error=f"{type(e).__name__}: {e}")
    return Outcome(entry, result.text, time.perf_counter() - started, result.duration_s)


def score(references: Sequence[str], hypotheses: Sequence[str]) -> Scores:
    """WER, CER, exact-match and false-speech rates of normalized text pairs."""
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    spoken = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    silent = [h for r, h in zip(refs, hyps, strict=True) if not r]
    # jiwer needs non-empty references; anything said over an empty one is all insertions.
    inserted_words = sum(len(h.split()) for h in silent)
    inserted_chars = sum(len(h) for h in silent)
    ref_words = sum(len(r.split()) for r, _ in spoken)
    ref_chars = sum(len(r) for r, _ in spoken)
    word_errors = char_errors = 0
    if spoken:
        w = jiwer.process_words([r for r, _ in spoken], [h for _, h in spoken])
        c = jiwer.process_characters([r for r, _ in spoken], [h for _, h in spoken])
        word_errors = w.substitutions + w.deletions + w.insertions
        char_errors = c.substitutions + c.deletions + c.insertions
    return Scores(
        utterances=len(refs),
        reference_words=ref_words,
        wer=(word_errors + inserted_words) / ref_words if ref_words else None,
        cer=(char_errors + inserted_chars) / ref_chars if ref_chars else None,
        exact_match=sum(r == h for r, h in spoken) / len(spoken) if spoken else None,
        false_speech=sum(bool(h) for h in silent) / len(silent) if silent else None,
    )


def summarize(outcomes: Iterable[Outcome], by: Sequence[str] = ()) -> EvaluationReport:
    """Aggregate outcomes; failed entries are listed and left out of the scores."""
    done = list(outcomes)
    ok = [o for o in done if o.error is None]
    slices: dict[str, dict[str, Scores]] = {}
    for key in by:
        groups: dict[str, list[Outcome]] = defaultdict(list)
        for o in ok:
            groups[o.entry.fields.get(key, "(none)")].append(o)
        slices[key] = {value: _score_outcomes(group) for value, group in sorted(groups.items())}
    latencies = np.array([o.latency_s for o in ok])
    audio_s = float(sum(o.duration_s for o in ok))
    return EvaluationReport(
        overall=_score_outcomes(ok),
        slices=slices,
        real_time_factor=float(latencies.sum()) / audio_s if audio_s else None,
        latency_p50_s=float(np.percentile(latencies, 50)) if ok else None,
        latency_p95_s=float(np.percentile(latencies, 95)) if ok else None,
        audio_s=audio_s,
        failures=[(str(o.entry.audio), o.error or "") for o in done if o.error is not None],
    )


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """One utterance's word errors and reference words, counted as `score` counts them (words
    said over an empty reference are all insertions), so that they add up to its WER."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    w = jiwer.process_words(ref, hyp)
    return w.substitutions + w.deletions + w.insertions, len(ref.split())


def paired_errors(a: Outcome, b: Outcome) -> tuple[int, int, int] | None:
    """One entry through two systems: each one's word errors and the reference words, the unit of
    a paired comparison; None when either failed (`summarize` leaves failures out too)."""
    if a.error is not None or b.error is not None:
        return None
    errors_a, words = word_errors(a.entry.text, a.hypothesis)
    return errors_a, word_errors(b.entry.text, b.hypothesis)[0], words


def _score_outcomes(outcomes: Sequence[Outcome]) -> Scores:
    return score([o.entry.text for o in outcomes], [o.hypothesis for o in outcomes])
