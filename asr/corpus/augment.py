"""Augmentation: the acoustic conditions users have that TTS voices lack.

Background noise at a chosen SNR (real recorded noise from Speech Commands' `_silence_` clips, or
generated white/pink noise), room reverberation (a synthetic exponentially decaying impulse
response), gain from whisper-quiet to clipped, extra leading/trailing silence, and narrow-band
8 kHz telephone audio. Everything is drawn from a seeded generator, so a clip's id and the
corpus seed determine its audio exactly.

Training adds speaker and channel variation on the fly (`draw_training_spec`), so that no two
epochs hear the same clip: speed perturbation, which moves tempo and pitch (formants) together
as a different vocal tract would; a random peaking equalizer (microphones and rooms colour the
spectrum); and a low-bitrate Opus round trip (what phones and messengers send).
"""

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import fftconvolve, lfilter

from asr.audio import SAMPLE_RATE_HZ, Samples

SNR_CHOICES_DB = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0)
"""From barely intelligible (0 dB) to a quiet room (30 dB)."""
GAIN_RANGE_DB = (-35.0, 12.0)
"""-35 dB is a whisper far from the microphone; +12 dB on normalized TTS clips hard."""
SPEED_FACTORS = (0.9, 1.0, 1.1)
"""Kaldi's speed perturbation (Ko et al., Interspeech 2015): three copies of every clip."""
EQ_GAIN_RANGE_DB = (-9.0, 9.0)
EQ_CENTRE_RANGE_HZ = (150.0, 5000.0)
"""One peaking band anywhere in the speech band, as a cheap microphone or a small room adds."""
OPUS_COMPRESSION_RANGE = (0.7, 1.0)
"""libsndfile's compression level for Opus; 0.9 gave speechocean762's 32 kbit/s, 1.0 is lower still."""


@dataclass(frozen=True)
class AugmentSpec:
    """What is done to one clean clip; also the clip's slice tags in the manifest."""

    noise: str = "none"
    """"none", "white", "pink", or the name of a recorded-noise clip."""
    snr_db: float | None = None
    reverb_rt60_s: float | None = None
    gain_db: float = 0.0
    lead_silence_ms: int = 0
    trail_silence_ms: int = 0
    narrowband: bool = False
    speed: float = 1.0
    eq_gain_db: float = 0.0
    eq_centre_hz: float = 1000.0
    opus_compression: float | None = None

    @property
    def is_clean(self) -> bool:
        return self == AugmentSpec(
            lead_silence_ms=self.lead_silence_ms, trail_silence_ms=self.trail_silence_ms
        )


def draw_spec(rng: np.random.Generator, noise_names: Sequence[str], clean: bool) -> AugmentSpec:
    """Draw one clip's conditions. Clean clips get only a little edge silence."""
    lead, trail = (int(x) for x in rng.integers(0, 400 if clean else 1500, size=2))
    if clean:
        return AugmentSpec(lead_silence_ms=lead, trail_silence_ms=trail)
    kinds = ["white", "pink", *(["recorded"] * 2 if noise_names else [])]
    noise = str(rng.choice(kinds)) if rng.random() < 0.7 else "none"
    if noise == "recorded":
        noise = str(rng.choice(list(noise_names)))
    return AugmentSpec(
        noise=noise,
        snr_db=float(rng.choice(SNR_CHOICES_DB)) if noise != "none" else None,
        reverb_rt60_s=round(float(rng.uniform(0.2, 0.9)), 2) if rng.random() < 0.3 else None,
        gain_db=round(float(rng.uniform(*GAIN_RANGE_DB)), 1) if rng.random() < 0.5 else 0.0,
        lead_silence_ms=lead,
        trail_silence_ms=trail,
        narrowband=bool(rng.random() < 0.15),
    )


def draw_training_spec(rng: np.random.Generator, noise_names: Sequence[str]) -> AugmentSpec:
    """Conditions for one training clip, drawn afresh every time the clip is drawn."""
    base = draw_spec(rng, noise_names, clean=bool(rng.random() < 0.25))
    return replace(
        base,
        # Edge silence is the front end's job (VAD and trimming): a little is enough here.
        lead_silence_ms=min(base.lead_silence_ms, 300),
        trail_silence_ms=min(base.trail_silence_ms, 300),
        speed=float(rng.choice(SPEED_FACTORS)),
        eq_gain_db=round(float(rng.uniform(*EQ_GAIN_RANGE_DB)), 1) if rng.random() < 0.5 else 0.0,
        eq_centre_hz=round(float(np.exp(rng.uniform(*np.log(EQ_CENTRE_RANGE_HZ)))), 0),
        opus_compression=round(float(rng.uniform(*OPUS_COMPRESSION_RANGE)), 2)
        if rng.random() < 0.15
        else None,
    )


