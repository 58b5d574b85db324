import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from asr.errors import ModelLoadError
from asr.model import MODEL_SHAPES, Recognizer, create_model_dir, resolve_device
from tests.signals import noise, tone


def make_base960h_like(directory: Path) -> Path:
    """A tiny checkpoint laid out like facebook/wav2vec2-base-960h: group-norm feature encoder,
    no attention mask, upper-case letters, <s>/</s> specials."""
    letters = list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *letters]
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(directory / "vocab.json"), word_delimiter_token="|", do_lower_case=False
    )
    features = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
    config = Wav2Vec2Config(
        vocab_size=len(tokens), pad_token_id=0, feat_extract_norm="group", do_stable_layer_norm=False,
        **MODEL_SHAPES["tiny"],
    )  # fmt: skip
    torch.manual_seed(1)
    Wav2Vec2ForCTC(config).save_pretrained(directory)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def test_loads_a_created_checkpoint(tiny_model_dir: Path) -> None:
    recognizer = Recognizer.from_pretrained(tiny_model_dir, device="cpu")
    assert recognizer.device == "cpu"
    assert recognizer.vocab.tokens[recognizer.vocab.blank_id] == "<pad>"
    assert recognizer.vocab.tokens[recognizer.vocab.delimiter_id] == "|"
    assert recognizer.frame_s == pytest.approx(0.02)
    assert recognizer.version.startswith("tiny@")


def test_log_probs_are_normalized_and_trimmed_per_clip(tiny_model_dir: Path) -> None:
    recognizer = Recognizer.from_pretrained(tiny_model_dir, device="cpu")
    clips = [tone(seconds=2.0), noise(seconds=0.5)]
    out = recognizer.log_probs(clips)
    assert [e.log_probs.shape[0] for e in out] == [100, 25]  # 20 ms frames
    for e in out:
        assert e.log_probs.dtype == np.float32
        np.testing.assert_allclose(np.exp(e.log_probs).sum(axis=1), 1.0, rtol=1e-4)
    assert recognizer.log_probs([]) == []


def test_batching_with_padding_matches_single_clips(tiny_model_dir: Path) -> None:
    recognizer = Recognizer.from_pretrained(tiny_model_dir, device="cpu")
    short, long = noise(0.7, seed=3), tone(seconds=1.6)
    batched = recognizer.log_probs([short, long])
    alone = recognizer.log_probs([short])[0]
    np.testing.assert_allclose(batched[0].log_probs, alone.log_probs, atol=1e-4)


def test_a_clip_shorter_than_one_frames_window_gives_one_frame(tiny_model_dir: Path) -> None:
    recognizer = Recognizer.from_pretrained(tiny_model_dir, device="cpu")
    assert recognizer.min_samples == 165  # kernels 10, 8, 4 at strides 5, 8, 8
    tiny = noise(0.005, seed=4)  # 80 samples: alone, the convolutions would have nothing to read
    alone = recognizer.log_probs([tiny])[0]
    batched = recognizer.log_probs([tiny, tone(seconds=1.0)])
    assert alone.log_probs.shape[0] == batched[0].log_probs.shape[0] == 1  # not a padded batch's tail
    np.testing.assert_allclose(batched[0].log_probs, alone.log_probs, atol=1e-4)
    assert batched[1].log_probs.shape[0] == 50


def test_base960h_layout_loads_and_spells_case_insensitively(tmp_path: Path) -> None:
    recognizer = Recognizer.from_pretrained(make_base960h_like(tmp_path / "b960"), device="cpu")
    assert recognizer.vocab.token_for_char("e") == "E"
    assert recognizer.vocab.token_for_char(" ") == "|"
    assert recognizer.vocab.token_for_char("é") is None
    assert recognizer.log_probs([tone()])[0].log_probs.shape == (50, 32)


def test_created_checkpoint_is_standard_hugging_face(tiny_model_dir: Path) -> None:
    model = Wav2Vec2ForCTC.from_pretrained(tiny_model_dir)
    assert model.config.feat_extract_norm == "layer"
    processor = Wav2Vec2Processor.from_pretrained(tiny_model_dir)
    assert processor.tokenizer.pad_token == "<pad>"


def test_missing_or_broken_model_folders(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        Recognizer.from_pretrained(tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        Recognizer.from_pretrained(broken)


def test_unknown_shape_and_unavailable_cuda(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model shape"):
        create_model_dir(tmp_path, shape="huge")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto") in ("cpu", "cuda")


def test_model_version_tells_fine_tuned_weights_of_the_same_shape_apart(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from asr.model import model_version

    copy = shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    assert model_version(copy) == model_version(tiny_model_dir)  # same folder name, same bytes
    weights = copy / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3  # "fine-tuned": same shapes, same file size
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == (tiny_model_dir / "model.safetensors").stat().st_size
    assert model_version(copy) != model_version(tiny_model_dir)
