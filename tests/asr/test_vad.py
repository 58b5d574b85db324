import itertools
import subprocess
import sys

import numpy as np
import pytest

from asr.audio import load_audio
from asr.vad import SileroVAD, SpeechSegment, VADOptions, WholeClipVAD, split_long_segments
from tests.signals import REPO, SPEECH_SAMPLE, noise, pad, silence


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD.load()


@pytest.fixture(scope="module")
def speech_16k() -> np.ndarray:
    return load_audio(SPEECH_SAMPLE).samples


def test_finds_real_speech_between_silences(vad: SileroVAD, speech_16k: np.ndarray) -> None:
    clip = pad(speech_16k, before_s=2.0, after_s=2.0)
    segments = vad.detect(clip)
    assert segments, "speech was not detected"
    assert segments[0].start_s == pytest.approx(2.0, abs=0.5)
    assert segments[-1].end_s == pytest.approx(2.0 + len(speech_16k) / 16000, abs=0.5)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(segments))


@pytest.mark.parametrize("signal", [silence(3.0), noise(3.0, amplitude=0.005)], ids=["zeros", "noise"])
def test_no_speech_in_silence_or_steady_noise(vad: SileroVAD, signal: np.ndarray) -> None:
    assert vad.detect(signal) == []


def test_long_speech_is_cut_to_the_maximum_segment(speech_16k: np.ndarray) -> None:
    vad = SileroVAD.load(VADOptions(max_segment_s=2.0))
    long_clip = np.tile(speech_16k, 4)  # ~13 s of speech without pauses longer than the originals
    segments = vad.detect(long_clip)
    assert segments
    assert max(s.duration_s for s in segments) <= 2.0 + 1e-6


def test_split_long_segments() -> None:
    parts = split_long_segments([SpeechSegment(1.0, 26.0), SpeechSegment(30.0, 31.0)], max_segment_s=10.0)
    assert [p.duration_s for p in parts] == pytest.approx([25 / 3] * 3 + [1.0])
    assert parts[0].start_s == 1.0 and parts[2].end_s == 26.0


def test_whole_clip_vad_windows_cover_the_clip() -> None:
    segments = WholeClipVAD(max_segment_s=4.0).detect(silence(10.0))
    assert len(segments) == 3
    assert segments[0].start_s == 0.0 and segments[-1].end_s == pytest.approx(10.0)
    assert WholeClipVAD().detect(silence(0.0)) == []


def test_segment_slice() -> None:
    samples = np.arange(32000, dtype=np.float32)
    part = SpeechSegment(0.5, 1.0).slice(samples)
    assert part[0] == 8000 and len(part) == 8000


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        VADOptions(threshold=1.5)
    with pytest.raises(ValueError, match="max_segment_s"):
        VADOptions(max_segment_s=0.5)


def test_loading_silero_keeps_the_torch_thread_count() -> None:
    # silero_vad sets torch to one thread when first imported, so check in a fresh process.
    code = (
        "import torch; torch.set_num_threads(2); from asr.vad import SileroVAD; "
        "SileroVAD.load(); print(torch.get_num_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "2"
