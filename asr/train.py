"""Training: fine-tune (or train from scratch) a wav2vec2 CTC model on weighted manifests.

The loop is deliberately plain PyTorch: sample a batch from the weighted sources, CTC loss,
AdamW with warm-up and linear decay, gradient clipping. Every `eval_every` steps it decodes a fixed
dev subset through the real inference pipeline (so the number is what users get), prints a few
decoded samples (CTC's "all blank" plateau shows there long before it shows in the loss), writes
a checkpoint (model, optimizer, schedule, sampler state) atomically, and keeps the best model by
dev WER. Re-running the same command resumes from the last checkpoint, and the run is
deterministic given its seed.
"""

import copy
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import AudioLimits, load_audio
from asr.decoding import GreedyDecoder
from asr.errors import AudioError, DataError
from asr.evaluate import ManifestEntry, read_manifest, run_entry, summarize
from asr.model import (
    Device,
    Recognizer,
    Vocabulary,
    create_model_dir,
    model_version,
    resolve_device,
    vocabulary_from_tokenizer,
)
from asr.pipeline import Pipeline
from asr.text import normalize_text
from asr.vad import SileroVAD

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST = "best"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class DataSource:
    """A training manifest and its sampling weight (relative to the other sources)."""

    manifest: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "DataSource":
        """`path.jsonl` or `path.jsonl:weight`."""
        path, sep, weight = spec.rpartition(":")
        if sep and path and _is_number(weight):
            return cls(Path(path), float(weight))
        return cls(Path(spec))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TrainConfig:
    out_dir: Path
    init: str
    """A checkpoint folder, or `scratch:SHAPE` (see `asr.model.MODEL_SHAPES`)."""
    train: tuple[DataSource, ...]
    dev: Path | None = None
    steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 300
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    max_clip_s: float = 6.0
    curriculum_steps: int = 600
    """For these first steps only clips up to `curriculum_clip_s` are drawn: short clips align
    easily, which is what gets CTC off its all-blank plateau."""
    curriculum_clip_s: float = 2.0
    eval_every: int = 250
    eval_clips: int = 150
    log_every: int = 50
    freeze_feature_encoder: bool = False
    mask_time_prob: float = 0.0
    """wav2vec2's SpecAugment time masking while training. Off by default: transformers' masking
    always hides at least `mask_time_min_masks` (2) spans of 10 frames, 400 ms per clip however
    short, which on one-word clips often hides the whole word and pins a model trained from scratch
    to CTC's all-blank plateau. Worth 0.05 when fine-tuning a working model on longer clips."""
    seed: int = 0
    device: Device = "auto"

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError("training needs at least one manifest")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise DataError("steps, batch size and eval interval must be positive")


@dataclass
class _Example:
    path: Path
    labels: list[int]
    duration_s: float


@dataclass
class TrainState:
    step: int = 0
    best_wer: float = math.inf
    best_cer: float = math.inf
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def refuse_failing_manifest(path: Path, shown: int = 5) -> None:
    """Raise `DataError` naming the bad rows when a manifest fails the label checks."""
    from asr.corpus.check import check_labels

    report = check_labels(path)
    if not report.ok:
        rows = "; ".join(f"line {f.line} ({f.kind}): {f.detail}" for f in report.errors[:shown])
        more = f" and {len(report.errors) - shown} more" if len(report.errors) > shown else ""
        raise DataError(f"{path} fails the data check (voice-search data check {path}): {rows}{more}")


def encode_labels(text: str, vocab: Vocabulary) -> list[int]:
    """Token ids of normalized text; a space becomes the word delimiter. Raises on unknown chars."""
    ids = []
    for char in normalize_text(text):
        token = vocab.token_for_char(char)
        if token is None:
            raise DataError(f"{char!r} in {text!r} is not in the model's vocabulary")
        ids.append(vocab.index(token))
    return ids


def _load_examples(source: DataSource, vocab: Vocabulary, max_clip_s: float) -> list[_Example]:
    examples = []
    for entry in read_manifest(source.manifest):
        duration = float(entry.fields.get("duration_s", 0) or 0)
        if duration > max_clip_s:
            continue
        examples.append(_Example(entry.audio, encode_labels(entry.text, vocab), duration))
    if not examples:
        raise DataError(f"{source.manifest} has no clips of at most {max_clip_s} s")
    return examples


