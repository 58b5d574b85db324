import numpy as np
import pytest

from asr.corpus.augment import (
    AugmentSpec,
    apply,
    change_speed,
    colored_noise,
    draw_spec,
    draw_training_spec,
    opus_round_trip,
    peaking_eq,
    room_impulse,
)
from tests.signals import tone


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_noise_is_mixed_at_the_requested_snr(snr_db: float) -> None:
    clean = tone(seconds=2.0, amplitude=0.1)
    noisy = apply(clean, AugmentSpec(noise="white", snr_db=snr_db), np.random.default_rng(0))
    measured = 20 * np.log10(rms(clean) / rms(noisy - clean))
    assert measured == pytest.approx(snr_db, abs=0.3)


def test_recorded_noise_is_looped_to_length() -> None:
    bank = {"tap": colored_noise("pink", 4000, np.random.default_rng(1))}
    clean = tone(seconds=1.0, amplitude=0.1)
    noisy = apply(clean, AugmentSpec(noise="tap", snr_db=5.0), np.random.default_rng(0), bank)
    assert len(noisy) == len(clean)
    with pytest.raises(KeyError):
        apply(clean, AugmentSpec(noise="missing", snr_db=5.0), np.random.default_rng(0), bank)


def test_gain_silence_and_clipping() -> None:
    clean = tone(seconds=1.0, amplitude=0.5)
    out = apply(
        clean, AugmentSpec(gain_db=12.0, lead_silence_ms=250, trail_silence_ms=500), np.random.default_rng(0)
    )
    assert len(out) == 16000 + 4000 + 8000
    assert not out[:4000].any() and not out[-8000:].any()
    assert np.abs(out).max() == 1.0  # +12 dB on a 0.5 sine clips
    quiet = apply(clean, AugmentSpec(gain_db=-30.0), np.random.default_rng(0))
    assert rms(quiet) == pytest.approx(rms(clean) * 10 ** (-30 / 20), rel=1e-3)


def test_narrowband_removes_energy_above_4_khz() -> None:
    high = tone(freq_hz=6000.0, seconds=1.0, amplitude=0.5)
    out = apply(high, AugmentSpec(narrowband=True), np.random.default_rng(0))
    assert rms(out) < 0.01 * rms(high)


def test_reverb_decays_over_rt60() -> None:
    impulse = room_impulse(0.5, np.random.default_rng(0))
    assert len(impulse) == 8000
    assert np.abs(impulse[-800:]).max() < 0.01 * np.abs(impulse[:800]).max() + 1e-3
    out = apply(tone(seconds=1.0), AugmentSpec(reverb_rt60_s=0.5), np.random.default_rng(0))
    assert len(out) == 16000


def test_draw_spec_is_seeded_and_clean_clips_stay_clean() -> None:
    a = [draw_spec(np.random.default_rng(7), ["tap"], clean=False) for _ in range(3)]
    b = [draw_spec(np.random.default_rng(7), ["tap"], clean=False) for _ in range(3)]
    assert a == b
    clean = draw_spec(np.random.default_rng(3), ["tap"], clean=True)
    assert clean.is_clean and clean.noise == "none" and clean.gain_db == 0.0
    specs = [draw_spec(np.random.default_rng(i), ["tap"], clean=False) for i in range(200)]
    assert {s.noise for s in specs} >= {"none", "white", "pink", "tap"}
    assert any(s.narrowband for s in specs) and any(s.reverb_rt60_s for s in specs)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbation_changes_length_and_pitch(factor: float) -> None:
    clean = tone(seconds=1.0, freq_hz=500.0, amplitude=0.3)
    faster = change_speed(clean, factor)
    assert len(faster) == pytest.approx(len(clean) / factor, abs=2)
    spectrum = np.abs(np.fft.rfft(faster))
    peak_hz = np.argmax(spectrum) * 16_000 / len(faster)
    assert peak_hz == pytest.approx(500.0 * factor, rel=0.02)


@pytest.mark.parametrize("gain_db", [-9.0, 6.0])
def test_peaking_eq_changes_its_band_and_leaves_others(gain_db: float) -> None:
    at_centre = tone(seconds=1.0, freq_hz=1000.0, amplitude=0.1)
    far = tone(seconds=1.0, freq_hz=6000.0, amplitude=0.1)
    centre_change = 20 * np.log10(rms(peaking_eq(at_centre, 1000.0, gain_db)[4000:]) / rms(at_centre[4000:]))
    far_change = 20 * np.log10(rms(peaking_eq(far, 1000.0, gain_db)[4000:]) / rms(far[4000:]))
    assert centre_change == pytest.approx(gain_db, abs=0.3)
    assert abs(far_change) < 1.0


def test_opus_round_trip_keeps_length_and_loses_high_frequencies() -> None:
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
    coded = opus_round_trip(noise, 1.0)
    assert len(coded) == len(noise) and coded.dtype == np.float32
    assert not np.allclose(coded, noise, atol=1e-3)  # lossy: it changed


def test_training_specs_vary_every_draw_and_are_seeded() -> None:
    draws = [draw_training_spec(np.random.default_rng(7), ["tap"]) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(0)
    specs = [draw_training_spec(rng, ["tap"]) for _ in range(300)]
    assert {s.speed for s in specs} == {0.9, 1.0, 1.1}
    assert any(s.eq_gain_db for s in specs) and any(s.opus_compression for s in specs)
    assert any(s.noise == "tap" for s in specs)
    assert max(max(s.lead_silence_ms, s.trail_silence_ms) for s in specs) <= 300
    clean = tone(seconds=1.0, amplitude=0.3)
    bank = {"tap": colored_noise("pink", 4000, rng)}
    for spec in specs[:40]:
        out = apply(clean, spec, rng, bank)
        assert out.dtype == np.float32 and np.all(np.abs(out) <= 1.0) and np.isfinite(out).all()
