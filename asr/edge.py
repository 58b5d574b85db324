"""The edge build: the CTC model as ONNX for ONNX Runtime on a CPU, in float32 or int8.

An edge folder is a model folder whose weights are `model.onnx` instead of safetensors, beside
the same config, tokenizer and feature-extractor files; `load_recognizer` gives it to the
pipeline like any checkpoint, so every command runs on it unchanged.

int8 is *static* quantization (QDQ, weights per channel) of the convolutional feature encoder
as well as the transformer's matrix products. Dynamic quantization of the Linear layers alone
barely helps this model, whose first convolutions at high frame rates are much of its CPU time,
and ONNX Runtime's dynamic ConvInteger is no faster than float convolution. Static quantization
needs activation ranges, measured on calibration clips.
"""

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import log_softmax

from asr.audio import SAMPLE_RATE_HZ, Samples
from asr.errors import ModelError, ModelLoadError
from asr.model import Emissions, Vocabulary, model_version, vocabulary_from_tokenizer

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]
ONNX_FILE = "model.onnx"
OPSET = 17
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")
"""An edge folder copies every other file of its source checkpoint: config, tokenizer, processor, card."""


@dataclass(frozen=True)
class EdgeExport:
    folder: Path
    precision: Precision
    bytes: int


def is_edge_folder(folder: Path) -> bool:
    return (folder / ONNX_FILE).is_file()


def export_edge(
    model_dir: Path, out_dir: Path, precision: Precision = "int8", calibration: Sequence[Samples] = ()
) -> EdgeExport:
    """Write an edge folder for the checkpoint in `model_dir`; int8 needs calibration clips
    (float32 mono 16 kHz, a few dozen typical queries)."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForCTC

    if precision == "int8" and not calibration:
        raise ModelError("int8 export needs calibration clips to measure activation ranges")
    try:
        model = AutoModelForCTC.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
        features = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot load a CTC model from {model_dir}: {e}") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        example = torch.zeros(1, SAMPLE_RATE_HZ, dtype=torch.float32)
        torch.onnx.export(
            model,
            (example,),
            str(fp32),
            input_names=["input_values"],
            output_names=["logits"],
            dynamic_axes={"input_values": {0: "batch", 1: "samples"}, "logits": {0: "batch", 1: "frames"}},
            opset_version=OPSET,
            dynamo=False,
        )
        if precision == "fp32":
            shutil.copyfile(fp32, out_dir / ONNX_FILE)
        else:
            _quantize(fp32, out_dir / ONNX_FILE, [_normalized(features, c) for c in calibration], Path(tmp))
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
            shutil.copyfile(path, out_dir / path.name)
    size = (out_dir / ONNX_FILE).stat().st_size
    logger.info("wrote %s edge model to %s (%.1f MB)", precision, out_dir, size / 1e6)
    return EdgeExport(out_dir, precision, size)


def _normalized(features: Any, clip: Samples) -> np.ndarray:
    values = features([np.asarray(clip, dtype=np.float32)], sampling_rate=SAMPLE_RATE_HZ, return_tensors="np")
    return np.asarray(values["input_values"], dtype=np.float32)


def _quantize(source: Path, target: Path, calibration: list[np.ndarray], tmp: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Clips(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {"input_values": item}

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        Clips(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
    )


class OnnxRecognizer:
    """`Recognizer`'s interface (vocab, version, frame_s, log_probs) on an ONNX Runtime session.

    Clips are run one at a time: the exported graph has no attention mask, and padding a batch
    would change a group-norm model's outputs.
    """

    device = "cpu"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            self._features = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(
                str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(f"cannot load the edge model in {folder}: {e}") from e
        self.vocab: Vocabulary = vocabulary_from_tokenizer(tokenizer)
        self.version = model_version(folder)
        self._kernels, self._strides = list(config.conv_kernel), list(config.conv_stride)
        self.frame_s = float(np.prod(self._strides)) / SAMPLE_RATE_HZ

    def _frames(self, samples: int) -> int:
        for kernel, stride in zip(self._kernels, self._strides, strict=True):
            samples = (samples - kernel) // stride + 1
        return max(samples, 0)

    def log_probs(self, clips: Sequence[Samples]) -> list[Emissions]:
        out = []
        for clip in clips:
            values = _normalized(self._features, clip)
            try:
                logits = self._session.run(None, {"input_values": values})[0][0]
            except Exception as e:
                raise ModelError(f"the edge model failed on a clip of {len(clip)} samples: {e}") from e
            log_probs = log_softmax(logits, axis=-1)
            out.append(
                Emissions(
                    log_probs=log_probs[: self._frames(len(clip))].astype(np.float32), frame_s=self.frame_s
                )
            )
        return out
