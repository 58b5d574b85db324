"""Training: fine-tune (or train from scratch) a wav2vec2 CTC model on weighted manifests.

The loop is deliberately plain PyTorch: sample a batch from the weighted sources, CTC loss,
AdamW with warm-up and linear decay, gradient clipping. Every `eval_every` steps it decodes a fixed
dev subset through the real inference pipeline (so the number is what users get), prints a few
decoded samples (CTC's "all blank" plateau shows there long before it shows in the loss), writes
a checkpoint (model, optimizer, schedule, sampler state) atomically, and keeps the best model by
dev WER. Re-running the same command resumes from the last checkpoint, and the run is
deterministic given its seed (and its number of processes).

With `nproc` > 1 the same loop runs data-parallel in each of `nproc` processes started by torchrun
(`asr/distributed.py`): each takes an equal share of every global batch, DistributedDataParallel
averages the gradients, and rank 0 alone evaluates, logs and writes.
"""

import copy
import json
import logging
import math
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import SAMPLE_RATE_HZ, AudioLimits, Samples, load_audio
from asr.decoding import GreedyDecoder
from asr.distributed import (
    Ranks,
    data_parallel,
    gather_on_every_rank,
    made_on_main,
    process_group,
    split_batch,
    sum_over_ranks,
    sum_tensor_over_ranks,
)
from asr.errors import AudioError, DataError
from asr.evaluate import run_entry, summarize
from asr.manifest import ManifestEntry, read_manifest
from asr.model import (
    Device,
    Recognizer,
    Vocabulary,
    create_model_dir,
    load_ctc_model,
    model_version,
    resolve_device,
    vocabulary_from_tokenizer,
)
from asr.pipeline import Pipeline
from asr.pretrained import adapt_checkpoint, speaks_our_vocabulary
from asr.text import normalize_text
from asr.vad import SileroVAD

logger = logging.getLogger(__name__)

SCHEDULES = ("auto", "linear", "tri-stage")
TRI_STAGE_SHARES = (0.1, 0.4, 0.5)
"""Warm-up, hold and decay shares of the steps (wav2vec 2.0's fine-tuning schedule)."""
CHECKPOINT = "checkpoint"
BEST = "best"
METRICS = "metrics.jsonl"
SNAPSHOTS = "steps"


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
    """A checkpoint folder, `scratch:SHAPE` (see `asr.model.MODEL_SHAPES`), or `whisper:` (Whisper
    tiny.en's encoder under a new CTC head, `asr.whisper_ctc`; `whisper:DIR` reads another
    CTranslate2 Whisper folder)."""
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
    """Also on whenever `init` is a foreign checkpoint (see `adapts_checkpoint`)."""
    freeze_layers: int = 0
    """Also freeze everything below transformer layer N (feature encoder, projection, positional
    convolution, the first N layers): a fine-tune on a few hundred new labels then moves only the
    layers nearest the characters, which forgets less of what the golden sets measure."""
    schedule: str = "auto"
    """"linear": warm-up then linear decay to `final_lr_ratio`. "tri-stage": warm-up (10%), hold
    (40%), exponential decay to `final_lr_ratio` (50%), the wav2vec 2.0 fine-tuning schedule.
    "auto": tri-stage for a foreign checkpoint, linear otherwise."""
    mask_time_prob: float = 0.0
    """wav2vec2's SpecAugment time masking while training. Off by default: transformers' masking
    always hides at least `mask_time_min_masks` (2) spans of 10 frames, 400 ms per clip however
    short, which on one-word clips often hides the whole word and pins a model trained from scratch
    to CTC's all-blank plateau. Worth 0.05 when fine-tuning a working model on longer clips.
    On the Whisper-front-end family it masks log-mel frames (10 ms) and has no minimum count."""
    mask_feature_prob: float = 0.0
    """SpecAugment's frequency masking: the share of mel bins (Whisper family) or hidden channels
    (wav2vec2) hidden in spans while training."""
    seed: int = 0
    device: Device = "auto"
    shared_data: Path | None = None
    """The real sets' folder: no clip of their dev split (asr/corpus/real.py) may train, and
    the training half of Speech Commands' `_silence_` recordings is the noise for `augment`."""
    augment: float = 0.0
    """Share of drawn clips augmented on the fly (speed, noise, reverb, EQ, gain, band, codec;
    `asr.corpus.augment.draw_training_spec`), drawn afresh each time a clip is drawn."""
    distill_weight: float = 0.0
    """Weight of the distillation loss (L1 minus cosine similarity between a projection of
    transformer layer `distill_layer` and Whisper tiny.en's encoder frames of the clean clip,
    `asr.teacher`); 0 trains on CTC alone."""
    distill_layer: int = 3
    loader_threads: int = 1
    """Threads that read and augment a batch's clips (numpy, soxr and libsndfile release the GIL):
    one keeps up with a CPU model; a GPU needs more."""
    cache_audio_mb: int = 0
    """Keep up to this many MB of decoded clips in memory instead of decoding them every draw."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much training time, whatever `steps` says."""
    prefetch_batches: int = 0
    """Batches a thread reads, augments and pads ahead of the model, so that a GPU does not wait
    on the CPU between steps (0: each batch is read when its step starts, as a CPU run wants)."""
    amp: bool = True
    """bf16 autocast on CUDA. Off trains in fp32 (TF32 matrix products): the small models here
    leave a GPU mostly idle, so the precision costs little there."""
    keep_every: int = 0
    """Also keep the model (fp16) at every multiple of this many steps, under `steps/step-N`: the
    snapshots that `average_models` averages at the end of a run (0: keep only `checkpoint` and
    `best`)."""
    augment_on_device: bool = False
    """Run `augment` on the training device, batched (speed, gain, noise: `asr.device_augment`),
    with the loader only reading cached clips: for a GPU, which the CPU path left mostly idle."""
    head_lr: float | None = None
    """The CTC head's peak learning rate, when it differs from `lr` (a new head over a pretrained
    encoder learns at 2e-3 while the encoder moves at 1e-4: the Whisper-family recipe)."""
    length_buckets: int = 1
    """1: each batch's clips drawn at random. N: N batches' clips drawn at once and grouped by
    length, so that a batch of sentences and one-word clips does not pad every clip to the
    longest (about 3x less computed padding on the real sets' mix)."""
    nproc: int = 1
    """Data-parallel processes (started by torchrun; `voice-search train --nproc`). The global
    batch stays `batch_size`: each process takes `batch_size / nproc` of its clips."""

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError("training needs at least one manifest")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise DataError("steps, batch size and eval interval must be positive")
        if self.schedule not in SCHEDULES:
            raise DataError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not 0.0 <= self.augment <= 1.0:
            raise DataError("the augmented share must be between 0 and 1")
        if self.distill_weight < 0 or self.distill_layer < 1:
            raise DataError("the distillation weight must be >= 0 and its layer >= 1")
        if self.freeze_layers < 0:
            raise DataError("the frozen layer count must be >= 0")
        if self.keep_every < 0:
            raise DataError("the snapshot interval must be >= 0")
        if self.augment_on_device and self.distill_weight:
            raise DataError(
                "distillation aligns the teacher to the CPU augmentation: drop --augment-on-device"
            )
        if self.head_lr is not None and self.head_lr <= 0:
            raise DataError("the head's learning rate must be positive")
        if self.length_buckets < 1:
            raise DataError("the length buckets must be >= 1")
        split_batch(self.batch_size, self.nproc)


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
    skipped_steps: int = 0
    """Steps whose gradient was not finite: applied, one such step turns every weight into NaN."""
    history: list[dict[str, Any]] = field(default_factory=list)


