"""What a training run is: its data sources, its settings, its progress, and its learning-rate schedule."""

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.distributed import split_batch
from asr.errors import DataError
from asr.model import Device
from asr.pretrained import speaks_our_vocabulary

SCHEDULES = ("auto", "linear", "tri-stage")
TRI_STAGE_SHARES = (0.1, 0.4, 0.5)
"""Warm-up, hold and decay shares of the steps (wav2vec 2.0's fine-tuning schedule)."""


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
class TrainState:
    step: int = 0
    best_wer: float = math.inf
    best_cer: float = math.inf
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    """Steps whose gradient was not finite: applied, one such step turns every weight into NaN."""
    history: list[dict[str, Any]] = field(default_factory=list)


WHISPER_START = "whisper:"
"""`--init whisper:` starts from Whisper tiny.en's encoder (`whisper:DIR`: a CTranslate2 folder)."""


def is_built_start(init: str) -> bool:
    """True when `init` names a start this project builds (`scratch:SHAPE`, `whisper:`), not a folder."""
    return init.startswith(("scratch:", WHISPER_START))


def adapts_checkpoint(config: TrainConfig) -> bool:
    """True when `init` is a checkpoint over another vocabulary, or one without a CTC head."""
    return not is_built_start(config.init) and not speaks_our_vocabulary(Path(config.init))


def schedule_name(config: TrainConfig) -> str:
    if config.schedule == "auto":
        return "tri-stage" if adapts_checkpoint(config) else "linear"
    return config.schedule


class PauseMeter:
    """Time the process spent stopped (`kill -STOP` while a benchmark or CI runs, a suspended
    machine), measured by a heartbeat thread: a stopped process runs no thread, so a beat that
    comes far later than it was due measures the stop. Late beats under `min_gap_s` count as
    running time: a loaded machine may delay a wake-up by a few seconds, never by half a minute."""

    def __init__(self, beat_s: float = 1.0, min_gap_s: float = 30.0) -> None:
        self.beat_s, self.min_gap_s = beat_s, min_gap_s
        self._paused_s = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def paused_s(self) -> float:
        with self._lock:
            return self._paused_s

    def __enter__(self) -> "PauseMeter":
        self._done.clear()
        self._thread = threading.Thread(target=self._beat, name="pause-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        last = time.perf_counter()
        while not self._done.wait(self.beat_s):
            now = time.perf_counter()
            late = now - last - self.beat_s
            if late >= self.min_gap_s:
                with self._lock:
                    self._paused_s += late
            last = now


@dataclass
class TrainingClock:
    """`max_minutes` of training time counted across resumes: a resumed run has only what the
    runs before it left, and its learning rate goes on decaying from where they stopped (before,
    each resume started a fresh budget and sent the rate back up). Time the process spends
    stopped is not training time (before, a run paused for a CI run lost that much of its
    budget and its learning rate fell early)."""

    max_minutes: float | None
    spent_s: float = 0.0
    """Training time before this process: the checkpoint's `elapsed_s`."""
    started: float = field(default_factory=time.perf_counter)
    pauses: PauseMeter = field(default_factory=PauseMeter)
    """Runs around the training loop (`_train`), after any `resume`."""

    def resume(self, spent_s: float) -> None:
        self.spent_s, self.started = spent_s, time.perf_counter()

    def elapsed_s(self) -> float:
        """Training time so far, across resumes, less the time this process spent stopped."""
        return self.spent_s + time.perf_counter() - self.started - self.pauses.paused_s()

    def share(self) -> float:
        """The share of `max_minutes` spent (0 without a deadline)."""
        if not self.max_minutes:
            return 0.0
        return self.elapsed_s() / (60 * self.max_minutes)

    def out_of_time(self) -> bool:
        return self.share() >= 1.0


def lr_factor(step: int, config: TrainConfig, clock_share: float = 0.0) -> float:
    """The learning rate's multiplier at `step`. `clock_share` is the share of `max_minutes`
    spent: with a deadline either schedule's decay runs to whichever end comes first, the last
    step or the deadline, so a run stopped by the clock still ends on a small learning rate."""
    if schedule_name(config) == "tri-stage":
        warmup_share, hold_share = TRI_STAGE_SHARES[:2]
        warmup = int(warmup_share * config.steps)
        if step < warmup:  # the warm-up goes by steps, as the linear one does
            return config.final_lr_ratio + (1 - config.final_lr_ratio) * step / max(1, warmup)
        done = max(clock_share, step / max(1, config.steps))
        if done < warmup_share + hold_share:
            return 1.0
        progress = min(1.0, (done - warmup_share - hold_share) / (1 - warmup_share - hold_share))
        return float(config.final_lr_ratio**progress)
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = max(clock_share, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return 1.0 - (1.0 - config.final_lr_ratio) * min(1.0, progress)
