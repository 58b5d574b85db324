"""Fixtures of the recognizer's tests."""

import json
import shutil
from pathlib import Path

import pytest

from tests.signals import SAMPLES_DIR


@pytest.fixture
def tiny_set(tmp_path: Path) -> Path:
    """Two real clips with their transcripts: a training manifest in `tmp_path`."""
    rows = []
    for name, text in (("fsdd_7_george_0.flac", "seven"), ("speech_commands_yes_022cd682.flac", "yes")):
        shutil.copy(SAMPLES_DIR / name, tmp_path / name)
        rows.append({"audio": name, "text": text, "duration_s": 1.0})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path
