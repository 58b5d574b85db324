"""Seeded test-signal generators: float32 mono arrays in [-1, 1] at a given rate."""

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

Samples = npt.NDArray[np.float32]
REPO = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO / "data" / "samples"
SPEECH_SAMPLE = SAMPLES_DIR / "arctic_a0001.flac"
"""A real 3.3 s sentence (CMU ARCTIC prompt read by the CC0 'cathy' voice), 16 kHz."""


def tone(freq_hz: float = 440.0, seconds: float = 1.0, rate: int = 16_000, amplitude: float = 0.5) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def noise(seconds: float = 1.0, rate: int = 16_000, amplitude: float = 0.01, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * rate))).clip(-1, 1).astype(np.float32)


def silence(seconds: float, rate: int = 16_000) -> Samples:
    return np.zeros(int(seconds * rate), dtype=np.float32)


def pad(samples: Samples, before_s: float, after_s: float, rate: int = 16_000) -> Samples:
    return np.concatenate([silence(before_s, rate), samples, silence(after_s, rate)])


def encode(samples: Samples, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """Encode samples (mono, or (frames, channels)) to bytes in a soundfile format."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def speech() -> tuple[Samples, int]:
    """The real speech sample as float32 with its rate."""
    data, rate = sf.read(SPEECH_SAMPLE, dtype="float32")
    return data, rate


def espeak(text: str, voice: str = "en-us") -> tuple[Samples, int]:
    """Speech synthesized by espeak-ng (a Debian package the Makefile installs)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(out), text], check=True, capture_output=True)
        data, rate = sf.read(out, dtype="float32")
    return data, rate
