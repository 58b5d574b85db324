"""Preprocessing, the data stage: clip statistics, silence trimming and volume normalization.

The statistics computed here are the input metrics that monitoring records for every request and
the data checker reports for every corpus, so they are computed once, here, on the clip as
received (before trimming and gain).

Silence threshold. The signal is cut into `FRAME_MS` frames; a frame is silent when its RMS level
is below `silence_floor_dbfs` (absolute: a recording's noise floor) *or* more than
`silence_below_peak_db` under the loudest frame (relative: keeps quiet recordings trimmable).
Defaults: -60 dBFS is the noise floor of a quiet room through a consumer microphone, and 35 dB
under the peak frame is below the weakest consonants of the same talker but above typical
background hum, the same rule as librosa's `trim(top_db=...)`.
"""

from dataclasses import dataclass

import numpy as np

from asr.audio import SAMPLE_RATE_HZ, Samples

FRAME_MS = 20
"""Energy frame: one wav2vec2 output frame (320 samples at 16 kHz)."""
_FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
_DBFS_OF_ZERO = -120.0
"""Reported level of digital silence: below the 16-bit floor (-96 dBFS), finite so it can be averaged."""


@dataclass(frozen=True)
class PreprocessOptions:
    """Trimming and normalization settings; levels in dBFS (0 dBFS = full-scale sine peak)."""

    trim: bool = True
    normalize: bool = True
    silence_floor_dbfs: float = -60.0
    silence_below_peak_db: float = 35.0
    keep_silence_ms: float = 150.0
    """Silence kept around the speech when trimming, so soft onsets and releases survive."""
    target_dbfs: float = -23.0
    """RMS target: broadcast loudness level, leaves ~20 dB of headroom for speech peaks."""
    peak_ceiling_dbfs: float = -1.0
    """The gain never pushes the peak above this: normalization must not create clipping."""
    max_gain_db: float = 30.0
    """Cap on amplification, so a near-silent clip is not turned into loud noise."""

    def __post_init__(self) -> None:
        if self.silence_below_peak_db <= 0 or self.keep_silence_ms < 0 or self.max_gain_db < 0:
            raise ValueError("silence_below_peak_db must be > 0; keep_silence_ms, max_gain_db >= 0")
        if self.peak_ceiling_dbfs > 0 or self.target_dbfs > self.peak_ceiling_dbfs:
            raise ValueError("need target_dbfs <= peak_ceiling_dbfs <= 0")


@dataclass(frozen=True)
class ClipStats:
    """Input statistics of one clip as received. Levels in dBFS, durations in s or ms."""

    duration_s: float
    leading_silence_ms: float
    trailing_silence_ms: float
    rms_dbfs: float
    peak_dbfs: float
    clipping_ratio: float
    """Fraction of source samples at full scale (measured by the decoder, before resampling)."""
    speech_ratio: float
    """Fraction of frames above the silence threshold (an energy estimate, not the VAD's)."""
    is_all_zero: bool
    """Digital silence: a muted microphone or a missing track ("missing audio")."""


@dataclass(frozen=True)
class Preprocessed:
    """The clip ready for VAD: `samples` float32 mono 16 kHz, trimmed and gain-adjusted.

    `offset_s` is where `samples` starts in the original clip, so times found later can be mapped
    back to the caller's timeline.
    """

    samples: Samples
    stats: ClipStats
    offset_s: float
    gain_db: float


def to_dbfs(amplitude: float) -> float:
    """Convert a linear amplitude (RMS or peak) to dBFS, flooring digital silence."""
    return _DBFS_OF_ZERO if amplitude <= 0 else max(_DBFS_OF_ZERO, 20.0 * float(np.log10(amplitude)))


