"""Audio decoding: the only place that reads audio files or bytes.

Everything downstream works on `float32` mono arrays at `SAMPLE_RATE_HZ`. Decoding streams the
input in blocks (downmix, then a streaming resampler), so memory stays proportional to the 16 kHz
mono output rather than to the source's rate and channel count, and an over-long clip is refused
from its header before any sample is read.
"""

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from asr.errors import (
    ClipTooLongError,
    EmptyAudioError,
    InvalidSamplesError,
    TruncatedAudioError,
    UndecodableAudioError,
    UnsupportedSampleRateError,
)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")
"""Files picked up from folders and globs; a file named explicitly is tried whatever its suffix."""
SAMPLE_RATE_HZ = 16_000
"""The rate every model and stage works at: wav2vec2 checkpoints are trained on 16 kHz speech."""
MIN_SAMPLE_RATE_HZ = 8_000
"""Telephone band; below it speech loses the formants recognition needs."""
MAX_SAMPLE_RATE_HZ = 48_000
"""The highest rate of common recording hardware; higher rates are refused, not silently resampled."""
CLIPPED_ABS_AMPLITUDE = 0.999
"""A source sample at or above this magnitude counts as clipped (full scale minus rounding)."""
_BLOCK_FRAMES = 65_536
"""Frames decoded per block: ~1.4 s at 48 kHz, large enough to amortize calls, small to bound memory."""

_WAV_DATA_SHORT = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
"""libsndfile's header report for a WAV whose data chunk holds fewer bytes than declared."""

Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AudioLimits:
    """What decoding accepts. `max_clip_s` protects memory and latency; the API sets it lower."""

    max_clip_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.max_clip_s > 0:
            raise ValueError("max_clip_s must be positive")


@dataclass(frozen=True)
class Audio:
    """Decoded audio: `samples` is float32 mono at `SAMPLE_RATE_HZ`, nominally in [-1, 1].

    The `source_*` fields describe the input as received; `clipping_ratio` is measured on the
    source samples, before resampling smears flat tops into ringing.
    """

    samples: Samples
    source_format: str
    source_subtype: str
    source_sample_rate_hz: int
    source_channels: int
    clipping_ratio: float

    @property
    def sample_rate_hz(self) -> int:
        return SAMPLE_RATE_HZ

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE_HZ


def load_audio(source: str | Path | bytes, limits: AudioLimits | None = None) -> Audio:
    """Decode WAV, FLAC, OGG (Vorbis/Opus) or MP3 from a path or from bytes.

    Returns mono float32 at 16 kHz. Raises a subclass of `AudioError` for empty, undecodable,
    truncated, NaN/Inf, out-of-range-rate or over-long input. Silence and all-zero audio decode
    normally: deciding that nothing was said is the pipeline's job, not an error.
    """
    limits = limits or AudioLimits()
    if isinstance(source, bytes):
        if not source:
            raise EmptyAudioError("the audio is empty (0 bytes)")
        return _decode(io.BytesIO(source), limits)
    path = Path(source)
    if not path.is_file():
        raise UndecodableAudioError(f"no such audio file: {path}")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"the audio file is empty (0 bytes): {path}")
    with path.open("rb") as handle:
        return _decode(handle, limits)


def _decode(handle: io.BufferedIOBase | io.BytesIO, limits: AudioLimits) -> Audio:
    try:
        sound = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise UndecodableAudioError(f"not a supported audio format ({reason})") from e
    with sound:
        _check_header(sound, limits)
        samples, clipped = _read_mono_16k(sound, limits)
    if samples.size == 0:
        raise EmptyAudioError("the audio has no samples")
    return Audio(
        samples=samples,
        source_format=sound.format,
        source_subtype=sound.subtype,
        source_sample_rate_hz=sound.samplerate,
        source_channels=sound.channels,
        clipping_ratio=clipped,
    )


def _check_header(sound: sf.SoundFile, limits: AudioLimits) -> None:
    if not MIN_SAMPLE_RATE_HZ <= sound.samplerate <= MAX_SAMPLE_RATE_HZ:
        raise UnsupportedSampleRateError(
            f"sample rate {sound.samplerate} Hz is outside {MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz"
        )
    if sound.frames == 0:
        raise EmptyAudioError("the audio has no frames (empty, or cut short before the first)")
    if _WAV_DATA_SHORT.search(sound.extra_info):
        # libsndfile quietly shortens a WAV whose data chunk is cut; its header report says so.
        raise TruncatedAudioError("the WAV data chunk is shorter than its header announces")
    header_s = sound.frames / sound.samplerate
    if header_s > limits.max_clip_s:
        raise ClipTooLongError(f"the clip is {header_s:.1f} s long; the maximum is {limits.max_clip_s:.1f} s")


def _read_mono_16k(sound: sf.SoundFile, limits: AudioLimits) -> tuple[Samples, float]:
    """Stream blocks through downmix and resampling; returns samples and the clipped-sample ratio."""
    resampler = (
        None
        if sound.samplerate == SAMPLE_RATE_HZ
        else soxr.ResampleStream(sound.samplerate, SAMPLE_RATE_HZ, 1, dtype="float32")
    )
    max_frames = int(limits.max_clip_s * sound.samplerate)
    chunks: list[Samples] = []
    frames_read = clipped = 0
    try:
        # Not `sound.blocks()`: it trusts the header's frame count, so a cut MP3 would come back
        # padded to full length instead of short.
        while len(block := sound.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)):
            if not np.isfinite(block).all():
                raise InvalidSamplesError("the audio contains NaN or infinite samples")
            frames_read += len(block)
            if frames_read > max_frames:
                # The header under-stated the length: stop before reading the rest into memory.
                raise ClipTooLongError(f"the clip is longer than {limits.max_clip_s:.1f} s")
            clipped += int(np.count_nonzero(np.abs(block) >= CLIPPED_ABS_AMPLITUDE))
            mono = block.mean(axis=1, dtype=np.float32)
            chunks.append(mono if resampler is None else resampler.resample_chunk(mono))
    except sf.LibsndfileError as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise TruncatedAudioError(f"the audio stream is corrupt or cut short ({reason})") from e
    if frames_read < sound.frames:
        raise TruncatedAudioError(
            f"the audio stream is cut short: {frames_read} of {sound.frames} frames decoded"
        )
    if resampler is not None:
        chunks.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    total_values = max(frames_read * sound.channels, 1)
    return samples, clipped / total_values
