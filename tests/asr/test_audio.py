from pathlib import Path

import numpy as np
import pytest

from asr.audio import SAMPLE_RATE_HZ, AudioLimits, load_audio
from asr.errors import (
    AudioError,
    ClipTooLongError,
    EmptyAudioError,
    InvalidSamplesError,
    TruncatedAudioError,
    UndecodableAudioError,
    UnsupportedSampleRateError,
)
from tests.signals import encode, tone

# (format, subtype, rates): every container/codec the loader promises, at rates it must resample.
FORMATS = [
    ("WAV", "PCM_16", (8000, 11025, 16000, 22050, 44100, 48000)),
    ("WAV", "PCM_24", (44100,)),
    ("WAV", "PCM_32", (32000,)),
    ("WAV", "PCM_U8", (8000,)),
    ("WAV", "FLOAT", (48000,)),
    ("WAV", "DOUBLE", (16000,)),
    ("FLAC", "PCM_16", (8000, 16000, 44100)),
    ("FLAC", "PCM_24", (48000,)),
    ("OGG", "VORBIS", (22050, 44100)),
    ("OGG", "OPUS", (8000, 16000, 48000)),
    ("MP3", "MPEG_LAYER_III", (16000, 44100)),
]
CASES = [(fmt, sub, rate) for fmt, sub, rates in FORMATS for rate in rates]


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * SAMPLE_RATE_HZ / len(samples))


@pytest.mark.parametrize(("fmt", "subtype", "rate"), CASES)
def test_every_format_and_rate_decodes_to_16k_mono(fmt: str, subtype: str, rate: int) -> None:
    signal = tone(440.0, seconds=1.0, rate=rate, amplitude=0.5)
    audio = load_audio(encode(signal, rate, fmt, subtype))
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert audio.sample_rate_hz == SAMPLE_RATE_HZ
    assert audio.source_sample_rate_hz == rate
    # Lossy codecs add/trim encoder delay; lossless ones must be exact to a sample or two.
    tolerance_s = 0.2 if fmt in ("OGG", "MP3") else 0.002
    assert audio.duration_s == pytest.approx(1.0, abs=tolerance_s)
    assert dominant_hz(audio.samples) == pytest.approx(440.0, abs=5.0)
    # Percentile, not max: lossy codecs ring at the onset.
    assert 0.3 < np.percentile(np.abs(audio.samples), 99) < 0.7


def test_stereo_is_downmixed_by_averaging() -> None:
    left = tone(440.0, rate=16000, amplitude=0.4)
    stereo = np.stack([left, -left * 0.5], axis=1)
    audio = load_audio(encode(stereo, 16000, "WAV", "FLOAT"))
    assert audio.source_channels == 2
    np.testing.assert_allclose(audio.samples, left * 0.25, atol=1e-6)


def test_path_and_bytes_give_the_same_samples(tmp_path: Path) -> None:
    data = encode(tone(rate=22050), 22050, "FLAC")
    path = tmp_path / "clip.flac"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_audio(path).samples, load_audio(data).samples)


def test_all_zero_audio_is_not_an_error() -> None:
    audio = load_audio(encode(np.zeros(16000, np.float32), 16000))
    assert audio.duration_s == pytest.approx(1.0)
    assert not audio.samples.any()


def test_clipping_is_measured_on_source_samples() -> None:
    loud = np.clip(tone(amplitude=2.0, rate=44100), -1, 1)
    audio = load_audio(encode(loud, 44100, "WAV", "PCM_16"))
    assert audio.clipping_ratio > 0.5
    assert load_audio(encode(tone(rate=44100), 44100)).clipping_ratio == 0.0


def test_empty_bytes_and_zero_byte_file(tmp_path: Path) -> None:
    with pytest.raises(EmptyAudioError):
        load_audio(b"")
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(EmptyAudioError, match="0 bytes"):
        load_audio(empty)


def test_wav_header_with_no_frames() -> None:
    with pytest.raises(EmptyAudioError):
        load_audio(encode(np.zeros(0, np.float32), 16000))


def test_text_renamed_wav_is_undecodable(tmp_path: Path) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("these are not the samples you are looking for\n" * 20)
    with pytest.raises(UndecodableAudioError, match="not a supported audio format"):
        load_audio(fake)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UndecodableAudioError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize(("fmt", "subtype"), [("FLAC", "PCM_16"), ("WAV", "PCM_16"), ("MP3", None)])
def test_truncated_streams_are_reported(fmt: str, subtype: str | None) -> None:
    data = encode(tone(seconds=2.0, rate=44100), 44100, fmt, subtype)
    with pytest.raises(TruncatedAudioError):
        load_audio(data[: len(data) // 2])


def test_truncated_opus_is_an_audio_error() -> None:
    data = encode(tone(seconds=2.0, rate=48000), 48000, "OGG", "OPUS")
    with pytest.raises(AudioError):
        load_audio(data[: len(data) // 2])


def test_nan_and_inf_samples_are_rejected() -> None:
    signal = tone(rate=16000)
    signal[100] = np.nan
    with pytest.raises(InvalidSamplesError):
        load_audio(encode(signal, 16000, "WAV", "FLOAT"))
    signal[100] = np.inf
    with pytest.raises(InvalidSamplesError):
        load_audio(encode(signal, 16000, "WAV", "FLOAT"))


def test_clip_longer_than_limit_is_refused_from_the_header() -> None:
    data = encode(tone(seconds=3.0, rate=16000), 16000)
    with pytest.raises(ClipTooLongError, match=r"3\.0 s"):
        load_audio(data, AudioLimits(max_clip_s=2.5))
    assert load_audio(data, AudioLimits(max_clip_s=3.5)).duration_s == pytest.approx(3.0)


@pytest.mark.parametrize("rate", [4000, 96000])
def test_sample_rate_outside_8_to_48k_is_refused(rate: int) -> None:
    with pytest.raises(UnsupportedSampleRateError):
        load_audio(encode(tone(rate=rate), rate))


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="positive"):
        AudioLimits(max_clip_s=0)
