"""The Whisper-front-end CTC family: its front end against Whisper's own (faster-whisper's log-mel,
CTranslate2's encoder, Whisper tiny.en's real weights), padding that changes nothing, and a tiny
random model of the class saved, loaded, transcribed and trained like any checkpoint."""

import json
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from asr.audio import load_audio
from asr.decoding import GreedyDecoder
from asr.errors import DataError
from asr.model import Recognizer, create_model_dir, load_ctc_model
from asr.pipeline import Pipeline
from asr.training import DataSource, TrainConfig, train
from asr.vad import SileroVAD
from asr.whisper_ctc import (
    WhisperCTCConfig,
    WhisperCTCForCTC,
    encoder_frames,
    log_mel,
    register,
    sinusoids,
    spec_augment,
)
from asr.whisper_start import from_whisper
from asr.whisper_weights import WhisperEncoder, read_ctranslate2, whisper_weights_dir
from tests.signals import SAMPLES_DIR, SPEECH_SAMPLE, noise, tone


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return read_ctranslate2(whisper_weights_dir() / "model.bin")


@pytest.fixture(scope="module")
def whisper_model(weights: dict[str, np.ndarray]) -> Any:
    return from_whisper(weights, vocab_size=30).eval()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_model_dir(tmp_path_factory.mktemp("models") / "whisper-tiny", shape="whisper-tiny", seed=0)


def _generated_clip() -> np.ndarray:
    """1.37 s: a tone glide over noise, an odd length so the last frame is a partial hop."""
    return (
        tone(300.0, 1.37) * np.linspace(0.2, 1.0, 21920, dtype=np.float32) + noise(1.37, amplitude=0.05)
    ).astype(np.float32)


def _ours(samples: np.ndarray) -> np.ndarray:
    return log_mel(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))[0].numpy()


