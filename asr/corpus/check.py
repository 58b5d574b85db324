"""Data checks: "is the data labelled consistently?" before anything trains on it.

Label checks (errors unless noted): characters the normalizer would drop (outside the
vocabulary), digits left unspelled (the audio may say "twenty twenty" where the normalizer
writes "two thousand twenty"), empty references (allowed only on rows labelled `_silence_`),
the same audio listed twice, and (a warning) one word spelled several ways across the set.
Audio checks: unreadable clips (errors), and the distributions of duration, leading and
trailing silence and RMS level, measured with the same statistics monitoring uses.
"""

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.audio import load_audio
from asr.errors import AudioError
from asr.manifest import read_manifest
from asr.preprocess import PreprocessOptions, clip_stats
from asr.text import normalize_text

SILENCE_LABEL = "_silence_"


@dataclass(frozen=True)
class Finding:
    """One problem: the 1-based manifest line, its audio, a kind and a human-readable detail."""

    line: int
    audio: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Distribution:
    count: int
    mean: float
    p5: float
    p50: float
    p95: float
    max: float


@dataclass(frozen=True)
class CheckReport:
    rows: int
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    spelling_variants: dict[str, list[str]] = field(default_factory=dict)
    distributions: dict[str, Distribution] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


_DIGIT = re.compile(r"\d")


def _dropped_chars(text: str) -> set[str]:
    """Letters in `text` that normalization cannot map to a-z (they would vanish from the label)."""
    out = set()
    for char in text:
        if unicodedata.category(char).startswith("L"):
            folded = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            if not folded.strip():
                out.add(char)
    return out


def check_labels(path: Path) -> CheckReport:
    """The label checks alone: fast, no audio is read. Training runs these on every manifest."""
    entries = read_manifest(path)
    errors: list[Finding] = []
    seen_audio: dict[Path, int] = {}
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for line, entry in enumerate(entries, 1):
        audio = str(entry.audio)
        dropped = _dropped_chars(entry.text)
        if dropped:
            errors.append(
                Finding(line, audio, "out-of-vocabulary", f"characters {sorted(dropped)} in {entry.text!r}")
            )
        if _DIGIT.search(entry.text):
            errors.append(
                Finding(line, audio, "unspelled-digits", f"{entry.text!r}: write numbers as spoken words")
            )
        if not normalize_text(entry.text) and entry.fields.get("label") != SILENCE_LABEL:
            errors.append(
                Finding(line, audio, "empty-reference", "empty text on a row not labelled _silence_")
            )
        if entry.audio in seen_audio:
            errors.append(Finding(line, audio, "duplicate", f"same audio as line {seen_audio[entry.audio]}"))
        seen_audio.setdefault(entry.audio, line)
        for raw in entry.text.split():
            word = normalize_text(raw)
            if word:
                spellings[re.sub(r"['\s]", "", word)][word] += 1
    variants = {key: sorted(c) for key, c in spellings.items() if len(c) > 1}
    warnings = [
        Finding(0, "", "spelling-variants", f"{key}: {', '.join(v)}") for key, v in sorted(variants.items())
    ]
    return CheckReport(len(entries), errors, warnings, variants)


def check_manifest(path: Path, audio_sample: int | None = None, seed: int = 0) -> CheckReport:
    """Label checks plus audio statistics on all clips, or on a seeded sample of `audio_sample`."""
    labels = check_labels(path)
    entries = read_manifest(path)
    indices = np.arange(len(entries))
    if audio_sample is not None and audio_sample < len(entries):
        indices = np.sort(np.random.default_rng(seed).choice(len(entries), audio_sample, replace=False))
    values: dict[str, list[float]] = defaultdict(list)
    errors = list(labels.errors)
    options = PreprocessOptions()
    for i in indices:
        entry = entries[int(i)]
        try:
            audio = load_audio(entry.audio)
        except AudioError as e:
            errors.append(
                Finding(int(i) + 1, str(entry.audio), "unreadable-audio", f"{type(e).__name__}: {e}")
            )
            continue
        stats = clip_stats(audio.samples, audio.clipping_ratio, options)
        values["duration_s"].append(stats.duration_s)
        values["leading_silence_ms"].append(stats.leading_silence_ms)
        values["trailing_silence_ms"].append(stats.trailing_silence_ms)
        values["rms_dbfs"].append(stats.rms_dbfs)
        values["clipping_ratio"].append(stats.clipping_ratio)
    distributions = {k: _distribution(v) for k, v in values.items()}
    return CheckReport(labels.rows, errors, labels.warnings, labels.spelling_variants, distributions)


def _distribution(values: list[float]) -> Distribution:
    a = np.asarray(values, dtype=np.float64)
    p5, p50, p95 = np.percentile(a, [5, 50, 95])
    return Distribution(len(a), float(a.mean()), float(p5), float(p50), float(p95), float(a.max()))