def refuse_failing_manifest(path: Path, shown: int = 5) -> None:
    """Raise `DataError` naming the bad rows when a manifest fails the label checks."""
    from asr.corpus.check import check_labels

    report = check_labels(path)
    if not report.ok:
        rows = "; ".join(f"line {f.line} ({f.kind}): {f.detail}" for f in report.errors[:shown])
        more = f" and {len(report.errors) - shown} more" if len(report.errors) > shown else ""
        raise DataError(f"{path} fails the data check (voice-search data check {path}): {rows}{more}")


def refuse_dev_clips(manifest: Path, shared_data: Path, shown: int = 3) -> None:
    """Raise `DataError` when a training manifest holds a clip of the real sets' dev split."""
    from asr.corpus.real import dev_clips

    held = dev_clips(shared_data)
    leaked = [e.audio for e in read_manifest(manifest) if e.audio.resolve() in held]
    if leaked:
        names = ", ".join(str(path) for path in leaked[:shown])
        raise DataError(
            f"{manifest} holds {len(leaked)} clips of dev speakers, who must never train ({names})"
        )


def check_training_data(config: TrainConfig) -> None:
    """Refuse (`DataError`) training manifests that fail the data check or hold dev clips."""
    for source in config.train:
        refuse_failing_manifest(source.manifest)
        if config.shared_data is not None:
            refuse_dev_clips(source.manifest, config.shared_data)


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
        return self._draw(self.rng, size, max_clip_s)

    def _draw(self, rng: np.random.Generator, size: int, max_clip_s: float | None) -> list[_Example]:
        pools, weights = self._view(max_clip_s)
        out = []
        for _ in range(size):
            pool = pools[int(rng.choice(len(pools), p=weights))]
            out.append(pool[int(rng.integers(len(pool)))])
        return out

    def bucketed(
        self, size: int, max_clip_s: float | None, step: int, buckets: int, seed: int
    ) -> list[_Example]:
        """Step `step`'s batch when `buckets` batches' clips are drawn at once and grouped by
        length: a padded batch then holds clips of about one length, and computes little padding.
        The group is drawn from the seed and `step // buckets` alone, so a resumed run needs no
        saved state to hear what an uninterrupted one would."""
        group = step // buckets
        rng = np.random.default_rng([seed, group])
        drawn = sorted(self._draw(rng, size * buckets, max_clip_s), key=lambda e: e.duration_s)
        order = rng.permutation(buckets)  # long and short batches interleaved, not in length order
        start = int(order[step % buckets]) * size
        return drawn[start : start + size]