@pytest.mark.parametrize("source", ["generated", "speech"])
def test_log_mel_is_whispers(source: str) -> None:
    samples = _generated_clip() if source == "generated" else load_audio(SPEECH_SAMPLE).samples
    # faster-whisper pads 160 zeros by default (one more frame); unpadded it is openai/whisper's.
    expected = FeatureExtractor(feature_size=80)(samples, padding=0)
    ours = _ours(samples)
    assert ours.shape == expected.shape == (80, len(samples) // 160)
    assert np.abs(ours - expected).max() < 1e-4


def test_positions_are_whispers_sliced_to_the_clip(weights: dict[str, np.ndarray]) -> None:
    table = weights["encoder/position_encodings/encodings"]
    assert np.abs(sinusoids(1500, 384).numpy() - table).max() < 1e-3  # the file stores fp16
    short = _generated_clip()
    frames = int(encoder_frames(torch.tensor(len(short))))
    assert frames == 69  # 137 mel frames, halved by the strided convolution: no 30 s padding
    front = from_whisper(weights, 30).front_end.eval()
    with torch.no_grad():
        embedded = front(torch.from_numpy(short)[None], torch.tensor([len(short)]))
    assert embedded.shape == (1, frames, 384)


def test_convolutions_and_layers_compute_whisper(weights: dict[str, np.ndarray], whisper_model: Any) -> None:
    samples = load_audio(SPEECH_SAMPLE).samples
    mel = torch.from_numpy(FeatureExtractor(feature_size=80)(samples, padding=0)[None])
    reference = WhisperEncoder(weights)
    with torch.no_grad():
        embedded = whisper_model.front_end(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))
        assert torch.allclose(embedded, reference.embed(mel), atol=1e-3)
        hidden = whisper_model(torch.from_numpy(samples)[None], output_hidden_states=True).hidden_states[-1]
    ct2 = ctranslate2.models.Whisper(str(whisper_weights_dir()), device="cpu", compute_type="float32")
    expected = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel.numpy())))[0]
    assert hidden.shape[1] == expected.shape[0] == (len(samples) // 160 + 1) // 2
    assert np.abs(hidden[0].numpy() - expected).mean() < 1e-3
    assert np.abs(hidden[0].numpy() - expected).max() < 2e-2


def test_a_padded_batch_gives_each_clip_what_it_gets_alone(whisper_model: Any) -> None:
    speech = load_audio(SPEECH_SAMPLE).samples
    clips = [speech, speech[:19_000], _generated_clip()]
    width = max(len(c) for c in clips)
    batch = torch.zeros(len(clips), width)
    mask = torch.zeros(len(clips), width, dtype=torch.long)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = torch.from_numpy(clip)
        mask[row, : len(clip)] = 1
    with torch.no_grad():
        together = whisper_model(batch, attention_mask=mask).logits
        for row, clip in enumerate(clips):
            alone = whisper_model(torch.from_numpy(clip)[None]).logits[0]
            assert alone.shape[0] == int(whisper_model._get_feat_extract_output_lengths(len(clip)))
            assert torch.allclose(together[row, : alone.shape[0]], alone, atol=1e-4)


def test_spec_augment_hides_time_and_frequency_spans_only_while_training() -> None:
    config = WhisperCTCConfig(
        mask_time_prob=0.3, mask_time_length=10, mask_feature_prob=0.2, mask_feature_length=8
    )
    mel = torch.ones(4, 80, 200)
    torch.manual_seed(0)
    masked = spec_augment(mel, torch.tensor([200, 200, 120, 60]), config)
    hidden_frames = (masked == 0).all(dim=1)  # (batch, frames): whole frames zeroed
    hidden_bins = (masked == 0).all(dim=2)  # (batch, bins)
    assert hidden_frames.any(dim=1).all() and hidden_bins.any(dim=1).all()
    assert hidden_frames[0].float().mean() < 0.5
    assert not hidden_frames[3, 60:].any()  # no span starts past a clip's own frames
    off = WhisperCTCConfig()
    assert torch.equal(spec_augment(mel, torch.tensor([200] * 4), off), mel)


def test_a_tiny_model_saves_loads_and_transcribes_everywhere(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, pipeline

    config = json.loads((tiny_whisper_dir / "config.json").read_text())
    assert config["model_type"] == "whisper_ctc" and config["architectures"] == ["WhisperCTCForCTC"]
    processor = json.loads((tiny_whisper_dir / "processor_config.json").read_text())
    assert processor["feature_extractor"]["do_normalize"] is False  # the model makes its own log-mel
    recognizer = Recognizer.from_pretrained(tiny_whisper_dir, "cpu")
    assert recognizer.frame_s == 0.02 and recognizer.min_samples == 1040
    pipe = Pipeline(recognizer, GreedyDecoder(recognizer.vocab), SileroVAD.load())
    result = pipe.transcribe(SAMPLES_DIR / "speech_commands_yes_022cd682.flac")
    assert isinstance(result.text, str)
    emissions = recognizer.log_probs([np.zeros(100, dtype=np.float32), load_audio(SPEECH_SAMPLE).samples])
    assert [e.log_probs.shape[0] for e in emissions] == [
        3,
        (len(load_audio(SPEECH_SAMPLE).samples) // 160 + 1) // 2,
    ]

    register()
    assert isinstance(AutoConfig.from_pretrained(tiny_whisper_dir), WhisperCTCConfig)
    assert isinstance(load_ctc_model(tiny_whisper_dir), WhisperCTCForCTC)
    asr = pipeline("automatic-speech-recognition", model=str(tiny_whisper_dir), device="cpu")
    answer: Any = asr(np.zeros(16_000, dtype=np.float32))
    assert isinstance(answer["text"], str)

    model = load_ctc_model(tiny_whisper_dir)
    model.save_pretrained(tmp_path / "again")
    again = load_ctc_model(tmp_path / "again")
    pairs = zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def _config(out: Path, init: str, data: Path, steps: int, **extra: Any) -> TrainConfig:
    return TrainConfig(
        out_dir=out, init=init, train=(DataSource(data),), dev=data, steps=steps, batch_size=2, lr=3e-3,
        warmup_steps=2, curriculum_steps=0, eval_every=10, eval_clips=2, device="cpu", seed=0, **extra,
    )  # fmt: skip


def test_the_tiny_model_trains_with_spec_augment_and_resumes(
    tiny_whisper_dir: Path, tmp_path: Path, tiny_set: Path
) -> None:
    torch.set_num_threads(2)
    run = _config(
        tmp_path / "run", str(tiny_whisper_dir), tiny_set, 30, mask_time_prob=0.05, mask_feature_prob=0.05
    )
    first = train(run, log=lambda _: None)
    losses = [r["loss"] for r in first.history]
    assert losses[-1] < 0.7 * losses[0], losses
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["model_type"] == "whisper_ctc"
    lines: list[str] = []
    resumed = train(
        _config(
            tmp_path / "run", str(tiny_whisper_dir), tiny_set, 40, mask_time_prob=0.05, mask_feature_prob=0.05
        ),
        log=lines.append,
    )
    assert "resumed at step 30" in lines and resumed.step == 40


def test_whisper_start_trains_the_head_alone_with_the_encoder_frozen(
    tmp_path: Path, tiny_set: Path, weights: dict[str, np.ndarray]
) -> None:
    """`--init whisper:` with `--freeze-layers 4`: the first stage of the recipe."""
    torch.set_num_threads(2)
    run = _config(tmp_path / "run", "whisper:", tiny_set, 4, freeze_layers=4)
    train(run, log=lambda _: None)
    start = load_ctc_model(tmp_path / "run" / "init")
    after = load_ctc_model(tmp_path / "run" / "checkpoint")
    before_state, after_state = start.state_dict(), after.state_dict()
    assert torch.equal(before_state["layers.3.fc2.weight"], after_state["layers.3.fc2.weight"])
    assert torch.equal(before_state["front_end.conv1.weight"], after_state["front_end.conv1.weight"])
    assert not torch.equal(before_state["lm_head.weight"], after_state["lm_head.weight"])
    assert torch.equal(
        after_state["layers.0.q_proj.weight"],
        torch.from_numpy(np.split(weights["encoder/layer_0/self_attention/linear_0/weight"], 3)[0]),
    )
    with pytest.raises(DataError, match="cannot freeze 5 layers"):
        train(_config(tmp_path / "other", "whisper:", tiny_set, 2, freeze_layers=5), log=lambda _: None)
