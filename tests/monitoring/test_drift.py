"""Drift tests against a reference profile: each registered test on seeded samples, and the profile file."""

import math
from pathlib import Path

import numpy as np
import pytest

from monitoring.drift import (
    PROFILE_SAMPLE,
    STAT_TESTS,
    ReferenceProfile,
    detect,
    drift_table,
    psi,
)
from monitoring.features import CATEGORICAL_FEATURES, FEATURES

NUMERIC_TESTS = [name for name, spec in STAT_TESTS.items() if spec.kind == "numeric"]


def sample(seed: int, n: int, loc: float, scale: float) -> list[float | str]:
    return [float(v) for v in np.random.default_rng(seed).normal(loc, scale, n)]


def leading_silence(seed: int, n: int, extra_ms: float = 0.0) -> list[float | str]:
    """Leading silence in ms: mostly short, a few long ones, plus `extra_ms` added to every clip."""
    values = np.random.default_rng(seed).gamma(2.0, 80.0, n) + extra_ms
    return [float(v) for v in values]


def test_the_registry_holds_the_four_tests_with_their_directions() -> None:
    assert set(STAT_TESTS) == {"psi", "ks", "wasserstein", "chi_square"}
    assert STAT_TESTS["chi_square"].direction == "<"  # a p-value: drift when small
    assert all(STAT_TESTS[t].direction == ">" for t in NUMERIC_TESTS)


@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_samples_of_one_distribution_stay_under_the_default_threshold(test: str) -> None:
    reference = sample(0, 2000, -25.0, 5.0)
    current = sample(1, 500, -25.0, 5.0)
    result = detect("rms_dbfs", reference, current, test)
    assert not result.drifted, result
    assert result.threshold == STAT_TESTS[test].threshold
    assert (result.reference_n, result.current_n) == (2000, 500)


@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_a_ten_db_louder_input_exceeds_the_default_threshold(test: str) -> None:
    reference = sample(0, 2000, -25.0, 5.0)
    current = sample(1, 500, -15.0, 5.0)
    result = detect("rms_dbfs", reference, current, test)
    assert result.drifted, result
    assert result.statistic > result.threshold


@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_added_leading_silence_exceeds_the_default_threshold(test: str) -> None:
    reference = leading_silence(0, 2000)
    assert not detect("leading_silence_ms", reference, leading_silence(1, 400), test).drifted
    assert detect("leading_silence_ms", reference, leading_silence(1, 400, extra_ms=500.0), test).drifted


def rates(*counts: tuple[str, int]) -> list[float | str]:
    """Sample rates as the profile keeps them (strings), `count` of each."""
    return [rate for rate, count in counts for _ in range(count)]


def test_chi_square_flags_a_new_sample_rate() -> None:
    reference = rates(("16000", 2000))
    same = rates(("16000", 200))
    telephony = rates(("16000", 180), ("8000", 20))
    assert not detect("sample_rate_hz", reference, same, "chi_square").drifted
    result = detect("sample_rate_hz", reference, telephony, "chi_square")
    assert result.drifted and result.statistic < 0.001
    # psi accepts categories too.
    assert detect("sample_rate_hz", reference, telephony, "psi").drifted
    assert not detect("sample_rate_hz", reference, same, "psi").drifted


def test_chi_square_keeps_the_mix_of_known_categories() -> None:
    reference = rates(("16000", 1500), ("44100", 500))
    assert not detect("sample_rate_hz", reference, rates(("16000", 150), ("44100", 50)), "chi_square").drifted
    assert detect("sample_rate_hz", reference, rates(("16000", 50), ("44100", 150)), "chi_square").drifted


