"""Settings: the only module that reads the environment.

Every knob has a default that works on a fresh clone; `VOICE_SEARCH_*` variables override them.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

from asr.model import Device

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "data" / "models" / "voice-search-small"
"""The bundled model, trained by this project (see data/README.md for its provenance)."""
DEFAULT_DOMAIN_DIR = REPO_ROOT / "data" / "domains" / "places"
"""The default domain pack: world cities and countries."""
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
"""The real recordings and texts laid beside the checkout."""


@dataclass(frozen=True)
class Settings:
    """Process-wide settings; the CLI's flags override them per command."""

    model_dir: Path = DEFAULT_MODEL_DIR
    device: Device = "auto"
    max_clip_s: float = 3600.0
    batch_size: int = 8
    log_level: str = "WARNING"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            model_dir=Path(env.get("VOICE_SEARCH_MODEL_DIR", str(defaults.model_dir))),
            device=_device(env.get("VOICE_SEARCH_DEVICE", defaults.device)),
            max_clip_s=float(env.get("VOICE_SEARCH_MAX_CLIP_S", defaults.max_clip_s)),
            batch_size=int(env.get("VOICE_SEARCH_BATCH_SIZE", defaults.batch_size)),
            log_level=env.get("VOICE_SEARCH_LOG_LEVEL", defaults.log_level),
        )


def _device(value: str) -> Device:
    if value not in get_args(Device):
        raise ValueError(f"VOICE_SEARCH_DEVICE must be one of {get_args(Device)}, not {value!r}")
    return cast(Device, value)