def frame_levels_dbfs(samples: Samples) -> np.ndarray:
    """RMS level of each `FRAME_MS` frame in dBFS; a partial last frame is padded with zeros."""
    n_frames = -(-len(samples) // _FRAME_SAMPLES)
    padded = np.zeros(n_frames * _FRAME_SAMPLES, dtype=np.float32)
    padded[: len(samples)] = samples
    rms = np.sqrt(np.mean(np.square(padded.reshape(n_frames, _FRAME_SAMPLES), dtype=np.float64), axis=1))
    with np.errstate(divide="ignore"):
        levels = 20.0 * np.log10(rms)
    return np.asarray(np.maximum(levels, _DBFS_OF_ZERO), dtype=np.float64)


def voiced_frames(levels_dbfs: np.ndarray, options: PreprocessOptions) -> np.ndarray:
    """Boolean mask of frames above the documented silence threshold (see the module docstring)."""
    if levels_dbfs.size == 0:
        return np.zeros(0, dtype=bool)
    threshold = max(options.silence_floor_dbfs, float(levels_dbfs.max()) - options.silence_below_peak_db)
    return np.asarray(levels_dbfs >= threshold)


def clip_stats(samples: Samples, clipping_ratio: float, options: PreprocessOptions) -> ClipStats:
    """Measure a clip as received: duration, edge silence, level, peak, clipping, speech ratio."""
    voiced = voiced_frames(frame_levels_dbfs(samples), options)
    duration_s = len(samples) / SAMPLE_RATE_HZ
    if voiced.any():
        first, last = int(np.argmax(voiced)), len(voiced) - 1 - int(np.argmax(voiced[::-1]))
        leading_ms = float(first * FRAME_MS)
        trailing_ms = max(0.0, duration_s * 1000 - (last + 1) * FRAME_MS)
    else:
        leading_ms, trailing_ms = duration_s * 1000, 0.0
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    return ClipStats(
        duration_s=duration_s,
        leading_silence_ms=float(leading_ms),
        trailing_silence_ms=float(trailing_ms),
        rms_dbfs=to_dbfs(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))),
        peak_dbfs=to_dbfs(peak),
        clipping_ratio=clipping_ratio,
        speech_ratio=float(voiced.mean()) if voiced.size else 0.0,
        is_all_zero=peak == 0.0,
    )


def trim_silence(samples: Samples, stats: ClipStats, options: PreprocessOptions) -> tuple[Samples, float]:
    """Cut leading/trailing silence, keeping `keep_silence_ms` either side; returns (clip, offset_s).

    A clip with no voiced frame is returned whole: whether it holds speech is the VAD's call.
    """
    if stats.speech_ratio == 0.0:
        return samples, 0.0
    keep = options.keep_silence_ms
    start = int(max(0.0, stats.leading_silence_ms - keep) * SAMPLE_RATE_HZ / 1000)
    end = len(samples) - int(max(0.0, stats.trailing_silence_ms - keep) * SAMPLE_RATE_HZ / 1000)
    return samples[start:end], start / SAMPLE_RATE_HZ


def normalization_gain_db(samples: Samples, options: PreprocessOptions) -> float:
    """Gain that brings the RMS to `target_dbfs`, limited by the peak ceiling and `max_gain_db`."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak == 0.0:
        return 0.0
    rms_dbfs = to_dbfs(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))))
    wanted = options.target_dbfs - rms_dbfs
    headroom = options.peak_ceiling_dbfs - to_dbfs(peak)
    return float(min(wanted, headroom, options.max_gain_db))


def preprocess(
    samples: Samples, clipping_ratio: float, options: PreprocessOptions | None = None
) -> Preprocessed:
    """Measure, trim and normalize one clip (float32 mono 16 kHz in, the same out)."""
    options = options or PreprocessOptions()
    stats = clip_stats(samples, clipping_ratio, options)
    trimmed, offset_s = trim_silence(samples, stats, options) if options.trim else (samples, 0.0)
    gain_db = normalization_gain_db(trimmed, options) if options.normalize else 0.0
    scaled = trimmed if gain_db == 0.0 else (trimmed * np.float32(10 ** (gain_db / 20))).astype(np.float32)
    return Preprocessed(samples=scaled, stats=stats, offset_s=offset_s, gain_db=gain_db)
