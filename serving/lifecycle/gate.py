"""The retraining gate: a challenger against the champion on the new data and on frozen golden
sets, by rules stated up front (serving/lifecycle/retrain.py runs it). Kept apart from the
training code so that the CLI can describe it without loading torch."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.lifecycle.registry import CHALLENGER, CHAMPION

NEW_DATA = "new_data"
"""The gate's name for the held-out part of the new labels."""


@dataclass(frozen=True)
class GateLimits:
    golden_margin: float = 0.02
    """How much worse (absolute WER) a golden set, or a slice of one, may get."""
    min_slice_clips: int = 20
    """Slices with fewer clips are reported but not judged: their WER is mostly noise."""
    slice_fields: tuple[str, ...] = ("set", "speaker", "voice")
    max_rtf_ratio: float = 1.3
    """Challenger's real-time factor over the champion's, measured side by side."""
    max_size_ratio: float = 1.1
    """Challenger's weights over the champion's (bytes on disk)."""


@dataclass(frozen=True)
class Check:
    """One comparison the gate made."""

    name: str
    champion: float | None
    challenger: float | None
    limit: str
    passed: bool
    judged: bool = True
    """False when too few clips to judge: reported, not counted."""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check]
    golden: list[str]
    """The golden sets it used, as `name@version`."""

    @property
    def reasons(self) -> list[str]:
        return [
            f"{c.name}: challenger {_fmt(c.challenger)} vs champion {_fmt(c.champion)} ({c.limit})"
            for c in self.checks
            if c.judged and not c.passed
        ]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class PairScores:
    """Champion and challenger on one evaluation set: overall and per slice, plus speed."""

    name: str
    champion: dict[str, Any]
    challenger: dict[str, Any]


def judge(
    scores: Sequence[PairScores], sizes: dict[str, int], limits: GateLimits, golden: Sequence[str]
) -> GateDecision:
    checks: list[Check] = []
    for pair in scores:
        a, b = pair.champion["overall"], pair.challenger["overall"]
        if pair.name == NEW_DATA:
            better = a["wer"] is not None and b["wer"] is not None and b["wer"] < a["wer"]
            checks.append(Check(f"{NEW_DATA} WER", a["wer"], b["wer"], "must be lower", better))
            continue
        checks.append(_no_worse(f"{pair.name} WER", a, b, limits, judged=True))
        for field_name, values in pair.champion["slices"].items():
            for value, slice_a in values.items():
                slice_b = pair.challenger["slices"].get(field_name, {}).get(value)
                if slice_b is not None:
                    judged = slice_a["utterances"] >= limits.min_slice_clips
                    checks.append(
                        _no_worse(f"{pair.name} {field_name}={value} WER", slice_a, slice_b, limits, judged)
                    )
    rtf = [(p.champion["real_time_factor"], p.challenger["real_time_factor"]) for p in scores]
    speed_a = sum(a for a, _ in rtf if a) or None
    speed_b = sum(b for _, b in rtf if b) or None
    ratio_ok = speed_a is not None and speed_b is not None and speed_b <= limits.max_rtf_ratio * speed_a
    checks.append(Check("real-time factor", speed_a, speed_b, f"at most {limits.max_rtf_ratio}x", ratio_ok))
    size_ok = sizes[CHALLENGER] <= limits.max_size_ratio * sizes[CHAMPION]
    checks.append(
        Check(
            "size (bytes)", sizes[CHAMPION], sizes[CHALLENGER], f"at most {limits.max_size_ratio}x", size_ok
        )
    )
    passed = all(c.passed for c in checks if c.judged)
    return GateDecision(passed, checks, list(golden))


def _no_worse(name: str, a: dict[str, Any], b: dict[str, Any], limits: GateLimits, judged: bool) -> Check:
    if a["wer"] is None or b["wer"] is None:
        return Check(name, a["wer"], b["wer"], "no reference words", True, judged=False)
    ok = b["wer"] <= a["wer"] + limits.golden_margin
    return Check(name, a["wer"], b["wer"], f"at most {limits.golden_margin:+.3f}", ok, judged)
