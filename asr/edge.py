"""The edge build: the CTC model as ONNX for ONNX Runtime on a CPU, in float32 or int8.

An edge folder is a model folder whose weights are `model.onnx` instead of safetensors, beside
the same config, tokenizer and feature-extractor files; `load_recognizer` gives it to the
pipeline like any checkpoint, so every command runs on it unchanged.

int8 is *static* quantization (QDQ, weights per channel) of the convolutional feature encoder
as well as the transformer's matrix products. Dynamic quantization of the Linear layers alone
barely helps this model, whose first convolutions at high frame rates are much of its CPU time,
and ONNX Runtime's dynamic ConvInteger is no faster than float convolution. Static quantization
needs activation ranges, measured on calibration clips.

Loading an edge folder reads its JSON files directly and runs ONNX Runtime on numpy, so a device
needs neither torch nor transformers (only exporting does).
"""

import json
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
from asr.frames import conv_stack, receptive_field
from asr.model import (
    BLANK_TOKEN,
    WORD_DELIMITER,
    Emissions,
    Vocabulary,
    at_least,
    model_version,
)

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

    from asr.model import load_ctc_model

    if precision == "int8" and not calibration:
        raise ModelError("int8 export needs calibration clips to measure activation ranges")
    try:
        model = load_ctc_model(model_dir).eval()
        normalize = _normalizes(model_dir)
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
            _quantize(fp32, out_dir / ONNX_FILE, [_model_input(c, normalize) for c in calibration], Path(tmp))
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
            shutil.copyfile(path, out_dir / path.name)
    size = (out_dir / ONNX_FILE).stat().st_size
    logger.info("wrote %s edge model to %s (%.1f MB)", precision, out_dir, size / 1e6)
    return EdgeExport(out_dir, precision, size)


def _model_input(clip: Samples, normalize: bool) -> np.ndarray:
    """A (1, samples) batch as wav2vec2's feature extractor makes it: zero mean, unit variance."""
    values = np.asarray(clip, dtype=np.float32)[None]
    if normalize:
        values = (values - values.mean()) / np.sqrt(values.var() + 1e-7)
    return values.astype(np.float32)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; {} when there is no such file."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelLoadError(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return value


def _normalizes(folder: Path) -> bool:
    """Whether the checkpoint's feature extractor normalizes each clip (older checkpoints keep its
    settings in preprocessor_config.json, newer ones inside processor_config.json)."""
    processor = _read_json(folder / "processor_config.json")
    settings = (
        processor.get("feature_extractor")
        or processor.get("audio_processor")
        or _read_json(folder / "preprocessor_config.json")
    )
    if not isinstance(settings, dict) or not settings:
        raise ModelLoadError(f"{folder} has no feature-extractor settings (preprocessor_config.json)")
    return bool(settings.get("do_normalize", True))


