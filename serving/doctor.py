"""`voice-search doctor`: an install proves itself before anyone meets a confusing error.

`make install` runs it right after installing the lock. It checks, in order:
1. the lock agrees with pyproject.toml (every dependency pinned, within its range, and nothing
   pinned for a dependency that pyproject no longer has);
2. every installed package is the version the lock pins;
3. every module of the application imports, and so do the native libraries it loads lazily;
4. the native parts actually run: flashlight's beam search decodes, libsndfile writes and reads
   FLAC and Ogg Opus, ONNX Runtime and torch compute.
Each check returns problems as sentences; an empty list is a pass.
"""

import importlib
import importlib.metadata
import io
import pkgutil
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from asr.dependencies import REINSTALL_HINT, installed_description
from serving.settings import REPO_ROOT

LOCK_FILE = REPO_ROOT / "requirements.lock"
PYPROJECT = REPO_ROOT / "pyproject.toml"
APPLICATION_PACKAGES = ("asr", "serving", "monitoring")
LAZY_NATIVE_MODULES = (
    # Imported inside functions (so `import asr` stays cheap): a broken wheel would otherwise
    # surface only when its feature is first used.
    "torch",
    "transformers",
    "flashlight.lib.text.decoder",
    "flashlight.lib.text.decoder.kenlm",
    "flashlight.lib.text.dictionary",
    "onnxruntime",
    "onnx",
    "soundfile",
    "soxr",
    "scipy.signal",
    "silero_vad",
    "ctranslate2",
    "faster_whisper",
    "pocketsphinx",
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_VIA_PROJECT = "(pyproject.toml)"


@dataclass(frozen=True)
class LockEntry:
    name: str
    """Canonical (PEP 503) name."""
    version: Version
    direct: bool
    """Pinned because pyproject.toml asks for it, not only as a dependency of a dependency."""


def read_lock(path: Path) -> dict[str, LockEntry]:
    """The pins of a pip-compile lock file, by canonical name."""
    entries: dict[str, LockEntry] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            entries[current] = LockEntry(current, Version(match[2]), direct=False)
        elif current and line.lstrip().startswith("#") and _VIA_PROJECT in line:
            entries[current] = LockEntry(current, entries[current].version, direct=True)
    return entries


def project_requirements(pyproject: Path) -> list[Requirement]:
    """pyproject.toml's dependencies and every optional group's."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    specs = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        specs += group
    return [Requirement(spec) for spec in specs]


def lock_disagreements(pyproject: Path, lock: Path) -> list[str]:
    """Where the lock no longer describes pyproject.toml; regenerate it with `make lock`."""
    pins = read_lock(lock)
    wanted = project_requirements(pyproject)
    problems = []
    for requirement in wanted:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is in pyproject.toml but not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"the lock pins {requirement.name} {pin.version}, outside {requirement}")
    names = {canonicalize_name(r.name) for r in wanted}
    problems += [
        f"the lock pins {pin.name} for pyproject.toml, which no longer asks for it"
        for pin in pins.values()
        if pin.direct and pin.name not in names
    ]
    return [f"{p}: run `make lock`" for p in problems]


def install_disagreements(lock: Path) -> list[str]:
    """Installed packages whose version is not the one the lock pins, or that are missing."""
    problems = []
    for pin in read_lock(lock).values():
        try:
            installed = Version(importlib.metadata.version(pin.name))
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{pin.name} {pin.version} is in the lock but not installed")
            continue
        except InvalidVersion as e:
            problems.append(f"{pin.name} has an unreadable version: {e}")
            continue
        if installed != pin.version:
            problems.append(f"{pin.name} {installed} is installed, but the lock pins {pin.version}")
    return [f"{p}; {REINSTALL_HINT}" for p in problems]


def import_failures(modules: Iterable[str]) -> list[str]:
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 (any failure of any import is what this reports)
            problems.append(f"cannot import {module} ({installed_description(module)}): {e!r}")
    return problems


def application_modules() -> list[str]:
    """Every module of the application's packages, so that none fails on its first real use."""
    names = []
    for package in APPLICATION_PACKAGES:
        root = importlib.import_module(package)
        names.append(package)
        names += [m.name for m in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")]
    return names


def native_failures() -> list[str]:
    """Run a little of each native library: importable is not the same as working."""
    problems = []
    for name, check in _NATIVE_CHECKS.items():
        try:
            check()
        except Exception as e:  # noqa: BLE001 (a broken native library can raise anything)
            problems.append(f"{name} does not work: {e!r}")
    return problems


def _beam_search() -> None:
    import numpy as np

    from asr.decoding import BeamDecoder, BeamOptions
    from asr.model import Emissions, Vocabulary

    vocab = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, delimiter_id=1)
    path = [2, 0, 3, 1]  # "ab" then a word break
    log_probs = np.full((len(path), 4), np.log(0.01), dtype=np.float32)
    log_probs[np.arange(len(path)), path] = np.log(0.97)
    for options in (
        BeamOptions(beam_size=4),
        BeamOptions(beam_size=4, lexicon=("ab", "ba"), hotwords=("ab",)),
    ):
        text = BeamDecoder(vocab, options).decode(Emissions(log_probs, frame_s=0.02)).text
        if text != "ab":
            raise RuntimeError(f"decoded {text!r} instead of 'ab'")


def _audio_codecs() -> None:
    import numpy as np
    import soundfile as sf

    tone = (0.3 * np.sin(np.linspace(0, 2000, 16_000))).astype(np.float32)
    for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "OPUS")):
        buffer = io.BytesIO()
        sf.write(buffer, tone, 16_000, format=fmt, subtype=subtype)
        buffer.seek(0)
        decoded, _ = sf.read(buffer, dtype="float32")
        if len(decoded) != len(tone):
            raise RuntimeError(f"{fmt}/{subtype} round trip gave {len(decoded)} of {len(tone)} samples")


def _onnx_runtime() -> None:
    from asr.vad import SileroVAD

    SileroVAD.load()


def _torch() -> None:
    import torch

    if float(torch.ones(3).sum()) != 3.0:
        raise RuntimeError("torch computed 1 + 1 + 1 wrongly")


_NATIVE_CHECKS: dict[str, Callable[[], None]] = {
    "flashlight-text beam search": _beam_search,
    "libsndfile (FLAC, Ogg Opus)": _audio_codecs,
    "ONNX Runtime (Silero VAD)": _onnx_runtime,
    "torch": _torch,
}


def run_checks(lock: Path = LOCK_FILE, pyproject: Path = PYPROJECT) -> list[str]:
    """Every check in order; the lock checks are skipped where no lock sits beside the sources."""
    problems: list[str] = []
    if lock.is_file() and pyproject.is_file():
        problems += lock_disagreements(pyproject, lock)
        problems += install_disagreements(lock)
    problems += import_failures([*application_modules(), *LAZY_NATIVE_MODULES])
    if not problems:  # native checks on top of failed imports would only repeat them
        problems += native_failures()
    return problems
