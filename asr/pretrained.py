"""Start training from any wav2vec2 checkpoint a user brings, the way hub users fine-tune.

Two kinds need work before they train on our vocabulary:
- a self-supervised checkpoint (facebook/wav2vec2-base, XLS-R): an encoder and no CTC head;
- a CTC checkpoint over another vocabulary (wav2vec2-base-960h spells in upper case, `|`
  between words).
`adapt_checkpoint` writes a CTC folder over our vocabulary: the encoder as it was, a new CTC
head, and for a CTC checkpoint the head's rows copied wherever its characters match ours
(case-insensitively; its pad, delimiter and unknown tokens map to ours). LayerDrop is switched
on (unless the checkpoint was trained with less); the caller freezes the feature encoder and
uses the tri-stage schedule (the fine-tuning recipe of the wav2vec 2.0 paper).
"""

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.dependencies import require
from asr.errors import ModelLoadError
from asr.model import default_tokens, write_processor

logger = logging.getLogger(__name__)

FINE_TUNING_LAYERDROP = 0.05
"""The wav2vec 2.0 paper's fine-tuning LayerDrop for Base models (0.05-0.1)."""


@dataclass(frozen=True)
class AdaptedCheckpoint:
    directory: Path
    mapped_tokens: tuple[str, ...]
    """Our tokens whose CTC head row came from the source checkpoint (empty: a new head)."""
    layerdrop: float


def speaks_our_vocabulary(directory: Path) -> bool:
    """True when the folder is a CTC checkpoint whose tokenizer is exactly our vocabulary."""
    vocab = directory / "vocab.json"
    if not vocab.is_file():
        return False
    try:
        ids = json.loads(vocab.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(ids == {t: i for i, t in enumerate(default_tokens())})


def adapt_checkpoint(source: Path, out: Path, seed: int = 0) -> AdaptedCheckpoint:
    """Write `out`: `source`'s encoder with a CTC head over our vocabulary (see the module doc)."""
    torch = require("torch", "fine-tuning a pretrained checkpoint")
    transformers = require("transformers", "fine-tuning a pretrained checkpoint")
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read a model config from {source}: {e}") from e
    if config.model_type != "wav2vec2":
        raise ModelLoadError(f"{source} is a {config.model_type} checkpoint, not a wav2vec2 one")
    old_head = _source_head(source, config, transformers)
    tokens = default_tokens()
    config.update(
        {
            "vocab_size": len(tokens),
            "pad_token_id": 0,
            "ctc_loss_reduction": "mean",
            "ctc_zero_infinity": True,
            # A checkpoint trained with less (the Whisper transplant: none) keeps its own.
            "layerdrop": min(config.layerdrop, FINE_TUNING_LAYERDROP),
            "architectures": ["Wav2Vec2ForCTC"],
        }
    )
    torch.manual_seed(seed)
    try:
        model = transformers.Wav2Vec2ForCTC.from_pretrained(
            source, config=config, ignore_mismatched_sizes=True, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load the encoder of {source}: {e}") from e
    mapped = _copy_matching_rows(model, old_head, tokens, torch) if old_head else ()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    features = source / "preprocessor_config.json"
    write_processor(out, features if features.is_file() else None, config.feat_extract_norm == "layer")
    logger.info("adapted %s: new CTC head over %d tokens, %d rows mapped", source, len(tokens), len(mapped))
    return AdaptedCheckpoint(out, mapped, config.layerdrop)


@dataclass(frozen=True)
class _Head:
    weight: Any
    bias: Any
    ids: dict[str, int]
    """The source vocabulary, its special tokens renamed to ours."""


def _source_head(source: Path, config: Any, transformers: Any) -> _Head | None:
    """A CTC checkpoint's head and vocabulary; None for a self-supervised one."""
    if "Wav2Vec2ForCTC" not in (config.architectures or []) or not (source / "vocab.json").is_file():
        return None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = transformers.Wav2Vec2ForCTC.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the CTC head of {source}: {e}") from e
    ours = default_tokens()
    renamed = {
        tokenizer.pad_token: ours[0],
        tokenizer.unk_token: ours[1],
        getattr(tokenizer, "word_delimiter_token", None): ours[2],
    }
    ids = {renamed.get(token, token): i for token, i in tokenizer.get_vocab().items()}
    return _Head(model.lm_head.weight.detach().clone(), model.lm_head.bias.detach().clone(), ids)


def _copy_matching_rows(model: Any, head: _Head, tokens: tuple[str, ...], torch: Any) -> tuple[str, ...]:
    mapped = []
    with torch.no_grad():
        for row, token in enumerate(tokens):
            source_row = head.ids.get(token, head.ids.get(token.upper()))
            if source_row is not None and source_row < head.weight.shape[0]:
                model.lm_head.weight[row] = head.weight[source_row]
                model.lm_head.bias[row] = head.bias[source_row]
                mapped.append(token)
    return tuple(mapped)
