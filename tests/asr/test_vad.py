import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr.audio import load_audio
from asr.vad import (
    WINDOW,
    SileroVAD,
    SpeechSegment,
    VADOptions,
    WholeClipVAD,
    segments_from_probabilities,
    split_long_segments,
)
from tests.signals import REPO, SAMPLES_DIR, SPEECH_SAMPLE, noise, pad, silence


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


def test_a_short_spoken_word_is_speech(vad: SileroVAD, shared_data: Path) -> None:
    """FSDD's "six" from its dev speaker: 0.22 s in all, its confident speech about 150 ms, which
    Silero's own 250 ms minimum dropped, so the query came back empty."""
    clip = load_audio(shared_data / "fsdd" / "audio" / "recordings__6_nicolas_0.flac").samples
    assert vad.probabilities(clip).max() > 0.9
    assert SileroVAD.load(VADOptions(min_speech_ms=250)).detect(clip) == []
    (segment,) = vad.detect(clip)
    assert segment.start_s == 0.0 and segment.end_s == pytest.approx(len(clip) / 16000)


def test_long_speech_is_cut_to_the_maximum_segment(speech_16k: np.ndarray) -> None:
    vad = SileroVAD.load(VADOptions(max_segment_s=2.0))
    long_clip = np.tile(speech_16k, 4)  # ~13 s of speech without pauses longer than the originals
    segments = vad.detect(long_clip)
    assert segments
    assert max(s.duration_s for s in segments) <= 2.0 + 1e-6
    assert min(s.duration_s for s in segments) > VADOptions().min_speech_ms / 1000


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


def test_agrees_with_the_silero_package_on_real_recordings(vad: SileroVAD) -> None:
    """Our numpy front end and segmenter against the package's own torch code, as the oracle."""
    import torch

    threads = torch.get_num_threads()
    from silero_vad import get_speech_timestamps, load_silero_vad

    torch.set_num_threads(threads)  # importing silero_vad sets one thread for the whole process
    reference, o = load_silero_vad(onnx=True), vad.options
    clips = [load_audio(path).samples for path in sorted(SAMPLES_DIR.glob("*.flac"))]
    clips.append(pad(np.concatenate(clips), before_s=1.0, after_s=0.5))
    for clip in clips:
        stamps = get_speech_timestamps(
            torch.from_numpy(clip),
            reference,
            threshold=o.threshold,
            min_speech_duration_ms=o.min_speech_ms,
            min_silence_duration_ms=o.min_silence_ms,
            speech_pad_ms=o.speech_pad_ms,
        )
        expected = [(s["start"] / 16000, s["end"] / 16000) for s in stamps]
        assert expected
        assert _bounds(vad.detect(clip)) == pytest.approx([t for span in expected for t in span], abs=1e-6)


def test_clips_run_as_one_batch_get_their_own_probabilities_and_segments(vad: SileroVAD) -> None:
    """The server's micro-batches: clips of different lengths side by side, each as if alone."""
    clips = [load_audio(path).samples for path in sorted(SAMPLES_DIR.glob("*.flac"))]
    clips.append(np.zeros(100, np.float32))  # shorter than one window
    batched = vad.probabilities_many(clips)
    for clip, probs in zip(clips, batched, strict=True):
        assert probs == pytest.approx(vad.probabilities(clip), abs=1e-5)
    assert vad.detect_many(clips) == [vad.detect(clip) for clip in clips]
    assert vad.detect_many([]) == []


def _bounds(segments: list[SpeechSegment]) -> list[float]:
    return [t for s in segments for t in (s.start_s, s.end_s)]


def _probabilities(*runs: tuple[float, float]) -> np.ndarray:
    """Per-window probabilities from (probability, seconds) runs."""
    return np.concatenate([np.full(round(s * 16000 / WINDOW), p, np.float32) for p, s in runs])


def test_segmenter_rules_on_known_probabilities() -> None:
    o = VADOptions(min_speech_ms=250, min_silence_ms=100, speech_pad_ms=200)
    probs = _probabilities(
        (0.0, 1.024),  # silence
        (0.9, 0.512),  # speech
        (0.4, 0.064),  # between the thresholds: neither speech nor a pause
        (0.9, 0.512),
        (0.1, 0.064),  # a pause shorter than min_silence: the same segment
        (0.9, 0.512),
        (0.0, 0.256),  # a real pause, narrower than two paddings
        (0.9, 0.128),  # too short to keep
        (0.0, 0.512),
        (0.9, 0.512),  # speech running to the end of the clip
    )
    n = len(probs) * WINDOW - 100
    segments = segments_from_probabilities(probs, n, o)
    # Kept: 1.024-2.688 s and 3.584 s to the end, each padded by 200 ms.
    assert _bounds(segments) == pytest.approx([1.024 - 0.2, 2.688 + 0.2, 3.584 - 0.2, n / 16000])


def test_neighbours_share_a_narrow_gap_instead_of_overlapping() -> None:
    probs = _probabilities((0.9, 0.512), (0.0, 0.192), (0.9, 0.512))
    first, second = segments_from_probabilities(probs, len(probs) * WINDOW, VADOptions(speech_pad_ms=200))
    assert first.start_s == 0.0
    assert first.end_s == second.start_s == pytest.approx(0.512 + 0.096)


def test_over_long_speech_is_cut_at_its_longest_pause() -> None:
    o = VADOptions(min_silence_ms=300, speech_pad_ms=0, max_segment_s=2.0)
    probs = _probabilities((0.9, 0.96), (0.0, 0.064), (0.9, 0.64), (0.0, 0.192), (0.9, 0.96))
    segments = segments_from_probabilities(probs, len(probs) * WINDOW, o)
    assert _bounds(segments) == pytest.approx([0.0, 1.664, 1.856, 2.816])


def test_no_sliver_is_cut_off_over_long_speech() -> None:
    """A pause too near an end would leave a piece shorter than min_speech_ms: cut evenly instead."""
    o = VADOptions(min_silence_ms=300, speech_pad_ms=0, max_segment_s=4.0)
    probs = _probabilities((0.9, 0.064), (0.0, 0.128), (0.9, 6.0), (0.0, 0.064), (0.9, 0.128))
    segments = segments_from_probabilities(probs, len(probs) * WINDOW, o)
    assert len(segments) == 2 and segments[0].start_s == 0.0
    assert segments[0].duration_s == pytest.approx(segments[1].duration_s)
    assert max(s.duration_s for s in segments) <= 4.0


def test_the_device_path_does_not_import_torch() -> None:
    # A phone or speaker runs VAD and the edge model without torch; check in a fresh process.
    code = (
        "import sys, numpy as np; from asr.vad import SileroVAD; "
        "SileroVAD.load().detect(np.zeros(16000, np.float32)); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "False"
