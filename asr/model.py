"""The acoustic model: a Hugging Face wav2vec2-style CTC checkpoint loaded from a local folder.

`Recognizer` turns batches of 16 kHz clips into per-frame log-probabilities over the model's
vocabulary. It knows nothing of decoding or search; `decoding.py` turns its output into text.
Any local folder that `AutoModelForCTC` and `AutoProcessor` load works (our bundled model,
facebook/wav2vec2-base-960h, ...); nothing is fetched from a hub.
"""

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from asr.audio import SAMPLE_RATE_HZ, Samples
from asr.dependencies import require
from asr.errors import ModelError, ModelLoadError
from asr.frames import receptive_field

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda", "auto"]
LogProbs = npt.NDArray[np.float32]

WORD_DELIMITER = "|"
"""wav2vec2's word separator token; decoders treat it as the space between words."""
BLANK_TOKEN = "<pad>"
"""In wav2vec2 vocabularies the CTC blank is the pad token."""
DEFAULT_ALPHABET = tuple("abcdefghijklmnopqrstuvwxyz'")
"""Letters of models this project creates: the output alphabet of `asr.text.normalize_text`."""


@dataclass(frozen=True)
class Vocabulary:
    """The model's output tokens, indexed by id, with the CTC blank and word delimiter."""

    tokens: tuple[str, ...]
    blank_id: int
    delimiter_id: int

    @classmethod
    def from_ids(cls, ids: dict[str, int], blank: str | None, delimiter: str | None) -> "Vocabulary":
        """From a token -> id map (a tokenizer's vocabulary) and the blank and delimiter tokens."""
        if blank is None or delimiter is None or blank not in ids or delimiter not in ids:
            raise ModelLoadError("the tokenizer needs a pad token (the CTC blank) and a word delimiter")
        tokens = [""] * (max(ids.values()) + 1)
        for token, index in ids.items():
            tokens[index] = token
        return cls(tuple(tokens), blank_id=ids[blank], delimiter_id=ids[delimiter])

    def token_for_char(self, char: str) -> str | None:
        """The model token spelling `char` (" " -> the delimiter); None if the model lacks it.

        Checkpoints differ in case (wav2vec2-base-960h spells in capitals), so both are tried.
        """
        if char == " ":
            return self.tokens[self.delimiter_id]
        for candidate in (char, char.upper(), char.lower()):
            if candidate in self._index:
                return candidate
        return None

    @cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def index(self, token: str) -> int:
        return self._index[token]

    def spell(self, text: str) -> list[str] | None:
        """The tokens spelling `text` (spaces -> the delimiter); None if a character is missing."""
        tokens = [self.token_for_char(c) for c in text]
        return None if any(t is None for t in tokens) else [t for t in tokens if t is not None]


@dataclass(frozen=True)
class Emissions:
    """One clip's CTC output: `log_probs` is float32 (frames, vocabulary), one row per `frame_s`."""

    log_probs: LogProbs
    frame_s: float


class AcousticModel(Protocol):
    """What the pipeline needs from a recognizer; `Recognizer` is the real one."""

    vocab: Vocabulary
    version: str

    def log_probs(self, clips: Sequence[Samples]) -> list[Emissions]: ...


