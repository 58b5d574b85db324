"""The bundled default model: format, size, loaders, and that every command uses it by default."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from serving.settings import DEFAULT_MODEL_DIR
from tests.signals import SAMPLES_DIR

MAX_BUNDLED_MB = 25


@pytest.fixture(scope="module")
def model_dir() -> Path:
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.fail(f"the bundled model is missing from {DEFAULT_MODEL_DIR}")
    return DEFAULT_MODEL_DIR


def test_format_size_and_card(model_dir: Path) -> None:
    from safetensors import safe_open

    weights = model_dir / "model.safetensors"
    assert weights.stat().st_size <= MAX_BUNDLED_MB * 1024 * 1024
    with safe_open(str(weights), "pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}
    for name in ("config.json", "vocab.json", "tokenizer_config.json", "README.md"):
        assert (model_dir / name).is_file(), name
    card = (model_dir / "README.md").read_text()
    for section in ("Training data", "Recipe", "Evaluation"):
        assert section in card


def test_loads_with_plain_transformers(model_dir: Path) -> None:
    """The Whisper-front-end family, once registered, loads through transformers' Auto classes and
    its speech-recognition pipeline like any CTC checkpoint."""
    from transformers import AutoModelForCTC, pipeline

    from asr.whisper_ctc import WhisperCTCForCTC, register

    register()
    model = AutoModelForCTC.from_pretrained(model_dir)
    assert isinstance(model, WhisperCTCForCTC) and model.config.vocab_size == 30
    asr = pipeline("automatic-speech-recognition", model=str(model_dir), device="cpu")
    result: Any = asr(np.zeros(16000, dtype=np.float32))
    assert isinstance(result["text"], str)


def test_transcribe_uses_the_bundled_model_by_default(model_dir: Path) -> None:
    exe = Path(sys.executable).with_name("voice-search")
    done = subprocess.run(
        [str(exe), "transcribe", str(SAMPLES_DIR), "--format", "jsonl"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 4
    assert {r["model_version"].split("@")[0] for r in rows} == {model_dir.name}
