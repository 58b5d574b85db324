"""Canary gates: the challenger's window against the champion's, with a stated statistical rule.

Each gate compares one quantity between the two slots and fails only when a one-sided test at
`ALPHA` says the challenger is worse *by more than the gate's margin* (a non-inferiority test),
so that a healthy copy of the champion passes on the small samples a canary starts with (a bare
margin rolled one back on 8 clips a slot: mean confidence 0.554 vs 0.671). The controller looks
again every few seconds on a sliding window, a hundred looks in a ramp, so each look's level is
1%, not 5%:
- ratios (server errors, null transcripts, redo, switch to typing): the difference less the
  margin over its unpooled standard error (z);
- p95 latency, above the champion's p95 times the gate's factor plus its slack: an exact binomial
  test that more than 5% of the challenger's searches are slower than that limit;
- mean confidence, below the champion's mean minus the gate's margin: Welch's t-test of the
  difference less the margin.
A gate with fewer than `min_samples` voice searches on either side is undecided (None): a canary
never advances on undecided gates. One exception stops a plainly broken model early: a ratio gate
fails before `min_samples` when the challenger has at least `early_min_samples` searches and
they are overwhelming evidence, an exact one-sided binomial tail below `early_p` under the
champion's rate (see `early_failure`). A silent model then meets a few sessions, not twenty.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from monitoring.events import Event
from monitoring.sessions import session_signals

ALPHA = 0.01
"""Every gate's one-sided test level, per look."""
Z_ALPHA = float(stats.norm.isf(ALPHA))
P95_TAIL = 0.05
"""The share of searches a p95 leaves above it."""