class _Sampler:
    """Weighted choice of source, then uniform choice of clip; state is one seeded generator.

    With a length limit, each source is narrowed to its clips within the limit (once per limit)
    and sources with none drop out, rather than redrawing until a short clip turns up.
    """

    def __init__(self, sources: Sequence[list[_Example]], weights: Sequence[float], seed: int) -> None:
        self.sources = sources
        self.weights = weights
        self.rng = np.random.default_rng(seed)
        self._views: dict[float | None, tuple[list[list[_Example]], np.ndarray]] = {}

    def _view(self, max_clip_s: float | None) -> tuple[list[list[_Example]], np.ndarray]:
        if max_clip_s not in self._views:
            pools = [[e for e in s if max_clip_s is None or e.duration_s <= max_clip_s] for s in self.sources]
            weights = np.array([w if pool else 0.0 for w, pool in zip(self.weights, pools, strict=True)])
            if not weights.sum():
                raise DataError(f"no training clip is at most {max_clip_s} s long (the curriculum limit)")
            self._views[max_clip_s] = (pools, weights / weights.sum())
        return self._views[max_clip_s]

    def batch(self, size: int, max_clip_s: float | None) -> list[_Example]:
        pools, weights = self._view(max_clip_s)
        out = []
        for _ in range(size):
            pool = pools[int(self.rng.choice(len(pools), p=weights))]
            out.append(pool[int(self.rng.integers(len(pool)))])
        return out