def _token(value: Any) -> str | None:
    """A special token as tokenizer files spell it: a string, or a dict with its "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _token_ids(pairs: dict[Any, Any], source: str) -> dict[str, int]:
    if not all(isinstance(t, str) and isinstance(i, int) for t, i in pairs.items()):
        raise ModelLoadError(
            f"{source} must map tokens to integer ids (multilingual vocabularies are not supported)"
        )
    return dict(pairs)


def read_vocabulary(folder: Path) -> Vocabulary:
    """The CTC vocabulary from a checkpoint's tokenizer files, read directly (loading the tokenizer
    class would import torch), with transformers' precedence: tokens the tokenizer added
    (`added_tokens_decoder`, or added_tokens.json in older folders) take their ids over
    vocab.json's; special tokens come from tokenizer_config.json when it lists its added tokens,
    else special_tokens_map.json overrides it."""
    ids = _token_ids(_read_json(folder / "vocab.json"), f"{folder}/vocab.json")
    if not ids:
        raise ModelLoadError(f"{folder} has no vocab.json")
    config = _read_json(folder / "tokenizer_config.json")
    added = config.get("added_tokens_decoder")
    if isinstance(added, dict):
        try:
            ids.update({str(token["content"]): int(index) for index, token in added.items()})
        except (TypeError, KeyError, ValueError) as e:
            raise ModelLoadError(f"unreadable added_tokens_decoder in {folder}: {e}") from e
        specials = config
    else:
        ids.update(_token_ids(_read_json(folder / "added_tokens.json"), f"{folder}/added_tokens.json"))
        specials = {**config, **_read_json(folder / "special_tokens_map.json")}
    return Vocabulary.from_ids(
        ids,
        _token(specials.get("pad_token", BLANK_TOKEN)),
        _token(specials.get("word_delimiter_token", WORD_DELIMITER)),
    )


def _quantize(source: Path, target: Path, calibration: list[np.ndarray], tmp: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Clips(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {"input_values": item}

    import onnx

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    quantize_static(
        str(prepared),
        str(target),
        Clips(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        nodes_to_exclude=[*activation_products(graph), *waveform_conv(graph), *before_the_log(graph)],
    )


def waveform_conv(graph: Any) -> list[str]:
    """The first convolution, the one reading the waveform itself. In int8 its input would have
    256 levels for the whole clip's range, too coarse for quiet or narrowband speech: quantizing
    it cost the step-8,000 model 11 points of FSDD WER (53.0% vs fp32's 42.0%, 100 clips), and
    leaving it in float gave fp32's 42.0% back, for a layer with 1 input channel that is a small
    share of the compute. `graph` is an ONNX GraphProto."""
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    return convs[:1]  # ONNX lists nodes in topological order


def before_the_log(graph: Any) -> list[str]:
    """The products computed before a log-mel's logarithm (the STFT as a convolution, the mel
    filterbank), and the first convolution after it: the power spectrum spans ten decades, which
    256 levels cannot hold (quantized, the bundled Whisper-family model agreed with fp32 on 59-74%
    of frames of tests/asr/test_edge.py's three clips; with the products before the log in float,
    89-93%; with the first convolution too, at or above the test's 90%). Empty for a model
    without a log (wav2vec2). `graph` is an ONNX GraphProto in topological order."""
    names, logged = [], False
    for node in graph.node:
        logged = logged or node.op_type == "Log"
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            names.append(node.name)
            if logged:  # and the first convolution over the log-mel, a small share of the compute
                return names
    return []


def activation_products(graph: Any) -> list[str]:
    """MatMul nodes with no weight (attention's query x key and scores x value). Quantizing them
    wraps both inputs and the softmax in quantize/dequantize pairs for little arithmetic saved:
    leaving them in float measured faster in a one-off probe here (30 test queries, 2 threads,
    interleaved: median 17.4 ms vs 22.2 ms with them quantized, fp32 32.3 ms) and agreed with
    fp32 on as many frames (97.7% vs 97.5%). `graph` is an ONNX GraphProto."""
    weights = {w.name for w in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not weights.intersection(n.input)]


class OnnxRecognizer:
    """`Recognizer`'s interface (vocab, version, frame_s, log_probs) on an ONNX Runtime session.

    Clips are run one at a time: the exported graph has no attention mask, and padding a batch
    would change a group-norm model's outputs.
    """

    device = "cpu"

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        try:
            config = _read_json(folder / "config.json")
            self._kernels, self._strides = conv_stack(config)
            self._normalize = _normalizes(folder)
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(
                str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ONNX Runtime raises its own exception types
            raise ModelLoadError(f"cannot load the edge model in {folder}: {e}") from e
        self.vocab: Vocabulary = read_vocabulary(folder)
        self.version = model_version(folder)
        self.frame_s = float(np.prod(self._strides)) / SAMPLE_RATE_HZ
        self._min_samples = receptive_field(self._kernels, self._strides)

    def log_probs(self, clips: Sequence[Samples]) -> list[Emissions]:
        out = []
        for clip in clips:
            clip = at_least(clip, self._min_samples)
            values = _model_input(clip, self._normalize)
            try:
                logits = self._session.run(None, {"input_values": values})[0][0]
            except Exception as e:
                raise ModelError(f"the edge model failed on a clip of {len(clip)} samples: {e}") from e
            # One clip alone: every output frame is the clip's (no padding to cut off).
            log_probs = log_softmax(logits, axis=-1)
            out.append(Emissions(log_probs=log_probs.astype(np.float32), frame_s=self.frame_s))
        return out
