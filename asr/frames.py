"""How a model's output frames map to input samples: convolution stacks, the samples one frame
reads, frame counts. Plain arithmetic on config.json's numbers, without torch, so the edge client
and the model families share it."""

from collections.abc import Sequence
from typing import Any

from asr.errors import ModelLoadError

WHISPER_FRONT_END = ((400, 3, 3), (160, 1, 2))
"""The Whisper-front-end family's front end as a convolution stack (kernels and strides, in input
steps): the log-mel's 400-sample window every 160 samples, then Whisper's two convolutions; 20 ms
frames that read 1,040 samples. Its config answers `conv_kernel` and `conv_stride` with these."""


def conv_stack(config: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Kernels and strides of a checkpoint's front end, from its config.json's contents."""
    if config.get("model_type") == "whisper_ctc":
        return list(WHISPER_FRONT_END[0]), list(WHISPER_FRONT_END[1])
    try:
        return list(config["conv_kernel"]), list(config["conv_stride"])
    except KeyError as e:
        raise ModelLoadError(f"the model config has no {e}: not a CTC model this project knows") from e


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples one output frame of a convolution stack reads."""
    field, hop = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return field


def frame_count(samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Output frames of a convolution stack without padding over `samples` (0 when too short)."""
    for kernel, stride in zip(kernels, strides, strict=True):
        samples = (samples - kernel) // stride + 1
    return max(samples, 0)