WHISPER_START = "whisper:"
"""`--init whisper:` starts from Whisper tiny.en's encoder (`whisper:DIR`: a CTranslate2 folder)."""


def is_built_start(init: str) -> bool:
    """True when `init` names a start this project builds (`scratch:SHAPE`, `whisper:`), not a folder."""
    return init.startswith(("scratch:", WHISPER_START))


def adapts_checkpoint(config: TrainConfig) -> bool:
    """True when `init` is a checkpoint over another vocabulary, or one without a CTC head."""
    return not is_built_start(config.init) and not speaks_our_vocabulary(Path(config.init))


def _initial_model_dir(config: TrainConfig, log: Callable[[str], None]) -> Path:
    if config.init.startswith("scratch:"):
        return create_model_dir(config.out_dir / "init", shape=config.init.split(":", 1)[1], seed=config.seed)
    if config.init.startswith(WHISPER_START):
        from asr.transplant import read_ctranslate2, whisper_weights_dir
        from asr.whisper_start import write_whisper_ctc

        folder = config.init.removeprefix(WHISPER_START)
        weights = read_ctranslate2(whisper_weights_dir(Path(folder) if folder else None) / "model.bin")
        log("Whisper's encoder (log-mel, convolutions, positions, layers) under a new CTC head")
        return write_whisper_ctc(config.out_dir / "init", weights, seed=config.seed)
    if adapts_checkpoint(config):
        adapted = adapt_checkpoint(Path(config.init), config.out_dir / "init", seed=config.seed)
        log(
            f"{config.init} is not over our vocabulary: a new CTC head "
            f"({len(adapted.mapped_tokens)} rows mapped from its head), feature encoder frozen, "
            f"LayerDrop {adapted.layerdrop}"
        )
        return adapted.directory
    return Path(config.init)


def _schedule(config: TrainConfig) -> str:
    if config.schedule == "auto":
        return "tri-stage" if adapts_checkpoint(config) else "linear"
    return config.schedule


