"""The retraining gate: a challenger against the champion on the new data and on frozen golden
sets, by rules stated up front (serving/lifecycle/retrain.py runs it). Kept apart from the
training code so that the CLI can describe it without loading torch."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monitoring.canary_gates import binomial_tail
from serving.lifecycle.registry import CHALLENGER, CHAMPION

NEW_DATA = "new_data"
"""The gate's name for the held-out part of the new labels."""


@dataclass(frozen=True)
class GateLimits:
    golden_margin: float = 0.02
    """How much worse (absolute WER) a golden set, or a slice of one, may get."""
    significance: float = 0.05
    """A golden set or slice past the margin fails only when a paired sign test over its clips
    also says the challenger is worse (one-sided p below this): on 100 clips, three clips that
    flip are 3 points of WER and can be noise. The canary gates follow the same rule."""
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
    p: float | None = None
    """The paired sign test's one-sided p of the challenger being worse, where one was run."""


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
    paired: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    """Per clip, in the same order for both models: (champion's word errors, challenger's word
    errors, reference words); under "overall" and under "FIELD=VALUE" for each slice."""


def sign_test_p(paired: Sequence[tuple[int, int, int]]) -> float:
    """The signed paired comparison of NIST's sc_stats: among the clips on which the two models
    make a different number of word errors, the exact one-sided binomial p of the challenger
    being the worse one on at least this many, were each clip a coin toss. Exact, and cautious
    when few clips differ; it counts clips, not how many words each one lost."""
    worse, better = signs(paired)
    return binomial_tail(worse, worse + better, 0.5) if worse else 1.0


def signs(paired: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """Clips on which the challenger makes more word errors, and clips on which it makes fewer."""
    return sum(1 for a, b, _ in paired if b > a), sum(1 for a, b, _ in paired if b < a)


def judge_retrain(
    scores: Sequence[PairScores], sizes: dict[str, int], limits: GateLimits, golden: Sequence[str]
) -> GateDecision:
    checks: list[Check] = []
    for pair in scores:
        a, b = pair.champion["overall"], pair.challenger["overall"]
        if pair.name == NEW_DATA:
            better = a["wer"] is not None and b["wer"] is not None and b["wer"] < a["wer"]
            checks.append(Check(f"{NEW_DATA} WER", a["wer"], b["wer"], "must be lower", better))
            continue
        checks.append(_no_worse(f"{pair.name} WER", a, b, limits, True, pair.paired.get("overall")))
        for field_name, values in pair.champion["slices"].items():
            for value, slice_a in values.items():
                slice_b = pair.challenger["slices"].get(field_name, {}).get(value)
                if slice_b is not None:
                    judged = slice_a["utterances"] >= limits.min_slice_clips
                    key = f"{field_name}={value}"
                    paired = pair.paired.get(key)
                    checks.append(
                        _no_worse(f"{pair.name} {key} WER", slice_a, slice_b, limits, judged, paired)
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


def _no_worse(
    name: str,
    a: dict[str, Any],
    b: dict[str, Any],
    limits: GateLimits,
    judged: bool,
    paired: Sequence[tuple[int, int, int]] | None = None,
) -> Check:
    if a["wer"] is None or b["wer"] is None:
        return Check(name, a["wer"], b["wer"], "no reference words", True, judged=False)
    rule = f"at most {limits.golden_margin:+.3f}"
    if b["wer"] <= a["wer"] + limits.golden_margin:
        return Check(name, a["wer"], b["wer"], rule, True, judged)
    if paired is None:  # an older report, without its clips: the margin alone rules
        return Check(name, a["wer"], b["wer"], rule, False, judged)
    worse, better = signs(paired)
    if 0.5 ** (worse + better) >= limits.significance:
        # Too few clips differ for any outcome to be significant: a test that cannot fail must
        # not excuse a regression, so the margin alone rules. Say how coarse the set is, since
        # on a small one a single word can be worth more than the whole margin.
        words = sum(w for *_, w in paired)
        rule += f"; {worse} clips worse and {better} better, too few for a sign test"
        rule += f"; one word of {words} is {100 / words:.1f} points" if words else ""
        return Check(name, a["wer"], b["wer"], rule, False, judged)
    p = sign_test_p(paired)
    rule += f", or not significantly worse (sign test p {p:.3f}, fails below {limits.significance})"
    return Check(name, a["wer"], b["wer"], rule, p >= limits.significance, judged, p)
