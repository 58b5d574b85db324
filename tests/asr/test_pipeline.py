from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from asr.audio import AudioLimits
from asr.decoding import GreedyDecoder
from asr.errors import ClipTooLongError, TruncatedAudioError, UndecodableAudioError
from asr.model import Emissions, Vocabulary
from asr.pipeline import STAGES, Pipeline, PipelineOptions, build_pipeline
from asr.preprocess import PreprocessOptions
from asr.vad import SileroVAD, SpeechSegment, WholeClipVAD
from tests.signals import SPEECH_SAMPLE, encode, pad, silence, speech, tone

VOCAB = Vocabulary(("<pad>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz'"), blank_id=0, delimiter_id=2)


class SpellingRecognizer:
    """A fake acoustic model that 'hears' `word` in every clip, recording the clips it was given."""

    version = "fake@1"
    vocab = VOCAB

    def __init__(self, word: str = "yes") -> None:
        self.word = word
        self.batches: list[list[int]] = []

    def log_probs(self, clips: Sequence[np.ndarray]) -> list[Emissions]:
        self.batches.append([len(c) for c in clips])
        out = []
        for clip in clips:
            frames = max(len(clip) // 320, len(self.word) * 2 + 1)
            lp = np.full((frames, len(VOCAB.tokens)), np.log(0.01), np.float32)
            lp[:, 0] = np.log(0.9)
            for i, ch in enumerate(self.word):
                lp[2 * i + 1, 0] = np.log(0.01)
                lp[2 * i + 1, VOCAB.tokens.index(ch)] = np.log(0.9)
            out.append(Emissions(lp, 0.02))
        return out


class FixedVAD:
    def __init__(self, segments: list[SpeechSegment]) -> None:
        self.segments = segments

    def detect(self, samples: np.ndarray) -> list[SpeechSegment]:
        return self.segments

    def detect_many(self, clips: list[np.ndarray]) -> list[list[SpeechSegment]]:
        return [self.segments for _ in clips]


def fake_pipeline(vad: object = None, **options: object) -> tuple[Pipeline, SpellingRecognizer]:
    recognizer = SpellingRecognizer()
    vad = vad or WholeClipVAD(max_segment_s=5.0)
    return Pipeline(recognizer, GreedyDecoder(VOCAB), vad, PipelineOptions(**options)), recognizer  # type: ignore[arg-type]


def test_long_recording_is_recognized_in_bounded_segments_and_batches() -> None:
    pipeline, recognizer = fake_pipeline(batch_size=4)
    result = pipeline.transcribe(encode(tone(seconds=60.0, amplitude=0.3), 16000))
    longest = max(n for batch in recognizer.batches for n in batch)
    assert longest <= 5.0 * 16000 + 1  # memory is set by the segment, not the 60 s file
    assert max(len(b) for b in recognizer.batches) <= 4
    assert sum(len(b) for b in recognizer.batches) == 12
    assert len(result.segments) == 12
    assert result.text == " ".join(["yes"] * 12)


def test_batches_are_bounded_by_total_audio_too() -> None:
    pipeline, recognizer = fake_pipeline(batch_size=8, max_batch_audio_s=12.0)
    pipeline.transcribe(encode(tone(seconds=60.0, amplitude=0.3), 16000))
    assert max(len(b) * max(b) for b in recognizer.batches) <= 12.0 * 16000 + 2  # padded size
    assert [len(b) for b in recognizer.batches] == [2] * 6  # two 5 s windows fit in 12 s


def test_times_are_on_the_input_timeline() -> None:
    # 1 s of leading silence is trimmed (keeping 150 ms); the VAD then reports speech at 0.5 s of
    # the trimmed clip, which is 0.85 s + 0.5 s = 1.35 s into the input.
    vad = FixedVAD([SpeechSegment(0.5, 1.5)])
    pipeline, _ = fake_pipeline(vad=vad)
    result = pipeline.transcribe(encode(pad(tone(seconds=2.0), 1.0, 0.0), 16000))
    segment = result.segments[0]
    assert segment.start_s == pytest.approx(1.35, abs=0.02)
    assert segment.end_s == pytest.approx(2.35, abs=0.02)
    assert segment.words[0].start_s == pytest.approx(1.35 + 0.02, abs=0.02)


def test_all_zero_audio_is_missing_audio_with_no_speech() -> None:
    pipeline, recognizer = fake_pipeline()
    result = pipeline.transcribe(encode(silence(2.0), 16000))
    assert result.text == ""
    assert result.no_speech and result.missing_audio
    assert result.confidence == 0.0
    assert recognizer.batches == []  # the model is not even called


def test_silence_with_noise_floor_gives_no_speech_but_not_missing_audio() -> None:
    rng = np.random.default_rng(0)
    hiss = (1e-3 * rng.standard_normal(32000)).astype(np.float32)
    recognizer = SpellingRecognizer()
    pipeline = Pipeline(recognizer, GreedyDecoder(VOCAB), SileroVAD.load())
    result = pipeline.transcribe(encode(hiss, 16000))
    assert result.no_speech and not result.missing_audio
    assert result.text == ""


def test_every_stage_is_timed_and_stats_are_reported() -> None:
    pipeline, _ = fake_pipeline()
    result = pipeline.transcribe(encode(pad(tone(seconds=1.0), 0.5, 0.5), 16000))
    assert set(result.timings_s) == set(STAGES)
    assert all(t >= 0 for t in result.timings_s.values())
    assert result.stats.leading_silence_ms == pytest.approx(500, abs=20)
    assert result.duration_s == pytest.approx(2.0)
    assert result.model_version == "fake@1"


def test_audio_errors_propagate_with_their_type() -> None:
    pipeline, _ = fake_pipeline(limits=AudioLimits(max_clip_s=1.0))
    with pytest.raises(ClipTooLongError):
        pipeline.transcribe(encode(tone(seconds=2.0), 16000))
    data = encode(tone(seconds=2.0), 16000, "FLAC")
    pipeline, _ = fake_pipeline()
    with pytest.raises(TruncatedAudioError):
        pipeline.transcribe(data[: len(data) // 2])


def test_real_pipeline_on_real_speech_with_the_tiny_model(tiny_model_dir: Path) -> None:
    pipeline = build_pipeline(tiny_model_dir, device="cpu")
    result = pipeline.transcribe(SPEECH_SAMPLE)
    samples, rate = speech()
    assert result.duration_s == pytest.approx(len(samples) / rate, abs=0.01)
    assert result.segments, "the VAD found no speech in a real sentence"
    assert not result.no_speech
    assert 0.0 <= result.confidence <= 1.0
    assert result.model_version.startswith("tiny@")
    # A random model spells nonsense, but in the model's alphabet only.
    assert set(result.text) <= set("abcdefghijklmnopqrstuvwxyz' ")


def test_real_pipeline_without_vad_and_with_beam(tiny_model_dir: Path) -> None:
    from asr.decoding import BeamOptions

    pipeline = build_pipeline(tiny_model_dir, device="cpu", use_vad=False, beam=BeamOptions(beam_size=4))
    result = pipeline.transcribe(SPEECH_SAMPLE)
    assert len(result.segments) <= 1
    assert result.stats.duration_s > 3.0


def test_options_validate() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        PipelineOptions(batch_size=0)
    with pytest.raises(ValueError, match="max_batch_audio_s"):
        PipelineOptions(max_batch_audio_s=0)
    assert PipelineOptions(preprocess=PreprocessOptions(trim=False)).preprocess.trim is False


def test_transcribe_many_shares_model_batches_and_keeps_each_inputs_result_or_error() -> None:
    pipeline, recognizer = fake_pipeline(batch_size=8)
    clips = [
        encode(tone(seconds=1.0, amplitude=0.3), 16000),
        b"not audio",
        encode(tone(seconds=2.0, rate=8000, amplitude=0.3), 8000),
        encode(silence(1.0), 16000),
    ]
    results = pipeline.transcribe_many(clips)
    assert recognizer.batches == [[16000, 32000]]  # both speech clips in one model call
    first, bad, second, muted = results
    assert not isinstance(first, Exception) and first.text == "yes" and first.source_sample_rate_hz == 16000
    assert isinstance(bad, UndecodableAudioError)
    assert not isinstance(second, Exception) and second.source_sample_rate_hz == 8000
    assert not isinstance(muted, Exception) and muted.no_speech and muted.missing_audio
    assert first.timings_s["asr"] == second.timings_s["asr"]  # each waited for the shared call