def _lr_factor(step: int, config: TrainConfig, clock_share: float = 0.0) -> float:
    """The learning rate's multiplier at `step`. `clock_share` is the share of `max_minutes`
    spent: with a deadline the linear decay runs to whichever end comes first, the last step or
    the deadline, so a run stopped by the clock still ends on a small learning rate."""
    if _schedule(config) == "tri-stage":
        warmup, hold = (int(share * config.steps) for share in TRI_STAGE_SHARES[:2])
        if step < warmup:
            return config.final_lr_ratio + (1 - config.final_lr_ratio) * step / max(1, warmup)
        if step < warmup + hold:
            return 1.0
        progress = min(1.0, (step - warmup - hold) / max(1, config.steps - warmup - hold))
        return float(config.final_lr_ratio**progress)
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = max(clock_share, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return 1.0 - (1.0 - config.final_lr_ratio) * min(1.0, progress)


def train(
    config: TrainConfig,
    log: Callable[[str], None] = print,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainState:
    """Train until `config.steps`, resuming from `out_dir/checkpoint` when present. `on_record`
    gets each evaluation's record (step, loss, lr, dev metrics) as it is written: experiment
    tracking hooks in there. With `config.nproc` > 1 every process torchrun started calls this;
    only rank 0 logs, calls `on_record` and writes, and its state is the run's."""
    ranks = Ranks.from_env()
    if ranks.world_size != config.nproc:
        raise DataError(
            f"this run is set for {config.nproc} process(es) but was started as {ranks.world_size}: "
            "`voice-search train --nproc N` starts N processes under torchrun"
        )
    device = resolve_device(config.device)
    with process_group(ranks, device):
        if not ranks.is_main:
            log, on_record = _silent, None
        return _train(config, ranks, device, log, on_record)


def _silent(line: str) -> None:
    """The log of ranks other than 0: one copy of each line is enough."""


def _source_dir(config: TrainConfig, log: Callable[[str], None]) -> Path:
    """The checkpoint to resume from, else the initial model (written into the run folder)."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    resume = config.out_dir / CHECKPOINT
    return resume if (resume / "state.pt").is_file() else _initial_model_dir(config, log)


def _train(
    config: TrainConfig,
    ranks: Ranks,
    device: str,
    log: Callable[[str], None],
    on_record: Callable[[dict[str, Any]], None] | None,
) -> TrainState:
    from transformers import AutoFeatureExtractor, AutoTokenizer

    # Each rank its own dropout and SpecAugment draws (transformers draws wav2vec2's SpecAugment
    # masks from numpy's global generator); rank 0, like a single process, is seeded with `seed`.
    torch.manual_seed(config.seed + ranks.rank)
    np.random.seed(config.seed + ranks.rank)
    resume = config.out_dir / CHECKPOINT
    source_dir = made_on_main(lambda: _source_dir(config, log), ranks)
    model = load_ctc_model(source_dir).to(device)
    features = AutoFeatureExtractor.from_pretrained(source_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, local_files_only=True)
    recognizer = Recognizer(model, features, vocabulary_from_tokenizer(tokenizer), device, version="training")
    if config.freeze_feature_encoder or adapts_checkpoint(config):
        model.freeze_feature_encoder()
    if config.freeze_layers:
        freeze_lower_layers(model, config.freeze_layers)
    _set_spec_augment(model, config.mask_time_prob, config.mask_feature_prob)

    if ranks.is_main:
        check_training_data(config)
    sources = [_load_examples(s, recognizer.vocab, config.max_clip_s) for s in config.train]
    sampler = _Sampler(sources, [s.weight for s in config.train], config.seed)
    distiller = _Distiller(config, model, device, ranks) if config.distill_weight else None
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, distiller, config), weight_decay=config.weight_decay
    )
    clock_started = time.perf_counter()

    def clock_share() -> float:
        return (
            (time.perf_counter() - clock_started) / (60 * config.max_minutes) if config.max_minutes else 0.0
        )

    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, config, clock_share())
    )
    state = TrainState()
    if source_dir == resume:
        saved = torch.load(resume / "state.pt", weights_only=False)
        _check_same_optimizer(saved, config)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        sampler.rng.bit_generator.state = saved["sampler"]
        if "torch_rng" in saved:  # absent from checkpoints written before the generators were saved
            _restore_generators(saved, ranks, log)
        state = TrainState(**saved["state"])
        if distiller is not None and "projection" in saved:
            distiller.projection.load_state_dict(saved["projection"])
        log(f"resumed at step {state.step}")
    # After the checkpoint is loaded: DDP starts every rank from rank 0's parameters.
    forward = data_parallel(_Student(model, distiller, ranks), ranks)
    on_device = bool(config.augment) and config.augment_on_device
    augmenter = _Augmenter(config, sampler.rng) if config.augment and not on_device else None
    device_augmenter = _device_augmenter(config, device) if on_device else None
    loader = _Loader(config, features, device, augmenter, distiller, sampler.rng if on_device else None)
    share = ranks.share(config.batch_size)
    dev = _dev_entries(config) if ranks.is_main else []
    dev_pipeline = Pipeline(recognizer, GreedyDecoder(recognizer.vocab), SileroVAD.load()) if dev else None
    use_amp = device == "cuda" and config.amp
    if ranks.is_main:
        (config.out_dir / "config.json").write_text(json.dumps(asdict(config), default=str, indent=1))

    started = time.perf_counter() - state.elapsed_s
    window_started = time.perf_counter()
    losses: list[float] = []
    distill_losses: list[float] = []
    stop_at = time.perf_counter() + 60 * config.max_minutes if config.max_minutes else math.inf

    def draw(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        limit = config.curriculum_clip_s if step < config.curriculum_steps else None
        if config.length_buckets > 1:
            batch = sampler.bucketed(config.batch_size, limit, step, config.length_buckets, config.seed)
        else:
            batch = sampler.batch(config.batch_size, limit)
        return loader(batch, share)

    with _Batches(draw, sampler, state.step, config.prefetch_batches) as batches:
        while state.step < config.steps:
            model.train()
            drawn = batches.next()
            inputs, labels = drawn.inputs, drawn.labels
            if device_augmenter is not None:
                inputs = device_augmenter.apply(
                    inputs, normalize=bool(getattr(features, "do_normalize", False))
                )
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss, distill_loss = forward(inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Every rank holds the same all-reduced gradient, so every rank takes the same decision.
            if torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)):
                optimizer.step()
            else:
                state.skipped_steps += 1
            schedule.step()
            state.step += 1
            # The global batch's losses are the means of the ranks' (equal shares); and one clock
            # stops every rank, since a rank that stopped alone would leave the others waiting.
            step_loss, step_distill, ranks_out_of_time = sum_over_ranks(
                [
                    float(loss.detach()),
                    float(distill_loss.detach()) if distill_loss is not None else 0.0,
                    float(time.perf_counter() >= stop_at),
                ],
                ranks,
                device,
            )
            losses.append(step_loss / ranks.world_size)
            if distill_loss is not None:
                distill_losses.append(step_distill / ranks.world_size)
            out_of_time = ranks_out_of_time > 0
            if state.step % config.log_every == 0:
                per_step = (time.perf_counter() - window_started) / config.log_every
                window_started = time.perf_counter()
                recent = float(np.nanmean(losses[-config.log_every :]))
                lr = schedule.get_last_lr()[0]
                skipped = f" ({state.skipped_steps} skipped)" if state.skipped_steps else ""
                log(f"step {state.step} loss {recent:.3f} lr {lr:.2e} {per_step:.2f} s/step{skipped}")
            if state.step % config.eval_every == 0 or state.step == config.steps or out_of_time:
                state.elapsed_s = time.perf_counter() - started
                record = {
                    "step": state.step,
                    "loss": float(np.nanmean(losses)),
                    "lr": schedule.get_last_lr()[0],
                    "elapsed_s": round(state.elapsed_s, 1),
                }
                if state.skipped_steps:
                    record["skipped_steps"] = state.skipped_steps
                if distill_losses:
                    record["distill_loss"] = float(np.mean(distill_losses))
                losses, distill_losses = [], []
                if dev_pipeline is not None:
                    model.eval()
                    record |= _evaluate_dev(dev_pipeline, dev, log)
                    # CER breaks WER ties: early in training every model scores WER 1.0.
                    score = (float(record["dev_wer"]), float(record["dev_cer"] or 1.0))
                    if score < (state.best_wer, state.best_cer):
                        state.best_wer, state.best_cer = score
                        save_model(model, source_dir, config.out_dir / BEST)
                state.history.append(record)
                extra: dict[str, Any] = {}
                if distiller is not None:
                    extra["projection"] = distiller.projection.state_dict()
                if ranks.distributed:  # every rank's dropout draws continue where they stopped
                    extra["rank_generators"] = gather_on_every_rank(_generators(), ranks)
                if ranks.is_main:
                    with (config.out_dir / METRICS).open("a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                    log(json.dumps(record))
                    if on_record is not None:
                        on_record(record)
                    if config.keep_every and state.step % config.keep_every == 0:
                        save_model(
                            model, source_dir, config.out_dir / SNAPSHOTS / f"step-{state.step}", half=True
                        )
                    _save_checkpoint(
                        model,
                        source_dir,
                        optimizer,
                        schedule,
                        drawn.sampler_state,
                        state,
                        config.out_dir,
                        extra,
                    )
            if out_of_time:
                log(f"stopped at step {state.step}: --max-minutes {config.max_minutes} reached")
                break
    return state


def _parameter_groups(model: Any, distiller: Any, config: TrainConfig) -> list[dict[str, Any]]:
    """The trained parameters at `lr`, and the CTC head at `head_lr` when that is set."""
    head = {id(p) for p in model.lm_head.parameters()} if config.head_lr is not None else set()
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    if distiller is not None:
        body += list(distiller.projection.parameters())
    groups = [{"params": body, "lr": config.lr}]
    if head:
        groups.append(
            {"params": [p for p in model.lm_head.parameters() if p.requires_grad], "lr": config.head_lr}
        )
    return groups


def _generators() -> dict[str, Any]:
    """This process's torch and numpy global generator states (dropout, SpecAugment masks)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def _restore_generators(saved: dict[str, Any], ranks: Ranks, log: Callable[[str], None]) -> None:
    """This rank's generators as the checkpoint left them. A checkpoint written by another number
    of processes holds only rank 0's: the other ranks keep their fresh seeds, so only their
    dropout and masking draws differ from the uninterrupted run (the data is the same)."""
    per_rank = saved.get("rank_generators", [])
    if len(per_rank) == ranks.world_size:
        torch.set_rng_state(per_rank[ranks.rank]["torch"])
        np.random.set_state(per_rank[ranks.rank]["numpy"])
        return
    if ranks.distributed:
        log(f"the checkpoint is of {max(1, len(per_rank))} process(es): ranks 1+ draw dropout afresh")
    if ranks.is_main:
        torch.set_rng_state(saved["torch_rng"])
        np.random.set_state(saved["numpy_rng"])


def freeze_lower_layers(model: Any, layers: int) -> None:
    """Stop gradients below transformer layer `layers`; the layers above, the CTC head and (with the
    stable layer norm, where it follows the layers) the final layer norm keep training."""
    if hasattr(model, "freeze_lower_layers"):  # the Whisper-front-end family knows its own layers
        if layers > len(model.layers):
            raise DataError(f"cannot freeze {layers} layers: the model has {len(model.layers)}")
        model.freeze_lower_layers(layers)
        return
    encoder = model.wav2vec2.encoder
    if layers > len(encoder.layers):
        raise DataError(f"cannot freeze {layers} layers: the model has {len(encoder.layers)}")
    model.wav2vec2.requires_grad_(False)  # the CTC head sits outside it
    for module in (
        *encoder.layers[layers:],
        *([encoder.layer_norm] if model.config.do_stable_layer_norm else []),
    ):
        module.requires_grad_(True)


def _set_spec_augment(model: Any, mask_time_prob: float, mask_feature_prob: float = 0.0) -> None:
    """Turn SpecAugment on or off for training, without changing the parameters: transformers
    only creates wav2vec2's mask embedding when the config asks for masking, so changing
    `mask_time_prob` itself would make a checkpoint reload with different parameters."""
    masks = mask_time_prob > 0 or mask_feature_prob > 0
    model.config.apply_spec_augment = masks
    needs_embedding = (
        hasattr(model, "wav2vec2") and mask_time_prob > 0
    )  # the Whisper family masks its log-mel
    if needs_embedding and getattr(model.wav2vec2, "masked_spec_embed", None) is None:
        raise DataError("this model was built without a SpecAugment mask embedding; train without masking")
    if masks:
        model.config.mask_time_prob = mask_time_prob
        model.config.mask_feature_prob = mask_feature_prob


@dataclass(frozen=True)
class _Heard:
    """A clip as the student hears it, and where the clean speech lies in it (for the teacher)."""

    samples: Samples
    clean: Samples
    lead_samples: int = 0
    speech_samples: int = 0

    @classmethod
    def unchanged(cls, clean: Samples) -> "_Heard":
        return cls(clean, clean, 0, len(clean))


class _Augmenter:
    """On-the-fly augmentation. Each clip's draw comes from its own generator, seeded from the
    sampler's generator in batch order: loader threads may finish in any order, and a resumed
    run (which restores the sampler's generator) still hears what an uninterrupted one would."""

    def __init__(self, config: TrainConfig, rng: np.random.Generator) -> None:
        from asr.corpus.build import load_noise_bank

        noise = config.shared_data / "speech_commands_dev" / "manifest.jsonl" if config.shared_data else None
        self.noise_bank = load_noise_bank(noise if noise and noise.is_file() else None, "train")
        self.names = sorted(self.noise_bank)
        self.share = config.augment
        self.rng = rng

    def seeds(self, count: int) -> list[int]:
        return [int(seed) for seed in self.rng.integers(0, 2**63, size=count)]

    def __call__(self, clean: Samples, seed: int) -> _Heard:
        from asr.corpus.augment import apply, draw_training_spec

        rng = np.random.default_rng(seed)
        if rng.random() >= self.share:
            return _Heard.unchanged(clean)
        spec = draw_training_spec(rng, self.names)
        heard = apply(clean, spec, rng, self.noise_bank)
        lead = spec.lead_silence_ms * SAMPLE_RATE_HZ // 1000
        return _Heard(heard, clean, lead, round(len(clean) / spec.speed))


class _Distiller:
    """The distillation loss: a linear projection of one student layer toward the teacher."""

    def __init__(self, config: TrainConfig, model: Any, device: str, ranks: Ranks) -> None:
        from asr.teacher import TEACHER_DIM, WhisperTeacher

        self.teacher = WhisperTeacher(threads=max(1, torch.get_num_threads()))
        self.projection = torch.nn.Linear(model.config.hidden_size, TEACHER_DIM).to(device)
        self.model = model
        self.ranks = ranks
        self.weight = config.distill_weight
        self.layer = config.distill_layer
        if self.layer > model.config.num_hidden_layers:
            raise DataError(
                f"the model has {model.config.num_hidden_layers} layers; distill from one of them"
            )

    def targets(
        self, batch: list[_Example], heard: list[_Heard], width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from asr.teacher import align_frames

        frames = int(self.model._get_feat_extract_output_lengths(torch.tensor(width)))
        stride = width / max(frames, 1)
        targets, masks = [], []
        for example, clip in zip(batch, heard, strict=True):
            teacher = self.teacher.frames(str(example.path), clip.clean)
            lead, speech = round(clip.lead_samples / stride), round(clip.speech_samples / stride)
            target, mask = align_frames(teacher, frames, lead, max(speech, 1))
            targets.append(target)
            masks.append(mask)
        return torch.from_numpy(np.stack(targets)), torch.from_numpy(np.stack(masks))

    def loss(
        self, hidden_states: Sequence[torch.Tensor], targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        predicted = self.projection(hidden_states[self.layer].float())
        frames = min(predicted.shape[1], targets.shape[1])
        predicted, targets, mask = predicted[:, :frames], targets[:, :frames], mask[:, :frames]
        l1 = (predicted - targets).abs().mean(dim=-1)
        cosine = torch.nn.functional.cosine_similarity(predicted, targets, dim=-1)
        counted = mask.sum()
        if self.ranks.distributed:
            # A mean over the frames of the whole global batch: divide by every rank's frames,
            # times the world size, since DDP then averages the ranks' gradients.
            counted = sum_tensor_over_ranks(counted, self.ranks) / self.ranks.world_size
        loss: torch.Tensor = ((l1 - cosine) * mask).sum() / counted.clamp(min=1)
        return loss


class _Student(torch.nn.Module):
    """The training loss of a batch (CTC, plus the weighted distillation loss) as one module, so
    that DistributedDataParallel, which averages the gradients of the module it wraps, reaches
    the distillation projection as well as the model."""

    def __init__(self, model: Any, distiller: _Distiller | None, ranks: Ranks) -> None:
        super().__init__()
        self.model = model
        self.projection = distiller.projection if distiller is not None else None
        self.distiller = distiller
        # DDP averages the ranks' gradients. The mean CTC loss of equal shares averages to the
        # global batch's; a summed one ("sum" reduction) needs the world size to add up to it.
        self.ctc_scale = ranks.world_size if model.config.ctc_loss_reduction == "sum" else 1

    def forward(
        self, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss to minimize, and the distillation loss alone (None without distillation)."""
        outputs = self.model(
            inputs["input_values"],
            attention_mask=inputs.get("attention_mask"),
            labels=labels,
            output_hidden_states=self.distiller is not None,
        )
        loss: torch.Tensor = outputs.loss if self.ctc_scale == 1 else outputs.loss * self.ctc_scale
        if self.distiller is None:
            return loss, None
        distill_loss = self.distiller.loss(
            outputs.hidden_states, inputs["teacher_targets"], inputs["teacher_mask"]
        )
        return loss + self.distiller.weight * distill_loss, distill_loss


@dataclass(frozen=True)
class _Drawn:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    sampler_state: Mapping[str, Any]
    """The sampler's state right after this batch was drawn: what a checkpoint taken after its
    step must save, however far ahead the loader has drawn since."""


class _Batches:
    """The training batches of steps `first_step`, `first_step + 1`, ... in order.

    With `ahead` > 0 one thread draws and loads them up to that many steps ahead of the model.
    The draws stay in step order on the one sampler, so what the model hears is the same as
    without it, and a resumed run still hears what an uninterrupted one would."""

    def __init__(
        self,
        draw: Callable[[int], tuple[dict[str, torch.Tensor], torch.Tensor]],
        sampler: _Sampler,
        first_step: int,
        ahead: int,
    ) -> None:
        self._draw, self._sampler, self._step = draw, sampler, first_step
        self._stop = threading.Event()
        self._queue: queue.Queue[_Drawn | BaseException] | None = None
        if ahead > 0:
            self._queue = queue.Queue(maxsize=ahead)
            self._thread = threading.Thread(target=self._produce, name="batches", daemon=True)
            self._thread.start()

    def __enter__(self) -> "_Batches":
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._queue is not None:
            self._thread.join()

    def _make(self) -> _Drawn:
        inputs, labels = self._draw(self._step)
        self._step += 1
        return _Drawn(inputs, labels, self._sampler.rng.bit_generator.state)

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            item: _Drawn | BaseException
            try:
                item = self._make()
            except BaseException as e:  # noqa: BLE001 (handed to the training loop, which raises it)
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> _Drawn:
        if self._queue is None:
            return self._make()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def _device_augmenter(config: TrainConfig, device: str) -> Any:
    from asr.corpus.build import load_noise_bank
    from asr.device_augment import DeviceAugmenter

    noise = config.shared_data / "speech_commands_dev" / "manifest.jsonl" if config.shared_data else None
    bank = load_noise_bank(noise if noise and noise.is_file() else None, "train")
    return DeviceAugmenter(config.augment, [bank[name] for name in sorted(bank)], device)


class _Loader:
    """Reads (from memory when cached), augments and pads a batch; threads for fast devices. With
    `batch_seeds` (augmentation on the device) it only reads and pads, and hands the device one
    seed per batch, drawn in step order."""

    def __init__(
        self,
        config: TrainConfig,
        features: Any,
        device: str,
        augment: _Augmenter | None,
        distiller: Any,
        batch_seeds: np.random.Generator | None = None,
    ) -> None:
        self.features, self.device, self.augment, self.distiller = features, device, augment, distiller
        self.batch_seeds = batch_seeds
        self.pool = ThreadPoolExecutor(config.loader_threads) if config.loader_threads > 1 else None
        self.cache: dict[Path, Samples] = {}
        self.cache_bytes_left = config.cache_audio_mb * 1_000_000

    def _read(self, path: Path) -> Samples:
        if path in self.cache:
            return self.cache[path]
        try:
            samples = load_audio(path, AudioLimits(max_clip_s=60)).samples
        except AudioError as e:
            raise DataError(f"unreadable training clip {path}: {e}") from e
        if samples.nbytes <= self.cache_bytes_left:
            self.cache[path] = samples
            self.cache_bytes_left -= samples.nbytes
        return samples

    def _hear(self, example: _Example, seed: int) -> _Heard:
        clean = self._read(example.path)
        return self.augment(clean, seed) if self.augment else _Heard.unchanged(clean)

    def __call__(
        self, batch: list[_Example], share: slice = slice(None)
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This rank's `share` of the global `batch`. Augmentation seeds are drawn for the whole
        batch, so a clip's augmentation follows its place in the global batch, not the rank."""
        seeds = self.augment.seeds(len(batch)) if self.augment else [0] * len(batch)
        batch, seeds = batch[share], seeds[share]
        mapper = self.pool.map if self.pool else map
        heard = list(mapper(self._hear, batch, seeds))
        clips = [h.samples for h in heard]
        inputs = self.features(clips, sampling_rate=SAMPLE_RATE_HZ, padding=True, return_tensors="pt")
        width = max(1, max(len(e.labels) for e in batch))
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, example in enumerate(batch):
            labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
        tensors = {k: v.to(self.device) for k, v in inputs.items()}
        if self.batch_seeds is not None:
            tensors["augment_seed"] = torch.tensor(int(self.batch_seeds.integers(0, 2**62)))
        if self.distiller is not None:
            targets, mask = self.distiller.targets(batch, heard, max(len(c) for c in clips))
            tensors |= {"teacher_targets": targets.to(self.device), "teacher_mask": mask.to(self.device)}
        return tensors, labels.to(self.device)


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


def _check_same_optimizer(saved: Mapping[str, Any], config: TrainConfig) -> None:
    """Refuse to resume under a new `lr` or `weight_decay`: the optimizer and schedule states a
    checkpoint restores carry the run's own, so the new values would be silently ignored (seen on a
    GPU run resumed with twice the rate). Other settings take effect on resume as they read."""
    group = saved["optimizer"]["param_groups"][0]
    started = {"lr": saved["schedule"]["base_lrs"][0], "weight_decay": group["weight_decay"]}
    asked = {"lr": config.lr, "weight_decay": config.weight_decay}
    changed = [name for name in started if not math.isclose(started[name], asked[name], rel_tol=1e-9)]
    if changed:
        was = ", ".join(f"--{name.replace('_', '-')} {started[name]:g}" for name in changed)
        now = ", ".join(f"{asked[name]:g}" for name in changed)
        raise DataError(
            f"{config.out_dir} was started with {was} (now {now}); a resumed run keeps its optimizer's "
            "settings: resume with the same values, or train into a new --out (with --init to start "
            "from this run's checkpoint)"
        )


def _save_checkpoint(
    model: Any,
    processor_dir: Path,
    optimizer: Any,
    schedule: Any,
    sampler_state: Mapping[str, Any],
    state: TrainState,
    out_dir: Path,
    extra: dict[str, Any] | None = None,
) -> None:
    tmp = out_dir / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, processor_dir, tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "sampler": sampler_state,
            # Dropout and transformers' SpecAugment masks draw from these: without them a resumed
            # run would diverge from an uninterrupted one at its first step.
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "state": asdict(state),
        }
        | (extra or {}),
        tmp / "state.pt",
    )
    final = out_dir / CHECKPOINT
    old = out_dir / (CHECKPOINT + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def average_models(sources: Sequence[Path], out: Path) -> Path:
    """Write the mean of the weights of `sources` (checkpoints of one run) as an fp32 folder.

    Checkpoint averaging, a default at the end of a run in speech toolkits (ESPnet, NeMo): late
    snapshots wander around one basin, and their mean sits nearer its middle than any of them.
    """
    from safetensors.torch import load_file, save_file

    if len(sources) < 2:
        raise DataError("averaging needs at least two model folders")
    missing = [str(s) for s in sources if not (s / "model.safetensors").is_file()]
    if missing:
        raise DataError(f"no model.safetensors in {', '.join(missing)}")
    if out.exists() and not (out / "model.safetensors").is_file():
        raise DataError(f"{out} exists and is not a model folder; pick a new --out")
    total = {k: v.float() for k, v in load_file(sources[0] / "model.safetensors").items()}
    for source in sources[1:]:
        weights = load_file(source / "model.safetensors")
        if weights.keys() != total.keys() or any(weights[k].shape != total[k].shape for k in total):
            raise DataError(
                f"{source} is not the same model shape as {sources[0]}; average one run's snapshots"
            )
        for name, tensor in weights.items():
            total[name] += tensor.float()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        sources[0], tmp, ignore=shutil.ignore_patterns("model.safetensors", "state.pt", "README.md")
    )
    save_file(
        {k: v / len(sources) for k, v in total.items()}, tmp / "model.safetensors", metadata={"format": "pt"}
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def export_model(source: Path, out: Path, card: str | None = None) -> Path:
    """Export a trained folder as the bundled format: fp16 safetensors plus a model card."""
    model = load_ctc_model(source)
    save_model(model, source, out, half=True)
    (out / "state.pt").unlink(missing_ok=True)
    if card:
        (out / "README.md").write_text(card, encoding="utf-8")
    logger.info("exported %s (%s)", out, model_version(out))
    return out