def _initial_model_dir(config: TrainConfig) -> Path:
    if config.init.startswith("scratch:"):
        return create_model_dir(config.out_dir / "init", shape=config.init.split(":", 1)[1], seed=config.seed)
    return Path(config.init)


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 1.0 - (1.0 - config.final_lr_ratio) * min(1.0, progress)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainState:
    """Train until `config.steps`, resuming from `out_dir/checkpoint` when present."""
    from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

    torch.manual_seed(config.seed)
    # transformers draws wav2vec2's SpecAugment masks from numpy's global generator.
    np.random.seed(config.seed)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    resume = config.out_dir / CHECKPOINT
    source_dir = resume if (resume / "state.pt").is_file() else _initial_model_dir(config)
    device = resolve_device(config.device)
    model = AutoModelForCTC.from_pretrained(source_dir, local_files_only=True, dtype=torch.float32).to(device)
    features = AutoFeatureExtractor.from_pretrained(source_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, local_files_only=True)
    recognizer = Recognizer(model, features, vocabulary_from_tokenizer(tokenizer), device, version="training")
    if config.freeze_feature_encoder:
        model.freeze_feature_encoder()
    _set_spec_augment(model, config.mask_time_prob)

    for source in config.train:
        refuse_failing_manifest(source.manifest)
    sources = [_load_examples(s, recognizer.vocab, config.max_clip_s) for s in config.train]
    sampler = _Sampler(sources, [s.weight for s in config.train], config.seed)
    optimizer = torch.optim.AdamW(
        (p for p in model.parameters() if p.requires_grad), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    state = TrainState()
    if source_dir == resume:
        saved = torch.load(resume / "state.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        sampler.rng.bit_generator.state = saved["sampler"]
        if "torch_rng" in saved:  # absent from checkpoints written before the generators were saved
            torch.set_rng_state(saved["torch_rng"])
            np.random.set_state(saved["numpy_rng"])
        state = TrainState(**saved["state"])
        log(f"resumed at step {state.step}")
    dev = _dev_entries(config)
    dev_pipeline = Pipeline(recognizer, GreedyDecoder(recognizer.vocab), SileroVAD.load()) if dev else None
    use_amp = device == "cuda"
    (config.out_dir / "config.json").write_text(json.dumps(asdict(config), default=str, indent=1))

    started = time.perf_counter() - state.elapsed_s
    window_started = time.perf_counter()
    losses: list[float] = []
    while state.step < config.steps:
        model.train()
        limit = config.curriculum_clip_s if state.step < config.curriculum_steps else None
        inputs, labels = _collate(sampler.batch(config.batch_size, limit), features, device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = model(
                inputs["input_values"], attention_mask=inputs.get("attention_mask"), labels=labels
            ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        state.step += 1
        losses.append(float(loss.detach()))
        if state.step % config.log_every == 0:
            per_step = (time.perf_counter() - window_started) / config.log_every
            window_started = time.perf_counter()
            recent = float(np.mean(losses[-config.log_every :]))
            lr = schedule.get_last_lr()[0]
            log(f"step {state.step} loss {recent:.3f} lr {lr:.2e} {per_step:.2f} s/step")
        if state.step % config.eval_every == 0 or state.step == config.steps:
            state.elapsed_s = time.perf_counter() - started
            record = {
                "step": state.step,
                "loss": float(np.mean(losses)),
                "lr": schedule.get_last_lr()[0],
                "elapsed_s": round(state.elapsed_s, 1),
            }
            losses = []
            if dev_pipeline is not None:
                model.eval()
                record |= _evaluate_dev(dev_pipeline, dev, log)
                # CER breaks WER ties: early in training every model scores WER 1.0.
                score = (float(record["dev_wer"]), float(record["dev_cer"] or 1.0))
                if score < (state.best_wer, state.best_cer):
                    state.best_wer, state.best_cer = score
                    save_model(model, source_dir, config.out_dir / BEST)
            state.history.append(record)
            with (config.out_dir / METRICS).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            log(json.dumps(record))
            _save_checkpoint(model, source_dir, optimizer, schedule, sampler, state, config.out_dir)
    return state


def _set_spec_augment(model: Any, mask_time_prob: float) -> None:
    """Turn SpecAugment time masking on or off for training, without changing the parameters:
    transformers only creates the mask embedding when the config asks for masking, so changing
    `mask_time_prob` itself would make a checkpoint reload with different parameters."""
    model.config.apply_spec_augment = mask_time_prob > 0
    if mask_time_prob > 0:
        if getattr(model.wav2vec2, "masked_spec_embed", None) is None:
            raise DataError(
                "this model was built without a SpecAugment mask embedding; train without masking"
            )
        model.config.mask_time_prob = mask_time_prob


def _collate(
    batch: list[_Example], features: Any, device: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    clips = []
    for example in batch:
        try:
            clips.append(load_audio(example.path, AudioLimits(max_clip_s=60)).samples)
        except AudioError as e:
            raise DataError(f"unreadable training clip {example.path}: {e}") from e
    inputs = features(clips, sampling_rate=16_000, padding=True, return_tensors="pt")
    width = max(1, max(len(e.labels) for e in batch))
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, example in enumerate(batch):
        labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
    return {k: v.to(device) for k, v in inputs.items()}, labels.to(device)


def _dev_entries(config: TrainConfig) -> list[ManifestEntry]:
    if config.dev is None:
        return []
    entries = read_manifest(config.dev)
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(entries), size=min(config.eval_clips, len(entries)), replace=False)
    return [entries[i] for i in sorted(picked)]


def _evaluate_dev(pipeline: Pipeline, dev: list[ManifestEntry], log: Callable[[str], None]) -> dict[str, Any]:
    """Dev WER/CER through the real inference pipeline (VAD, trimming, greedy decoding)."""
    with torch.inference_mode():
        outcomes = [run_entry(pipeline.transcribe, e) for e in dev]
    report = summarize(outcomes)
    for o in outcomes[:4]:
        log(f"  ref: {normalize_text(o.entry.text)!r}\n  hyp: {o.hypothesis!r}")
    blank = sum(1 for o in outcomes if not o.hypothesis and o.entry.text) / max(1, len(outcomes))
    return {
        "dev_wer": report.overall.wer if report.overall.wer is not None else 1.0,
        "dev_cer": report.overall.cer,
        "dev_empty_ratio": round(blank, 3),
    }


def save_model(model: Any, processor_dir: Path, out: Path, half: bool = False) -> Path:
    """Write a standalone Hugging Face folder (weights, config, tokenizer, feature extractor), atomically."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if half:
        model = copy.deepcopy(model).half()  # a copy: the caller's model keeps training in fp32
    model.save_pretrained(tmp, safe_serialization=True)
    for name in (
        "vocab.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
        "added_tokens.json",
    ):
        if (processor_dir / name).is_file():
            shutil.copy(processor_dir / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def _save_checkpoint(
    model: Any,
    processor_dir: Path,
    optimizer: Any,
    schedule: Any,
    sampler: _Sampler,
    state: TrainState,
    out_dir: Path,
) -> None:
    tmp = out_dir / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, processor_dir, tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "sampler": sampler.rng.bit_generator.state,
            "state": asdict(state),
        },
        tmp / "state.pt",
    )
    final = out_dir / CHECKPOINT
    old = out_dir / (CHECKPOINT + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def export_model(source: Path, out: Path, card: str | None = None) -> Path:
    """Export a trained folder as the bundled format: fp16 safetensors plus a model card."""
    from transformers import AutoModelForCTC

    model = AutoModelForCTC.from_pretrained(source, local_files_only=True, dtype=torch.float32)
    save_model(model, source, out, half=True)
    (out / "state.pt").unlink(missing_ok=True)
    if card:
        (out / "README.md").write_text(card, encoding="utf-8")
    logger.info("exported %s (%s)", out, model_version(out))
    return out
