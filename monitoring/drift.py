"""Drift against a reference profile: registered statistical tests and the profile they compare with.

A `ReferenceProfile` is what "normal" looks like: a sample of each feature's values measured on
the training data (input statistics, and the model's own outputs on it), plus the training
vocabulary. `voice-search monitor baseline` builds one; the service compares each window of
traffic with it.

Tests are registered by name (`STAT_TESTS`), each knowing what it applies to (numeric or
categorical features), its default threshold and its direction, so a rule can say
`test: psi, threshold: 0.3` and the result carries everything needed to explain itself.
"""

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import stats

from monitoring.features import CATEGORICAL_FEATURES, feature_columns

Kind = Literal["numeric", "categorical"]
Direction = Literal[">", "<"]

PROFILE_SAMPLE = 2000
"""Values kept per feature in a profile: enough for stable quantiles, small enough to ship."""

POINT_MASS = 0.05
"""Share of the reference at one value above which psi gives that value a bin of its own."""


@dataclass(frozen=True)
class StatTest:
    """A drift test: `fn(reference, current)` gives a statistic; drift when it passes `threshold`
    in `direction` ("<" for p-values, ">" for distances)."""

    name: str
    kind: Kind
    direction: Direction
    threshold: float
    fn: Callable[[Sequence[float | str], Sequence[float | str]], float]
    description: str


@dataclass(frozen=True)
class DriftResult:
    feature: str
    test: str
    statistic: float
    threshold: float
    direction: Direction
    drifted: bool
    reference_n: int
    current_n: int
    min_samples: int = 1
    """Values a window needs before it is judged: below it `drifted` is False whatever the
    statistic says (the alarm rule watching the feature says "insufficient data" too)."""

    @property
    def judged(self) -> bool:
        return self.current_n >= self.min_samples and math.isfinite(self.statistic)


def _numeric(values: Sequence[float | str]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def psi(reference: Sequence[float | str], current: Sequence[float | str]) -> float:
    """Population stability index over the reference's deciles (categories for strings).

    Rules of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
    """
    if reference and isinstance(reference[0], str):
        return _psi_counts(*_category_counts(reference, current))
    ref, cur = _numeric(reference), _numeric(current)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)[1:-1]))
    # A point mass (say, 0.0 clipping in most clips) gets a bin of its own: with intervals alone
    # it would share one with its neighbours, and a shift off it would go unseen.
    masses = np.array([e for e in edges if np.mean(ref == e) >= POINT_MASS], dtype=np.float64)
    return _psi_counts(_bin_counts(edges, masses, ref), _bin_counts(edges, masses, cur))