def test_psi_is_finite_with_empty_bins_and_point_masses() -> None:
    rng = np.random.default_rng(0)
    # Clipping: most clips never reach full scale, so the deciles collapse onto 0.0.
    reference = [0.0] * 1900 + [float(v) for v in rng.uniform(0.0001, 0.001, 100)]
    unchanged = [0.0] * 190 + [float(v) for v in rng.uniform(0.0001, 0.001, 10)]
    all_zero = [0.0] * 200
    far_above = [float(v) for v in rng.uniform(0.5, 0.9, 200)]
    for current in (unchanged, all_zero, far_above):
        assert math.isfinite(psi(reference, current))
    assert psi(reference, unchanged) < STAT_TESTS["psi"].threshold
    assert psi(reference, reference) == 0.0
    # Every current value beyond the reference's range: the other bins are empty, the index finite.
    assert psi(reference, far_above) > STAT_TESTS["psi"].threshold


def test_psi_sees_clips_leave_a_point_mass_at_zero() -> None:
    """Half the clips now clip: a shift off the point mass must not hide in its neighbours' bin."""
    rng = np.random.default_rng(0)
    reference = [0.0] * 1880 + [float(v) for v in rng.uniform(0.0001, 0.01, 120)]
    clipping = [0.0] * 100 + [float(v) for v in rng.uniform(0.001, 0.05, 100)]
    result = detect("clipping_ratio", reference, clipping, "psi")
    assert result.drifted, result


def test_psi_sees_a_shift_onto_a_point_mass_at_the_top() -> None:
    """Speech ratio 1.0 (speech from start to end) is a point mass at the maximum."""
    rng = np.random.default_rng(0)
    reference = [1.0] * 400 + [float(v) for v in rng.uniform(0.3, 0.99, 1600)]
    assert not detect("speech_ratio", reference, [1.0] * 20 + sample_uniform(1, 80), "psi").drifted
    assert detect("speech_ratio", reference, [1.0] * 90 + sample_uniform(1, 10), "psi").drifted


def sample_uniform(seed: int, n: int) -> list[float | str]:
    return [float(v) for v in np.random.default_rng(seed).uniform(0.3, 0.99, n)]


@pytest.mark.parametrize("test", ["ks", "wasserstein"])
def test_a_numeric_test_on_a_categorical_feature_is_a_value_error(test: str) -> None:
    with pytest.raises(ValueError, match="categorical"):
        detect("sample_rate_hz", ["16000"], ["8000"], test)


def test_a_categorical_test_on_a_numeric_feature_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="numeric"):
        detect("rms_dbfs", [1.0, 2.0], [1.0, 2.0], "chi_square")


def test_an_unknown_test_is_a_key_error_naming_it() -> None:
    with pytest.raises(KeyError, match="anderson"):
        detect("rms_dbfs", [1.0], [1.0], "anderson")


def test_an_empty_side_gives_no_statistic_and_no_drift() -> None:
    result = detect("rms_dbfs", [1.0, 2.0], [], "psi")
    assert math.isnan(result.statistic) and not result.drifted
    assert result.current_n == 0


def test_an_explicit_threshold_replaces_the_default() -> None:
    reference = sample(0, 2000, -25.0, 5.0)
    current = sample(1, 500, -24.0, 5.0)
    lenient = detect("rms_dbfs", reference, current, "ks")
    strict = detect("rms_dbfs", reference, current, "ks", threshold=0.01)
    assert strict.statistic == lenient.statistic
    assert strict.threshold == 0.01 and strict.drifted and not lenient.drifted


def rows(n: int, seed: int = 0) -> list[dict[str, float | str]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "rms_dbfs": float(rng.normal(-25.0, 5.0)),
            "clipping_ratio": 0.0,
            "transcript_words": float(rng.integers(0, 5)),
            "sample_rate_hz": "16000",
        }
        for _ in range(n)
    ]