@dataclass(frozen=True)
class SlotWindow:
    """One slot's voice searches in a window."""

    slot: str
    voice_searches: int
    server_errors: int
    null_transcripts: int
    redo: int
    switch_to_typing: int
    latency_p95_s: float | None
    mean_confidence: float | None
    latencies_s: tuple[float, ...] = ()
    """The answered searches' latencies and confidences: what the latency and confidence tests read."""
    confidences: tuple[float, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The window without its samples (for the rollout route and the audit log)."""
        return {k: v for k, v in asdict(self).items() if k not in ("latencies_s", "confidences")}


def slot_window(events: Sequence[Event], slot: str, redo_window_s: float) -> SlotWindow:
    """The voice searches `slot` answered in `events` (with the sessions' text searches, which
    make the switch-to-typing signal)."""
    searches = [e for e in events if e.kind == "voice_search" and e.slot == slot]
    sessions = {e.session_id for e in searches}
    # A canary keeps each session on one slot, so a session's searches all belong to it.
    signals = session_signals([e for e in events if e.session_id in sessions], redo_window_s)
    answered = [e for e in searches if e.status_code < 500]
    latencies = [e.latency_s for e in answered if e.latency_s is not None]
    confidences = [e.confidence for e in answered if e.confidence is not None]
    return SlotWindow(
        slot=slot,
        voice_searches=len(searches),
        server_errors=sum(1 for e in searches if e.status_code >= 500),
        null_transcripts=sum(1 for e in answered if e.outcome == "null_transcript"),
        redo=len(signals.redo),
        switch_to_typing=len(signals.switch_to_typing),
        latency_p95_s=float(np.percentile(latencies, 95)) if latencies else None,
        mean_confidence=float(np.mean(confidences)) if confidences else None,
        latencies_s=tuple(latencies),
        confidences=tuple(confidences),
    )


@dataclass(frozen=True)
class GatePolicy:
    min_samples: int = 20
    ratio_margin: float = 0.05
    """How much worse a ratio may be (absolute) before the z-test is asked."""
    latency_factor: float = 1.5
    latency_slack_s: float = 0.05
    confidence_margin: float = 0.1
    early_min_samples: int = 5
    early_p: float = 1e-4
    """The controller looks again every few seconds on a sliding window; at 1e-4 per look, even a
    hundred looks before `min_samples` keep the chance of a false early rollback near 1%."""


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool | None
    """None: not enough samples to judge."""
    challenger: float | None
    champion: float | None
    rule: str


def judge_canary(champion: SlotWindow, challenger: SlotWindow, policy: GatePolicy) -> list[GateResult]:
    enough = min(champion.voice_searches, challenger.voice_searches) >= policy.min_samples
    ratios: tuple[tuple[str, Callable[[SlotWindow], int]], ...] = (
        ("server_errors", lambda w: w.server_errors),
        ("null_transcripts", lambda w: w.null_transcripts),
        ("redo", lambda w: w.redo),
        ("switch_to_typing", lambda w: w.switch_to_typing),
    )
    results = [_ratio_gate(name, champion, challenger, count, policy, enough) for name, count in ratios]
    return [
        *results,
        _latency_gate(champion, challenger, policy, enough),
        _confidence_gate(champion, challenger, policy, enough),
    ]


def _latency_gate(
    champion: SlotWindow, challenger: SlotWindow, policy: GatePolicy, enough: bool
) -> GateResult:
    rule = (
        f"fail when challenger p95 > champion p95 x {policy.latency_factor} + {policy.latency_slack_s} s "
        f"and more than {P95_TAIL:.0%} of its searches are slower (binomial, p < {ALPHA})"
    )
    mine, theirs = challenger.latency_p95_s, champion.latency_p95_s
    if not enough or mine is None or theirs is None:
        return GateResult("latency_p95_s", None, mine, theirs, rule)
    limit = theirs * policy.latency_factor + policy.latency_slack_s
    slower = sum(1 for latency in challenger.latencies_s if latency > limit)
    slow = mine > limit and binomial_tail(slower, len(challenger.latencies_s), P95_TAIL) < ALPHA
    return GateResult("latency_p95_s", not slow, mine, theirs, rule)


def _confidence_gate(
    champion: SlotWindow, challenger: SlotWindow, policy: GatePolicy, enough: bool
) -> GateResult:
    rule = (
        f"fail when challenger mean < champion mean - {policy.confidence_margin} "
        f"by more than chance (Welch's t, one-sided p < {ALPHA})"
    )
    mine, theirs = challenger.mean_confidence, champion.mean_confidence
    if not enough or mine is None or theirs is None:
        return GateResult("mean_confidence", None, mine, theirs, rule)
    lower = (
        theirs - mine > policy.confidence_margin
        and welch_p(champion.confidences, challenger.confidences, policy.confidence_margin) < ALPHA
    )
    return GateResult("mean_confidence", not lower, mine, theirs, rule)


def welch_p(higher: Sequence[float], lower: Sequence[float], margin: float = 0.0) -> float:
    """One-sided p of "the mean of `lower` is below that of `higher` by more than `margin`"
    (Welch's unequal-variance t)."""
    if len(higher) < 2 or len(lower) < 2:
        return 1.0
    shifted = np.asarray(lower, dtype=float) + margin
    result = stats.ttest_ind(np.asarray(higher, dtype=float), shifted, equal_var=False, alternative="greater")
    p = float(result.pvalue)
    return p if math.isfinite(p) else (0.0 if np.mean(higher) > np.mean(shifted) else 1.0)


def _ratio_gate(
    name: str,
    champion: SlotWindow,
    challenger: SlotWindow,
    count: Callable[[SlotWindow], int],
    policy: GatePolicy,
    enough: bool,
) -> GateResult:
    k1, n1 = count(challenger), challenger.voice_searches
    k0, n0 = count(champion), champion.voice_searches
    p1 = k1 / n1 if n1 else None
    p0 = k0 / n0 if n0 else None
    rule = f"fail when worse by > {policy.ratio_margin} beyond chance (z > {Z_ALPHA:.2f}, p < {ALPHA})"
    if not enough and p1 is not None and p0 is not None and early_failure(k1, n1, k0, n0, policy):
        early = f"early: binomial tail < {policy.early_p:g} on {n1} searches"
        return GateResult(name, False, p1, p0, f"{rule}; {early}")
    if not enough or p1 is None or p0 is None:
        return GateResult(name, None, p1, p0, rule)
    worse = margin_z(k1, n1, k0, n0, policy.ratio_margin) > Z_ALPHA
    return GateResult(name, not worse, p1, p0, rule)


def early_failure(k1: int, n1: int, k0: int, n0: int, policy: GatePolicy) -> bool:
    """Whether `k1` bad answers in the challenger's `n1` are too many to be chance, before the
    full sample: the champion's window must be full (its rate is the reference), smoothed by
    Laplace's rule so a champion with no bad answer yet does not make one bad answer damning."""
    if n1 < policy.early_min_samples or n0 < policy.min_samples:
        return False
    p0 = (k0 + 1) / (n0 + 2)
    return k1 / n1 - p0 > policy.ratio_margin and binomial_tail(k1, n1, p0) < policy.early_p


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def margin_z(k1: int, n1: int, k0: int, n0: int, margin: float) -> float:
    """z of "proportion 1 exceeds proportion 0 by more than `margin`", unpooled standard error."""
    p1, p0 = k1 / n1, k0 / n0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    if se == 0:
        return math.inf if p1 - p0 > margin else -math.inf
    return (p1 - p0 - margin) / se


def two_proportion_z(k1: int, n1: int, k0: int, n0: int) -> float:
    """z of "proportion 1 is larger than proportion 0", pooled standard error."""
    pooled = (k1 + k0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if se == 0:
        return 0.0 if k1 / n1 == k0 / n0 else math.inf
    return (k1 / n1 - k0 / n0) / se


@dataclass(frozen=True)
class RampPolicy:
    """The canary's ramp: the service's controller (serving/lifecycle/canary.py) follows it, and
    the Argo Rollouts export (monitoring/argo.py) writes it for Kubernetes."""

    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    hold_s: float = 120.0
    """Event time every gate must have passed at a share before the next step."""
    window_s: float = 120.0
    gates: GatePolicy = field(default_factory=GatePolicy)