def _bin_counts(edges: np.ndarray, masses: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts over the intervals between `edges`, then one bin per value in `masses` (taken out of
    the intervals)."""
    index = np.searchsorted(edges, values, side="right")
    at = np.minimum(np.searchsorted(masses, values), max(len(masses) - 1, 0))
    on_mass = masses[at] == values if len(masses) else np.zeros(len(values), dtype=bool)
    index[on_mass] = len(edges) + 1 + at[on_mass]
    return np.bincount(index, minlength=len(edges) + 1 + len(masses))


def _psi_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    # A small floor keeps an empty bin from making the index infinite.
    ref = np.maximum(ref_counts / max(ref_counts.sum(), 1), 1e-4)
    cur = np.maximum(cur_counts / max(cur_counts.sum(), 1), 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _category_counts(
    reference: Sequence[float | str], current: Sequence[float | str]
) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = Counter(map(str, reference)), Counter(map(str, current))
    categories = sorted(set(ref) | set(cur))
    return np.array([ref[c] for c in categories], float), np.array([cur[c] for c in categories], float)


def ks(reference: Sequence[float | str], current: Sequence[float | str]) -> float:
    """Kolmogorov-Smirnov distance D (the largest gap between the two CDFs, in [0, 1])."""
    return float(stats.ks_2samp(_numeric(reference), _numeric(current)).statistic)


def wasserstein(reference: Sequence[float | str], current: Sequence[float | str]) -> float:
    """Earth mover's distance in units of the reference's standard deviation."""
    ref, cur = _numeric(reference), _numeric(current)
    scale = float(np.std(ref)) or 1.0
    return float(stats.wasserstein_distance(ref, cur)) / scale


def chi_square(reference: Sequence[float | str], current: Sequence[float | str]) -> float:
    """p-value of a chi-square test of the current category counts against the reference's
    proportions (add-one smoothed, so a category never seen in the reference is possible)."""
    ref, cur = _category_counts(reference, current)
    expected = (ref + 1) / (ref + 1).sum() * cur.sum()
    if cur.sum() == 0 or len(cur) < 2:
        return 1.0
    return float(stats.chisquare(cur, expected).pvalue)


STAT_TESTS: dict[str, StatTest] = {
    t.name: t
    for t in (
        StatTest("psi", "numeric", ">", 0.25, psi, "population stability index over reference deciles"),
        StatTest("ks", "numeric", ">", 0.2, ks, "Kolmogorov-Smirnov distance D"),
        StatTest("wasserstein", "numeric", ">", 0.5, wasserstein, "Wasserstein distance / reference std"),
        StatTest("chi_square", "categorical", "<", 0.001, chi_square, "chi-square p-value"),
    )
}
"""Drift tests by name. psi also accepts categorical features."""


def detect(
    feature: str,
    reference: Sequence[float | str],
    current: Sequence[float | str],
    test: str,
    threshold: float | None = None,
    min_samples: int = 1,
) -> DriftResult:
    """Compare `current` values of `feature` with the reference's using the named test; a window
    of fewer than `min_samples` values gets its statistic but is not called drifted."""
    try:
        spec = STAT_TESTS[test]
    except KeyError:
        raise KeyError(f"unknown drift test {test!r}; registered: {', '.join(STAT_TESTS)}") from None
    categorical = feature in CATEGORICAL_FEATURES
    if categorical and test not in ("psi", "chi_square"):
        raise ValueError(f"{test} compares numbers; {feature} is categorical (use psi or chi_square)")
    if not categorical and spec.kind == "categorical":
        raise ValueError(f"{test} compares categories; {feature} is numeric")
    limit = spec.threshold if threshold is None else threshold
    statistic = spec.fn(reference, current) if reference and current else math.nan
    beyond = bool(statistic > limit if spec.direction == ">" else statistic < limit)
    drifted = beyond and len(current) >= min_samples
    return DriftResult(
        feature, test, statistic, limit, spec.direction, drifted, len(reference), len(current), min_samples
    )


@dataclass(frozen=True)
class ReferenceProfile:
    """Feature samples and vocabulary of the data the model was trained for."""

    features: dict[str, list[float | str]]
    vocabulary: frozenset[str] = frozenset()
    source: str = ""
    clips: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    """Window metrics measured on the reference itself (for example its null-transcript ratio)."""
    model_version: str = ""
    """The model whose outputs (confidence, words) the profile holds: output drift against a
    profile of another model measures the model change, not the traffic."""

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[dict[str, float | str]],
        vocabulary: frozenset[str],
        source: str,
        metrics: dict[str, float] | None = None,
        seed: int = 0,
        model_version: str = "",
    ) -> "ReferenceProfile":
        """A profile from per-clip feature dicts (see `features.clip_features`), sampled down to
        `PROFILE_SAMPLE` values per feature."""
        columns = feature_columns(rows)
        rng = np.random.default_rng(seed)
        sampled: dict[str, list[float | str]] = {}
        for name, values in columns.items():
            if len(values) > PROFILE_SAMPLE:
                values = [values[i] for i in sorted(rng.choice(len(values), PROFILE_SAMPLE, replace=False))]
            sampled[name] = values
        return cls(sampled, vocabulary, source, len(rows), dict(metrics or {}), model_version)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "source": self.source,
            "model_version": self.model_version,
            "clips": self.clips,
            "metrics": self.metrics,
            "vocabulary": sorted(self.vocabulary),
            "features": {
                k: [round(v, 4) if isinstance(v, float) else v for v in vs] for k, vs in self.features.items()
            },
        }
        path.write_text(json.dumps(body, separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ReferenceProfile":
        try:
            body = json.loads(path.read_text())
            return cls(
                features={k: list(v) for k, v in body["features"].items()},
                vocabulary=frozenset(body.get("vocabulary", ())),
                source=str(body.get("source", "")),
                clips=int(body.get("clips", 0)),
                metrics={k: float(v) for k, v in body.get("metrics", {}).items()},
                model_version=str(body.get("model_version", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read the reference profile {path}: {e}") from e


def drift_table(
    profile: ReferenceProfile,
    current: dict[str, list[float | str]],
    tests: dict[str, str] | None = None,
    thresholds: dict[str, float] | None = None,
    min_samples: dict[str, int] | None = None,
) -> list[DriftResult]:
    """Every feature against the profile, each with its default test (psi, chi-square for
    categories), threshold and sample minimum unless `tests`, `thresholds` and `min_samples`
    name others."""
    table = []
    for feature, reference in profile.features.items():
        default = "chi_square" if feature in CATEGORICAL_FEATURES else "psi"
        test = (tests or {}).get(feature, default)
        threshold = (thresholds or {}).get(feature)
        least = (min_samples or {}).get(feature, 1)
        table.append(detect(feature, reference, current.get(feature, []), test, threshold, least))
    return table