class Recognizer:
    """A CTC acoustic model on one device. Not thread-safe: serialize calls or hold one per worker."""

    def __init__(
        self, model: Any, feature_extractor: Any, vocab: Vocabulary, device: str, version: str
    ) -> None:
        self._model = model
        self._features = feature_extractor
        self.vocab = vocab
        self.device = device
        self.version = version
        strides = getattr(model.config, "conv_stride", (5, 2, 2, 2, 2, 2, 2))
        self.frame_s = float(np.prod(strides)) / SAMPLE_RATE_HZ
        self.min_samples = receptive_field(
            getattr(model.config, "conv_kernel", (10, 3, 3, 3, 3, 2, 2)), strides
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: Device = "auto") -> "Recognizer":
        """Load a local HF CTC checkpoint folder; half precision on CUDA, float32 on CPU."""
        torch = require("torch", "loading the recognizer")
        transformers = require("transformers", "loading the recognizer")

        path = Path(directory)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"not a model folder (no config.json): {path}")
        resolved = resolve_device(device)
        dtype = torch.float16 if resolved == "cuda" else torch.float32
        try:
            model = load_ctc_model(path, dtype)  # first: it registers our families with the Auto classes
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            features = transformers.AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"cannot load a CTC model from {path}: {e}") from e
        model.to(resolved).eval()
        vocab = vocabulary_from_tokenizer(tokenizer)
        logger.info("loaded %s on %s (%d tokens)", path, resolved, len(vocab.tokens))
        return cls(model, features, vocab, resolved, model_version(path))

    def log_probs(self, clips: Sequence[Samples]) -> list[Emissions]:
        """Per-frame log-probabilities for a batch of float32 mono 16 kHz clips, padding removed."""
        import torch

        if not clips:
            return []
        with torch.inference_mode():
            return self._log_probs(clips)

    def _log_probs(self, clips: Sequence[Samples]) -> list[Emissions]:
        import torch

        # A clip shorter than one frame's window gives the convolutions nothing to read (or, in a
        # padded batch, a negative length): pad it with silence to one frame.
        inputs = self._features(
            [at_least(np.asarray(c, dtype=np.float32), self.min_samples) for c in clips],
            sampling_rate=SAMPLE_RATE_HZ,
            padding=True,
            return_tensors="pt",
        )
        values = inputs["input_values"].to(self.device, dtype=self._model.dtype)
        # Models built with group norm (e.g. wav2vec2-base) were trained without an attention mask
        # and their feature extractor says so; passing one there changes the outputs.
        mask = inputs.get("attention_mask")
        try:
            logits = self._model(values, attention_mask=None if mask is None else mask.to(self.device)).logits
        except RuntimeError as e:
            raise ModelError(f"the model failed on a batch of {len(clips)} clips: {e}") from e
        log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        lengths = self._model._get_feat_extract_output_lengths(
            torch.tensor([max(len(c), self.min_samples) for c in clips])
        )
        return [
            Emissions(log_probs=lp[: int(n)], frame_s=self.frame_s)
            for lp, n in zip(log_probs, lengths, strict=True)
        ]


def load_ctc_model(path: Path, dtype: Any = None) -> Any:
    """`AutoModelForCTC.from_pretrained` on a local folder, with this project's own model families
    registered: wav2vec2 (transformers' own) and the Whisper-front-end CTC model."""
    torch = require("torch", "loading a CTC model")
    transformers = require("transformers", "loading a CTC model")
    from asr import whisper_ctc

    whisper_ctc.register()
    return transformers.AutoModelForCTC.from_pretrained(
        path, local_files_only=True, dtype=torch.float32 if dtype is None else dtype
    )


def at_least(samples: Samples, length: int) -> Samples:
    """`samples`, padded with silence to `length` when shorter (a clip shorter than one frame's window)."""
    return samples if len(samples) >= length else np.pad(samples, (0, length - len(samples)))


def resolve_device(device: Device) -> str:
    """ "auto" picks CUDA when present; asking for CUDA without it is a load error, not a fallback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but no CUDA device is available")
    return device


def vocabulary_from_tokenizer(tokenizer: Any) -> Vocabulary:
    """Build the id-ordered vocabulary; the blank is the tokenizer's pad token."""
    delimiter = getattr(tokenizer, "word_delimiter_token", WORD_DELIMITER) or WORD_DELIMITER
    return Vocabulary.from_ids(tokenizer.get_vocab(), tokenizer.pad_token, delimiter)


FULL_HASH_MAX_BYTES = 256 * 2**20
"""Weights up to this size are hashed whole (the bundled 11 MB model: ~20 ms); larger ones by
size, head and tail, to keep start-up fast."""
PARTIAL_HASH_BYTES = 2**20


def model_version(directory: Path) -> str:
    """A stable id for a checkpoint: folder name plus a hash of its config and weights.

    The weights' bytes count, not only their sizes: a model fine-tuned from another has the same
    shape, config and file sizes, and must still get its own id (events and the registry tell
    models apart by it).
    """
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    weights_files = [*directory.glob("*.safetensors"), *directory.glob("*.bin"), *directory.glob("*.onnx")]
    for weights in sorted(weights_files):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as f:
            if size <= FULL_HASH_MAX_BYTES:
                for block in iter(lambda: f.read(PARTIAL_HASH_BYTES), b""):
                    digest.update(block)
            else:
                digest.update(f.read(PARTIAL_HASH_BYTES))
                f.seek(-PARTIAL_HASH_BYTES, 2)
                digest.update(f.read(PARTIAL_HASH_BYTES))
    return f"{directory.resolve().name}@{digest.hexdigest()[:10]}"


