"""The training loop: fine-tune (or train from scratch) a wav2vec2 CTC model on weighted manifests.

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

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.decoding import GreedyDecoder
from asr.distributed import (
    Ranks,
    data_parallel,
    gather_on_every_rank,
    made_on_main,
    process_group,
    sum_over_ranks,
)
from asr.errors import DataError
from asr.evaluate import run_entry, summarize
from asr.manifest import ManifestEntry, read_manifest
from asr.model import Recognizer, create_model_dir, load_ctc_model, resolve_device, vocabulary_from_tokenizer
from asr.pipeline import Pipeline
from asr.pretrained import adapt_checkpoint
from asr.text import normalize_text
from asr.training.checkpoints import (
    BEST,
    CHECKPOINT,
    METRICS,
    SNAPSHOTS,
    generators,
    restore_checkpoint,
    save_checkpoint,
    save_model,
)
from asr.training.config import (
    WHISPER_START,
    TrainConfig,
    TrainingClock,
    TrainState,
    adapts_checkpoint,
    lr_factor,
)
from asr.training.data import (
    Augmenter,
    Batches,
    Drawn,
    Loader,
    Sampler,
    check_training_data,
    device_augmenter,
    load_examples,
)
from asr.training.distill import Distiller, Student
from asr.vad import SileroVAD


def _initial_model_dir(config: TrainConfig, log: Callable[[str], None]) -> Path:
    if config.init.startswith("scratch:"):
        return create_model_dir(config.out_dir / "init", shape=config.init.split(":", 1)[1], seed=config.seed)
    if config.init.startswith(WHISPER_START):
        from asr.whisper_start import write_whisper_ctc
        from asr.whisper_weights import read_ctranslate2, whisper_weights_dir

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


@dataclass
class _Run:
    """What a run holds while it trains: built once by `_prepare`, then stepped."""

    config: TrainConfig
    ranks: Ranks
    device: str
    log: Callable[[str], None]
    source_dir: Path
    model: Any
    features: Any
    sampler: Sampler
    distiller: Distiller | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    clock: TrainingClock
    forward: Any
    loader: Loader
    device_augmenter: Any
    dev: list[ManifestEntry]
    dev_pipeline: Pipeline | None
    losses: list[float] = field(default_factory=list)
    distill_losses: list[float] = field(default_factory=list)

    def draw(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This rank's share of step `step`'s batch, read, augmented and padded."""
        limit = self.config.curriculum_clip_s if step < self.config.curriculum_steps else None
        size = self.config.batch_size
        if self.config.length_buckets > 1:
            batch = self.sampler.bucketed(size, limit, step, self.config.length_buckets, self.config.seed)
        else:
            batch = self.sampler.batch(size, limit)
        return self.loader(batch, self.ranks.share(size))


def _train(
    config: TrainConfig,
    ranks: Ranks,
    device: str,
    log: Callable[[str], None],
    on_record: Callable[[dict[str, Any]], None] | None,
) -> TrainState:
    # Each rank its own dropout and SpecAugment draws (transformers draws wav2vec2's SpecAugment
    # masks from numpy's global generator); rank 0, like a single process, is seeded with `seed`.
    torch.manual_seed(config.seed + ranks.rank)
    np.random.seed(config.seed + ranks.rank)
    run = _prepare(config, ranks, device, log)
    window_started = time.perf_counter()
    with (
        run.clock.pauses,
        Batches(run.draw, run.sampler, run.state.step, config.prefetch_batches) as batches,
    ):
        while run.state.step < config.steps:
            drawn = batches.next()
            out_of_time = _step(run, drawn)
            if run.state.step % config.log_every == 0:
                _log_progress(run, (time.perf_counter() - window_started) / config.log_every)
                window_started = time.perf_counter()
            if run.state.step % config.eval_every == 0 or run.state.step == config.steps or out_of_time:
                run.state.elapsed_s = run.clock.elapsed_s()
                _save(run, _evaluate(run), drawn, on_record)
            if out_of_time:
                log(f"stopped at step {run.state.step}: --max-minutes {config.max_minutes} reached")
                break
    return run.state


def _load_model(config: TrainConfig, source_dir: Path, device: str) -> tuple[Any, Any, Recognizer]:
    """The model to train, its feature extractor, and a recognizer over it (for the dev set)."""
    from transformers import AutoFeatureExtractor, AutoTokenizer

    model = load_ctc_model(source_dir).to(device)
    features = AutoFeatureExtractor.from_pretrained(source_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source_dir, local_files_only=True)
    recognizer = Recognizer(model, features, vocabulary_from_tokenizer(tokenizer), device, version="training")
    if config.freeze_feature_encoder or adapts_checkpoint(config):
        model.freeze_feature_encoder()
    if config.freeze_layers:
        freeze_lower_layers(model, config.freeze_layers)
    _set_spec_augment(model, config.mask_time_prob, config.mask_feature_prob)
    return model, features, recognizer