def test_from_rows_subsamples_each_feature_to_the_profile_sample() -> None:
    many = rows(PROFILE_SAMPLE + 500)
    profile = ReferenceProfile.from_rows(many, frozenset({"paris"}), "train.jsonl")
    assert profile.clips == PROFILE_SAMPLE + 500
    assert len(profile.features["rms_dbfs"]) == PROFILE_SAMPLE
    assert len(profile.features["sample_rate_hz"]) == PROFILE_SAMPLE
    assert profile.features["duration_s"] == []  # never measured
    # A subsample of the rows, in their order, without repeats.
    originals = [r["rms_dbfs"] for r in many]
    kept = profile.features["rms_dbfs"]
    positions = [originals.index(v) for v in kept]
    assert positions == sorted(set(positions))
    # Few rows are kept whole.
    few = ReferenceProfile.from_rows(rows(10), frozenset(), "small")
    assert len(few.features["rms_dbfs"]) == 10
    assert set(few.features) == set(FEATURES)


def test_from_rows_is_reproducible_by_seed() -> None:
    many = rows(PROFILE_SAMPLE + 100)
    a = ReferenceProfile.from_rows(many, frozenset(), "x", seed=3)
    b = ReferenceProfile.from_rows(many, frozenset(), "x", seed=3)
    assert a.features == b.features


def test_a_profile_survives_save_and_load(tmp_path: Path) -> None:
    profile = ReferenceProfile.from_rows(
        rows(50),
        frozenset({"weather", "paris"}),
        "corpus/train.jsonl",
        metrics={"null_transcript_ratio": 0.1},
    )
    path = tmp_path / "nested" / "reference.json"
    profile.save(path)
    loaded = ReferenceProfile.load(path)
    assert loaded.vocabulary == frozenset({"weather", "paris"})
    assert loaded.source == "corpus/train.jsonl"
    assert loaded.clips == 50
    assert loaded.metrics == {"null_transcript_ratio": pytest.approx(0.1)}
    assert set(loaded.features) == set(profile.features)
    assert loaded.features["sample_rate_hz"] == ["16000"] * 50
    assert loaded.features["rms_dbfs"] == pytest.approx(profile.features["rms_dbfs"], abs=1e-4)
    # The loaded profile judges like the original.
    assert detect("sample_rate_hz", loaded.features["sample_rate_hz"], ["8000"] * 10, "chi_square").drifted


@pytest.mark.parametrize("body", ["not json", '{"vocabulary": []}', '{"features": {"x": 3}}'])
def test_loading_a_broken_profile_is_a_value_error_naming_the_file(tmp_path: Path, body: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(body)
    with pytest.raises(ValueError, match=r"broken\.json"):
        ReferenceProfile.load(path)


def test_loading_a_missing_profile_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.json"):
        ReferenceProfile.load(tmp_path / "missing.json")


def test_drift_table_judges_every_feature_with_its_default_test() -> None:
    profile = ReferenceProfile(
        features={
            "rms_dbfs": sample(0, 1000, -25.0, 5.0),
            "duration_s": sample(2, 1000, 2.5, 0.5),
            "sample_rate_hz": rates(("16000", 1000)),
        }
    )
    current = {
        "rms_dbfs": sample(1, 200, -15.0, 5.0),
        "duration_s": sample(3, 200, 2.5, 0.5),
        "sample_rate_hz": rates(("8000", 200)),
    }
    table = {r.feature: r for r in drift_table(profile, current)}
    assert set(table) == {"rms_dbfs", "duration_s", "sample_rate_hz"}
    assert table["rms_dbfs"].test == "psi" and table["rms_dbfs"].drifted
    assert table["duration_s"].test == "psi" and not table["duration_s"].drifted
    assert "sample_rate_hz" in CATEGORICAL_FEATURES
    assert table["sample_rate_hz"].test == "chi_square" and table["sample_rate_hz"].drifted
    # A named test replaces the default; a feature the window lacks is not judged.
    named = {
        r.feature: r for r in drift_table(profile, {"rms_dbfs": current["rms_dbfs"]}, {"rms_dbfs": "ks"})
    }
    assert named["rms_dbfs"].test == "ks" and named["rms_dbfs"].drifted
    assert math.isnan(named["duration_s"].statistic) and not named["duration_s"].drifted
