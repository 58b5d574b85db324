"""Text-to-speech engines that voice the training corpus.

Each engine is a local program or package: Debian's espeak-ng, flite and festival, and PyPI's
hibari-tts (one neural voice, in its wheel). An engine lists its voices and renders text to a
float32 mono array at its own rate; the corpus builder resamples to 16 kHz. Nothing here goes
online.
"""

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soundfile as sf

from asr.errors import ASRError

Samples = npt.NDArray[np.float32]


class SynthesisError(ASRError):
    """A TTS engine is missing or failed on a text."""


@dataclass(frozen=True)
class Voice:
    """A speaking voice: the engine, the engine's voice name, and prosody (rate and pitch as
    multipliers of the voice's default)."""

    engine: str
    name: str
    rate: float = 1.0
    pitch: float = 1.0

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


class Engine(Protocol):
    name: str

    def available(self) -> bool: ...

    def voice_names(self) -> list[str]: ...

    def synthesize(self, text: str, voice: Voice) -> tuple[Samples, int]: ...


def _run(cmd: list[str], stdin: str | None = None) -> bytes:
    try:
        done = subprocess.run(
            cmd, input=stdin.encode() if stdin else None, capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SynthesisError(f"{cmd[0]} failed: {e}") from e
    if done.returncode != 0:
        raise SynthesisError(
            f"{cmd[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')[:200]}"
        )
    return done.stdout


def _read_wav(path: Path) -> tuple[Samples, int]:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    samples = data.mean(axis=1, dtype=np.float32)
    if samples.size == 0:
        raise SynthesisError(f"empty synthesis output in {path.name}")
    return samples, int(rate)


class EspeakEngine:
    """espeak-ng: formant synthesis, 8 English accents x variants (the variant sets the voice quality)."""

    name = "espeak"
    ACCENTS = (
        "en-us",
        "en-gb",
        "en-gb-scotland",
        "en-gb-x-rp",
        "en-gb-x-gbclan",
        "en-gb-x-gbcwmd",
        "en-029",
        "en-us-nyc",
    )
    VARIANTS = (
        "m1",
        "m2",
        "m3",
        "m4",
        "m5",
        "m6",
        "m7",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "klatt",
        "klatt2",
        "klatt4",
        "croak",
        "whisper",
    )
    BASE_WPM = 165
    """espeak-ng's default speaking rate in words per minute; `Voice.rate` scales it."""
    BASE_PITCH = 50
    """espeak-ng's default pitch on its 0-99 scale; `Voice.pitch` scales it."""

    def available(self) -> bool:
        return shutil.which("espeak-ng") is not None

    def voice_names(self) -> list[str]:
        return [f"{accent}+{variant}" for accent in self.ACCENTS for variant in self.VARIANTS]

    def synthesize(self, text: str, voice: Voice) -> tuple[Samples, int]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            wpm = str(round(self.BASE_WPM * voice.rate))
            pitch = str(min(99, round(self.BASE_PITCH * voice.pitch)))
            _run(["espeak-ng", "-v", voice.name, "-s", wpm, "-p", pitch, "-w", str(out), text])
            return _read_wav(out)


class FliteEngine:
    """flite: CMU's small diphone and cluster-unit voices."""

    name = "flite"
    VOICES = ("kal", "kal16", "awb", "rms", "slt")

    def available(self) -> bool:
        return shutil.which("flite") is not None

    def voice_names(self) -> list[str]:
        return list(self.VOICES)

    def synthesize(self, text: str, voice: Voice) -> tuple[Samples, int]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            # flite's duration_stretch is the inverse of rate.
            stretch = f"duration_stretch={1 / voice.rate:.3f}"
            pitch = f"int_f0_target_mean={110 * voice.pitch:.0f}"
            _run(
                [
                    "flite",
                    "-voice",
                    voice.name,
                    "--setf",
                    stretch,
                    "--setf",
                    pitch,
                    "-t",
                    text,
                    "-o",
                    str(out),
                ]
            )
            return _read_wav(out)


class FestivalEngine:
    """festival's text2wave: two diphone voices and one HTS (statistical parametric) voice."""

    name = "festival"
    VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")

    def available(self) -> bool:
        return shutil.which("text2wave") is not None

    def voice_names(self) -> list[str]:
        return list(self.VOICES)

    def synthesize(self, text: str, voice: Voice) -> tuple[Samples, int]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            stretch = f"(Parameter.set 'Duration_Stretch {1 / voice.rate:.3f})"
            _run(
                ["text2wave", "-eval", f"(voice_{voice.name})", "-eval", stretch, "-o", str(out)], stdin=text
            )
            return _read_wav(out)


class HibariEngine:
    """hibari-tts: a small neural voice (distilled from Kokoro), the only one shipped in its wheel."""

    name = "hibari"
    VOICES = ("heart",)

    def __init__(self) -> None:
        self._tts: Any = None

    def available(self) -> bool:
        try:
            import hibari  # noqa: F401
        except ImportError:
            return False
        return True

    def voice_names(self) -> list[str]:
        return list(self.VOICES)

    def synthesize(self, text: str, voice: Voice) -> tuple[Samples, int]:
        if self._tts is None:
            from hibari import Hibari

            self._tts = Hibari(threads=1)
        try:
            audio = self._tts(text, speed=voice.rate, seed=0)
        except Exception as e:
            raise SynthesisError(f"hibari failed on {text!r}: {e}") from e
        return np.asarray(audio, dtype=np.float32), 24_000


def all_engines() -> dict[str, Engine]:
    engines: list[Engine] = [EspeakEngine(), FliteEngine(), FestivalEngine(), HibariEngine()]
    return {e.name: e for e in engines}
