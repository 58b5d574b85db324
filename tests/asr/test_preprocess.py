import numpy as np
import pytest

from asr.preprocess import PreprocessOptions, clip_stats, preprocess, to_dbfs
from tests.signals import noise, pad, silence, tone


def rms_dbfs(x: np.ndarray) -> float:
    return to_dbfs(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def test_stats_of_a_padded_tone() -> None:
    clip = pad(tone(seconds=1.0, amplitude=0.5), before_s=0.4, after_s=0.6)
    stats = clip_stats(clip, clipping_ratio=0.0, options=PreprocessOptions())
    assert stats.duration_s == pytest.approx(2.0)
    assert stats.leading_silence_ms == pytest.approx(400, abs=20)
    assert stats.trailing_silence_ms == pytest.approx(600, abs=20)
    assert stats.peak_dbfs == pytest.approx(20 * np.log10(0.5), abs=0.01)
    # A sine's RMS is peak/sqrt(2); over 2 s with 1 s of tone, a further 1/sqrt(2).
    assert stats.rms_dbfs == pytest.approx(20 * np.log10(0.5 / 2), abs=0.05)
    assert stats.speech_ratio == pytest.approx(0.5, abs=0.02)
    assert not stats.is_all_zero


def test_all_zero_is_missing_audio_and_fully_silent() -> None:
    stats = clip_stats(silence(1.5), 0.0, PreprocessOptions())
    assert stats.is_all_zero
    assert stats.speech_ratio == 0.0
    assert stats.leading_silence_ms == pytest.approx(1500)
    assert stats.rms_dbfs == stats.peak_dbfs == -120.0


def test_low_noise_floor_counts_as_silence() -> None:
    clip = np.concatenate([noise(0.5, amplitude=1e-4), tone(seconds=0.5), noise(0.5, amplitude=1e-4, seed=1)])
    stats = clip_stats(clip, 0.0, PreprocessOptions())
    assert stats.leading_silence_ms == pytest.approx(500, abs=20)
    assert stats.trailing_silence_ms == pytest.approx(500, abs=20)
    assert not stats.is_all_zero


def test_trim_keeps_a_margin_and_reports_the_offset() -> None:
    clip = pad(tone(seconds=1.0), before_s=1.0, after_s=1.0)
    options = PreprocessOptions(keep_silence_ms=100, normalize=False)
    out = preprocess(clip, 0.0, options)
    assert len(out.samples) / 16000 == pytest.approx(1.2, abs=0.03)
    assert out.offset_s == pytest.approx(0.9, abs=0.02)
    assert out.stats.duration_s == pytest.approx(3.0)  # stats describe the clip as received


def test_trim_leaves_silence_only_clips_whole() -> None:
    out = preprocess(silence(1.0), 0.0)
    assert len(out.samples) == 16000
    assert out.gain_db == 0.0


def test_normalization_reaches_the_target_level() -> None:
    quiet = tone(amplitude=0.01)
    out = preprocess(quiet, 0.0, PreprocessOptions(target_dbfs=-23.0))
    assert rms_dbfs(out.samples) == pytest.approx(-23.0, abs=0.1)
    assert out.gain_db > 0


def test_normalization_never_pushes_peaks_above_the_ceiling() -> None:
    # A spiky signal: low RMS but a high peak, so the RMS target would clip it.
    spiky = np.zeros(16000, np.float32)
    spiky[::400] = 0.5
    out = preprocess(spiky, 0.0, PreprocessOptions(target_dbfs=-10.0, peak_ceiling_dbfs=-1.0, trim=False))
    assert to_dbfs(float(np.abs(out.samples).max())) == pytest.approx(-1.0, abs=0.01)


def test_gain_is_capped_for_near_silent_clips() -> None:
    whisper = tone(amplitude=1e-4)
    out = preprocess(whisper, 0.0, PreprocessOptions(max_gain_db=30.0))
    assert out.gain_db == pytest.approx(30.0)


def test_loud_clipped_input_is_attenuated_not_amplified() -> None:
    loud = np.clip(tone(amplitude=3.0), -1, 1)
    out = preprocess(loud, clipping_ratio=0.6)
    assert out.gain_db <= 0
    assert out.stats.clipping_ratio == 0.6
    assert out.stats.peak_dbfs == pytest.approx(0.0, abs=0.01)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="target_dbfs"):
        PreprocessOptions(target_dbfs=0.0, peak_ceiling_dbfs=-1.0)
    with pytest.raises(ValueError, match="silence_below_peak_db"):
        PreprocessOptions(silence_below_peak_db=0)