def change_speed(x: Samples, factor: float) -> Samples:
    """Play `x` `factor` times faster (shorter and higher), by resampling."""
    if factor == 1.0:
        return x
    return np.asarray(soxr.resample(x, SAMPLE_RATE_HZ * factor, SAMPLE_RATE_HZ), dtype=np.float32)


def peaking_eq(x: Samples, centre_hz: float, gain_db: float, q: float = 1.0) -> Samples:
    """RBJ cookbook peaking filter: `gain_db` at `centre_hz`, flat far from it."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * centre_hz / SAMPLE_RATE_HZ
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.asarray(lfilter(b / den[0], den / den[0], x), dtype=np.float32)


def opus_round_trip(x: Samples, compression: float) -> Samples:
    """Encode as Ogg Opus at libsndfile's `compression` level and decode again."""
    buffer = io.BytesIO()
    sf.write(buffer, x, SAMPLE_RATE_HZ, format="OGG", subtype="OPUS", compression_level=compression)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return np.asarray(decoded[: len(x)], dtype=np.float32)


def _rms(x: Samples) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def colored_noise(kind: str, n: int, rng: np.random.Generator) -> Samples:
    """White, or pink (1/f power) noise shaped in the frequency domain; unit RMS."""
    white = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        white = np.fft.irfft(spectrum, n)
    return np.asarray(white / max(_rms(white.astype(np.float32)), 1e-12), dtype=np.float32)


def room_impulse(rt60_s: float, rng: np.random.Generator) -> Samples:
    """Exponentially decaying noise: the envelope falls 60 dB in `rt60_s`, the direct path first."""
    n = int(rt60_s * SAMPLE_RATE_HZ)
    decay = np.exp(-6.9 * np.arange(n) / n)  # ln(1000) = 6.9: -60 dB at the end
    impulse = rng.standard_normal(n) * decay * 0.3
    impulse[0] = 1.0
    return np.asarray(impulse / np.sqrt(np.sum(impulse**2)), dtype=np.float32)


def apply(
    clean: Samples, spec: AugmentSpec, rng: np.random.Generator, noise_bank: dict[str, Samples] | None = None
) -> Samples:
    """Render `spec` on a float32 16 kHz clip; the result is float32 in [-1, 1] (clipped if loud)."""
    x = change_speed(clean.astype(np.float32), spec.speed)
    clean = x  # the SNR is relative to the speech as it will be heard
    if spec.reverb_rt60_s:
        x = fftconvolve(x, room_impulse(spec.reverb_rt60_s, rng))[: len(x)].astype(np.float32)
    x = np.concatenate(
        [np.zeros(spec.lead_silence_ms * SAMPLE_RATE_HZ // 1000, np.float32), x,
         np.zeros(spec.trail_silence_ms * SAMPLE_RATE_HZ // 1000, np.float32)]
    )  # fmt: skip
    if spec.noise != "none" and spec.snr_db is not None:
        x = x + _noise_like(spec.noise, len(x), rng, noise_bank) * _rms(clean) / 10 ** (spec.snr_db / 20)
    if spec.eq_gain_db:
        x = peaking_eq(x, spec.eq_centre_hz, spec.eq_gain_db)
    if spec.narrowband:
        x = soxr.resample(soxr.resample(x, SAMPLE_RATE_HZ, 8000), 8000, SAMPLE_RATE_HZ)[: len(x)]
    if spec.opus_compression is not None:
        x = opus_round_trip(np.clip(x, -1.0, 1.0), spec.opus_compression)
    if spec.gain_db:
        x = x * 10 ** (spec.gain_db / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _noise_like(kind: str, n: int, rng: np.random.Generator, bank: dict[str, Samples] | None) -> Samples:
    if kind in ("white", "pink"):
        return colored_noise(kind, n, rng)
    if not bank or kind not in bank:
        raise KeyError(f"unknown noise {kind!r}")
    recorded = bank[kind]
    start = int(rng.integers(0, len(recorded)))
    tiled = np.resize(np.roll(recorded, -start), n)  # loop the recording to the clip's length
    return (tiled / max(_rms(tiled), 1e-12)).astype(np.float32)
