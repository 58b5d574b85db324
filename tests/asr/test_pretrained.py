"""Fine-tuning from checkpoints people bring: self-supervised only (no CTC head, no vocabulary)
and CTC over another vocabulary (upper case, `|`), each a tiny random folder saved by transformers."""

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
)

from asr.errors import ModelLoadError
from asr.model import MODEL_SHAPES, Recognizer, default_tokens
from asr.pretrained import adapt_checkpoint, speaks_our_vocabulary
from asr.training import DataSource, TrainConfig, train
from asr.training.config import lr_factor
from tests.asr.test_train import config

FOREIGN_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L",
                  "U", "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]  # fmt: skip
"""wav2vec2-base-960h's vocabulary, in its order."""


def tiny_config(**extra: Any) -> Wav2Vec2Config:
    # Group norm, no attention mask: the facebook/wav2vec2-base family's front end.
    return Wav2Vec2Config(
        **MODEL_SHAPES["tiny"], feat_extract_norm="group", do_stable_layer_norm=False, **extra
    )


@pytest.fixture
def pretrained_only(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    out = tmp_path / "wav2vec2-base-like"
    Wav2Vec2ForPreTraining(tiny_config()).save_pretrained(out)
    Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=True).save_pretrained(out)
    return out


@pytest.fixture
def foreign_ctc(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    out = tmp_path / "wav2vec2-base-960h-like"
    out.mkdir()
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(FOREIGN_TOKENS)}))
    Wav2Vec2CTCTokenizer(
        str(out / "vocab.json"), word_delimiter_token="|", do_lower_case=False
    ).save_pretrained(out)
    Wav2Vec2ForCTC(tiny_config(vocab_size=len(FOREIGN_TOKENS), pad_token_id=0)).save_pretrained(out)
    Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=True).save_pretrained(out)
    return out


def test_a_pretrained_only_checkpoint_gets_a_new_head_over_our_vocabulary(
    pretrained_only: Path, tmp_path: Path
) -> None:
    assert not speaks_our_vocabulary(pretrained_only)
    adapted = adapt_checkpoint(pretrained_only, tmp_path / "adapted")
    assert adapted.mapped_tokens == ()
    assert speaks_our_vocabulary(adapted.directory)
    source = Wav2Vec2ForPreTraining.from_pretrained(pretrained_only)
    model = Wav2Vec2ForCTC.from_pretrained(adapted.directory)
    assert model.lm_head.out_features == len(default_tokens())
    assert model.config.layerdrop == pytest.approx(0.05)
    encoder = dict(source.wav2vec2.named_parameters())
    for name, weight in model.wav2vec2.named_parameters():
        if name in encoder and "masked_spec_embed" not in name:
            assert torch.equal(weight, encoder[name]), name  # the encoder is the checkpoint's
    recognizer = Recognizer.from_pretrained(adapted.directory)
    assert recognizer.vocab.tokens == default_tokens()


def test_a_foreign_ctc_head_is_mapped_onto_our_characters(foreign_ctc: Path, tmp_path: Path) -> None:
    adapted = adapt_checkpoint(foreign_ctc, tmp_path / "adapted")
    ours = default_tokens()
    assert set(adapted.mapped_tokens) == set(ours)  # every one of ours has a counterpart there
    old = Wav2Vec2ForCTC.from_pretrained(foreign_ctc).lm_head
    new = Wav2Vec2ForCTC.from_pretrained(adapted.directory).lm_head
    for ours_token, theirs in (("a", "A"), ("z", "Z"), ("|", "|"), ("<pad>", "<pad>"), ("'", "'")):
        row, old_row = ours.index(ours_token), FOREIGN_TOKENS.index(theirs)
        assert torch.equal(new.weight[row], old.weight[old_row]), ours_token
        assert new.bias[row] == old.bias[old_row]


def test_training_from_each_kind_runs_with_the_recipe(
    pretrained_only: Path,
    foreign_ctc: Path,
    tmp_path: Path,
    tiny_set: Path,
) -> None:
    for init in (pretrained_only, foreign_ctc):
        out = tmp_path / f"run-{init.name}"
        lines: list[str] = []
        settings = TrainConfig(
            out_dir=out, init=str(init), train=(DataSource(tiny_set),), dev=tiny_set, steps=6, batch_size=2,
            lr=1e-3, eval_every=3, eval_clips=2, device="cpu",
        )  # fmt: skip
        state = train(settings, log=lines.append)
        assert state.step == 6
        assert any("feature encoder frozen" in line for line in lines)
        saved = Wav2Vec2ForCTC.from_pretrained(out / "checkpoint")
        start = Wav2Vec2ForCTC.from_pretrained(out / "init")
        conv = "feature_extractor.conv_layers.0.conv.weight"
        assert torch.equal(
            dict(saved.wav2vec2.named_parameters())[conv], dict(start.wav2vec2.named_parameters())[conv]
        )
        assert not torch.equal(saved.lm_head.weight, start.lm_head.weight)  # the head trained


def test_tri_stage_schedule_warms_holds_and_decays(tmp_path: Path, tiny_set: Path) -> None:
    settings = TrainConfig(out_dir=tmp_path, init="scratch:tiny", train=(DataSource(tiny_set),), steps=100,
                           schedule="tri-stage", final_lr_ratio=0.05)  # fmt: skip
    factors = [lr_factor(step, settings) for step in range(100)]
    assert factors[0] == pytest.approx(0.05)
    assert factors[10:50] == [1.0] * 40
    assert factors[99] == pytest.approx(0.05, rel=0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[50:]))
    linear = [lr_factor(step, config(tmp_path, tiny_set, 100)) for step in range(100)]
    assert linear != factors  # "auto" on our own vocabulary is linear


def test_with_a_deadline_the_tri_stage_decay_ends_at_the_clock(tmp_path: Path, tiny_set: Path) -> None:
    settings = TrainConfig(out_dir=tmp_path, init="scratch:tiny", train=(DataSource(tiny_set),), steps=10_000,
                           schedule="tri-stage", final_lr_ratio=0.05, max_minutes=8)  # fmt: skip
    assert lr_factor(2_000, settings, clock_share=0.3) == 1.0  # held: neither steps nor clock past 50%
    assert lr_factor(2_000, settings, clock_share=0.75) == pytest.approx(0.05**0.5)
    assert lr_factor(2_000, settings, clock_share=1.0) == pytest.approx(0.05)
    assert lr_factor(500, settings, clock_share=0.9) == pytest.approx(0.525)  # the warm-up goes by steps


def test_with_a_deadline_the_linear_decay_ends_at_the_clock(tmp_path: Path, tiny_set: Path) -> None:
    settings = replace(config(tmp_path, tiny_set, 10_000), warmup_steps=10, final_lr_ratio=0.1, max_minutes=8)
    assert lr_factor(500, settings) > 0.9  # by steps alone, hardly decayed
    assert lr_factor(500, settings, clock_share=0.5) == pytest.approx(0.55)
    assert lr_factor(500, settings, clock_share=1.0) == pytest.approx(0.1)
    assert lr_factor(5, settings, clock_share=0.5) == pytest.approx(0.6)  # warm-up stays by steps


def test_a_checkpoint_of_another_kind_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError):
        adapt_checkpoint(tmp_path, tmp_path / "out")