def _prepare(config: TrainConfig, ranks: Ranks, device: str, log: Callable[[str], None]) -> _Run:
    """Model, data, optimizer and schedule, resumed from the run's checkpoint when it has one.
    The order of construction is part of the seed: each draws from the global generators."""
    resume = config.out_dir / CHECKPOINT
    source_dir = made_on_main(lambda: _source_dir(config, log), ranks)
    model, features, recognizer = _load_model(config, source_dir, device)
    if ranks.is_main:
        check_training_data(config)
    sources = [load_examples(s, recognizer.vocab, config.max_clip_s) for s in config.train]
    sampler = Sampler(sources, [s.weight for s in config.train], config.seed)
    distiller = Distiller(config, model, device, ranks) if config.distill_weight else None
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, distiller, config), weight_decay=config.weight_decay
    )
    clock = TrainingClock(config.max_minutes)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, clock.share())
    )
    state = TrainState()
    if source_dir == resume:
        projection = distiller.projection if distiller is not None else None
        state = restore_checkpoint(resume, optimizer, schedule, sampler.rng, projection, config, ranks, log)
        clock.resume(state.elapsed_s)
    # After the checkpoint is loaded: DDP starts every rank from rank 0's parameters.
    forward = data_parallel(Student(model, distiller, ranks), ranks)
    on_device = bool(config.augment) and config.augment_on_device
    augmenter = Augmenter(config, sampler.rng) if config.augment and not on_device else None
    loader = Loader(config, features, device, augmenter, distiller, sampler.rng if on_device else None)
    dev = _dev_entries(config) if ranks.is_main else []
    dev_pipeline = Pipeline(recognizer, GreedyDecoder(recognizer.vocab), SileroVAD.load()) if dev else None
    if ranks.is_main:
        (config.out_dir / "config.json").write_text(json.dumps(asdict(config), default=str, indent=1))
    return _Run(
        config, ranks, device, log, source_dir, model, features, sampler, distiller, optimizer, schedule,
        state, clock, forward, loader, device_augmenter(config, device) if on_device else None, dev,
        dev_pipeline,
    )  # fmt: skip


def _step(run: _Run, drawn: Drawn) -> bool:
    """One optimizer step on `drawn`. True when the clock says stop, on every rank alike: a rank
    that stopped alone would leave the others waiting."""
    run.model.train()
    inputs = drawn.inputs
    if run.device_augmenter is not None:
        inputs = run.device_augmenter.apply(
            inputs, normalize=bool(getattr(run.features, "do_normalize", False))
        )
    use_amp = run.device == "cuda" and run.config.amp
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
        loss, distill_loss = run.forward(inputs, drawn.labels)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Every rank holds the same all-reduced gradient, so every rank takes the same decision.
    if torch.isfinite(torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)):
        run.optimizer.step()
    else:
        run.state.skipped_steps += 1
    run.schedule.step()
    run.state.step += 1
    # The global batch's losses are the means of the ranks' (equal shares).
    step_loss, step_distill, ranks_out_of_time = sum_over_ranks(
        [
            float(loss.detach()),
            float(distill_loss.detach()) if distill_loss is not None else 0.0,
            float(run.clock.out_of_time()),
        ],
        run.ranks,
        run.device,
    )
    run.losses.append(step_loss / run.ranks.world_size)
    if distill_loss is not None:
        run.distill_losses.append(step_distill / run.ranks.world_size)
    return ranks_out_of_time > 0


def _log_progress(run: _Run, per_step_s: float) -> None:
    recent = float(np.nanmean(run.losses[-run.config.log_every :]))
    lr = run.schedule.get_last_lr()[0]
    skipped = f" ({run.state.skipped_steps} skipped)" if run.state.skipped_steps else ""
    run.log(f"step {run.state.step} loss {recent:.3f} lr {lr:.2e} {per_step_s:.2f} s/step{skipped}")


def _evaluate(run: _Run) -> dict[str, Any]:
    """The record of the steps since the last one, with the dev metrics; keeps the best model."""
    state = run.state
    record: dict[str, Any] = {
        "step": state.step,
        "loss": float(np.nanmean(run.losses)),
        "lr": run.schedule.get_last_lr()[0],
        "elapsed_s": round(state.elapsed_s, 1),
    }
    if state.skipped_steps:
        record["skipped_steps"] = state.skipped_steps
    if run.distill_losses:
        record["distill_loss"] = float(np.mean(run.distill_losses))
    run.losses, run.distill_losses = [], []
    if run.dev_pipeline is not None:
        run.model.eval()
        record |= _evaluate_dev(run.dev_pipeline, run.dev, run.log)
        # CER breaks WER ties: early in training every model scores WER 1.0.
        score = (float(record["dev_wer"]), float(record["dev_cer"] or 1.0))
        if score < (state.best_wer, state.best_cer):
            state.best_wer, state.best_cer = score
            save_model(run.model, run.source_dir, run.config.out_dir / BEST)
    state.history.append(record)
    return record


def _save(
    run: _Run, record: dict[str, Any], drawn: Drawn, on_record: Callable[[dict[str, Any]], None] | None
) -> None:
    """Append `record` to the metrics, keep a snapshot when one is due, and write the checkpoint."""
    config, state = run.config, run.state
    extra: dict[str, Any] = {}
    if run.distiller is not None:
        extra["projection"] = run.distiller.projection.state_dict()
    if run.ranks.distributed:  # every rank's dropout draws continue where they stopped
        extra["rank_generators"] = gather_on_every_rank(generators(), run.ranks)
    if not run.ranks.is_main:
        return
    with (config.out_dir / METRICS).open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    run.log(json.dumps(record))
    if on_record is not None:
        on_record(record)
    if config.keep_every and state.step % config.keep_every == 0:
        save_model(run.model, run.source_dir, config.out_dir / SNAPSHOTS / f"step-{state.step}", half=True)
    save_checkpoint(
        run.model,
        run.source_dir,
        run.optimizer,
        run.schedule,
        drawn.sampler_state,
        state,
        config.out_dir,
        extra,
    )


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