# Named shapes for models built from scratch, all with 20 ms frames. "tiny" exists for tests
# (random, ~36k parameters). "small" is the bundled model's shape (4.55M parameters; DESIGN.md's
# pilot shape). "small-fast" moves the early conv layers to 128 channels: the feature encoder's
# first layers run at 3.2 kHz and dominate CPU time, and in a one-off probe here (2 threads) its
# forward pass on 3 s took 27 ms vs 54 ms, and a training step (8 x 2 s) 0.8 s vs 2.0 s.
# "compact" reaches the same 20 ms hop in four conv layers with larger strides (5, 4, 4, 4), so
# almost no work runs at the high frame rates, and spends the savings on six transformer layers;
# no layerdrop, which only slows a from-scratch start. Probe (2 threads, 16 x 2 s training step,
# 3 s forward): small 3.5 s / 63 ms, small-fast 1.6 s / 36 ms, compact 0.8 s / 30 ms.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(256,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
    ),
    "compact": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(64, 128, 192, 256),
        conv_kernel=(10, 8, 4, 4),
        conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        layerdrop=0.0,
    ),
    # For a lent GPU (scripts/train_gpu.py): 11.4M parameters, 22.8 MB in fp16, within the
    # bundled model's 25 MB; the compact front end (stride product 320: 20 ms frames).
    "medium": dict(
        hidden_size=320,
        num_hidden_layers=8,
        num_attention_heads=5,
        intermediate_size=1280,
        conv_dim=(128, 256, 320, 320),
        conv_kernel=(10, 8, 4, 4),
        conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        layerdrop=0.0,
    ),
    "small-fast": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(128, 128, 128, 128, 128, 256, 256),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
    ),
}


def default_tokens() -> tuple[str, ...]:
    """Our vocabulary, in id order: the CTC blank (also the pad), unknown, word delimiter, letters."""
    return (BLANK_TOKEN, "<unk>", WORD_DELIMITER, *DEFAULT_ALPHABET)


def write_processor(
    out: Path, feature_config: Path | None = None, attention_mask: bool = True, raw_samples: bool = False
) -> None:
    """Write our tokenizer and a feature extractor (`feature_config`'s, or the default) into `out`.
    With `raw_samples` the extractor passes samples as they are (a model that makes its own log-mel)."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    vocab_file = out / "vocab.json"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(default_tokens())}))
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_file),
        unk_token="<unk>",
        pad_token=BLANK_TOKEN,
        word_delimiter_token=WORD_DELIMITER,
        bos_token=None,
        eos_token=None,
        do_lower_case=False,
    )
    if feature_config is not None:
        features = Wav2Vec2FeatureExtractor.from_json_file(str(feature_config))
    else:
        features = default_feature_extractor(attention_mask, normalize=not raw_samples)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)


def default_feature_extractor(attention_mask: bool = True, normalize: bool = True) -> Any:
    """Raw 16 kHz samples, each clip normalized to zero mean and unit variance (unless not `normalize`)."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE_HZ,
        padding_value=0.0,
        do_normalize=normalize,
        return_attention_mask=attention_mask,
    )


WHISPER_SHAPES: dict[str, dict[str, Any]] = {
    # The Whisper-front-end family at test size (random, ~60k parameters above the log-mel).
    "whisper-tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}
"""Named shapes of the Whisper-front-end family built from random weights; its real start is
Whisper tiny.en's own (`voice-search train --init whisper:`)."""


def create_model_dir(directory: str | Path, shape: str = "small", seed: int = 0) -> Path:
    """Write a randomly initialised CTC checkpoint (model, tokenizer, feature extractor).

    A wav2vec2 shape uses the layer-norm feature encoder (`feat_extract_norm="layer"`, stable
    layer norm): the variant that trains from scratch without stalling, and that takes an
    attention mask. A `WHISPER_SHAPES` name builds the Whisper-front-end family.
    """
    import torch

    if shape not in MODEL_SHAPES and shape not in WHISPER_SHAPES:
        raise ValueError(
            f"unknown model shape {shape!r}; choose from {sorted([*MODEL_SHAPES, *WHISPER_SHAPES])}"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if shape in WHISPER_SHAPES:
        from asr.whisper_ctc import WhisperCTCConfig, WhisperCTCForCTC

        whisper = WhisperCTCConfig(vocab_size=len(default_tokens()), **WHISPER_SHAPES[shape])
        WhisperCTCForCTC(whisper).save_pretrained(out)
        write_processor(out, raw_samples=True)
        return out
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        vocab_size=len(default_tokens()),
        pad_token_id=0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        **MODEL_SHAPES[shape],
    )
    Wav2Vec2ForCTC(config).save_pretrained(out)
    write_processor(out)
    return out
