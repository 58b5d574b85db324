"""What the model hears: labelled clips checked and encoded, weighted (and length-bucketed)
sampling, on-the-fly augmentation, and batches read, padded and prefetched in step order."""

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import SAMPLE_RATE_HZ, AudioLimits, Samples, load_audio
from asr.errors import AudioError, DataError
from asr.manifest import read_manifest
from asr.model import Vocabulary
from asr.text import normalize_text
from asr.training.config import DataSource, TrainConfig


@dataclass
class Example:
    path: Path
    labels: list[int]
    duration_s: float


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


def load_examples(source: DataSource, vocab: Vocabulary, max_clip_s: float) -> list[Example]:
    examples = []
    for entry in read_manifest(source.manifest):
        duration = float(entry.fields.get("duration_s", 0) or 0)
        if duration > max_clip_s:
            continue
        examples.append(Example(entry.audio, encode_labels(entry.text, vocab), duration))
    if not examples:
        raise DataError(f"{source.manifest} has no clips of at most {max_clip_s} s")
    return examples


class Sampler:
    """Weighted choice of source, then uniform choice of clip; state is one seeded generator.

    With a length limit, each source is narrowed to its clips within the limit (once per limit)
    and sources with none drop out, rather than redrawing until a short clip turns up.
    """

    def __init__(self, sources: Sequence[list[Example]], weights: Sequence[float], seed: int) -> None:
        self.sources = sources
        self.weights = weights
        self.rng = np.random.default_rng(seed)
        self._views: dict[float | None, tuple[list[list[Example]], np.ndarray]] = {}

    def _view(self, max_clip_s: float | None) -> tuple[list[list[Example]], np.ndarray]:
        if max_clip_s not in self._views:
            pools = [[e for e in s if max_clip_s is None or e.duration_s <= max_clip_s] for s in self.sources]
            weights = np.array([w if pool else 0.0 for w, pool in zip(self.weights, pools, strict=True)])
            if not weights.sum():
                raise DataError(f"no training clip is at most {max_clip_s} s long (the curriculum limit)")
            self._views[max_clip_s] = (pools, weights / weights.sum())
        return self._views[max_clip_s]

    def batch(self, size: int, max_clip_s: float | None) -> list[Example]:
        return self._draw(self.rng, size, max_clip_s)

    def _draw(self, rng: np.random.Generator, size: int, max_clip_s: float | None) -> list[Example]:
        pools, weights = self._view(max_clip_s)
        out = []
        for _ in range(size):
            pool = pools[int(rng.choice(len(pools), p=weights))]
            out.append(pool[int(rng.integers(len(pool)))])
        return out

    def bucketed(
        self, size: int, max_clip_s: float | None, step: int, buckets: int, seed: int
    ) -> list[Example]:
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


@dataclass(frozen=True)
class Heard:
    """A clip as the student hears it, and where the clean speech lies in it (for the teacher)."""

    samples: Samples
    clean: Samples
    lead_samples: int = 0
    speech_samples: int = 0

    @classmethod
    def unchanged(cls, clean: Samples) -> "Heard":
        return cls(clean, clean, 0, len(clean))


class Augmenter:
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

    def __call__(self, clean: Samples, seed: int) -> Heard:
        from asr.corpus.augment import apply, draw_training_spec

        rng = np.random.default_rng(seed)
        if rng.random() >= self.share:
            return Heard.unchanged(clean)
        spec = draw_training_spec(rng, self.names)
        heard = apply(clean, spec, rng, self.noise_bank)
        lead = spec.lead_silence_ms * SAMPLE_RATE_HZ // 1000
        return Heard(heard, clean, lead, round(len(clean) / spec.speed))


@dataclass(frozen=True)
class Drawn:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    sampler_state: Mapping[str, Any]
    """The sampler's state right after this batch was drawn: what a checkpoint taken after its
    step must save, however far ahead the loader has drawn since."""


class Batches:
    """The training batches of steps `first_step`, `first_step + 1`, ... in order.

    With `ahead` > 0 one thread draws and loads them up to that many steps ahead of the model.
    The draws stay in step order on the one sampler, so what the model hears is the same as
    without it, and a resumed run still hears what an uninterrupted one would."""

    def __init__(
        self,
        draw: Callable[[int], tuple[dict[str, torch.Tensor], torch.Tensor]],
        sampler: Sampler,
        first_step: int,
        ahead: int,
    ) -> None:
        self._draw, self._sampler, self._step = draw, sampler, first_step
        self._stop = threading.Event()
        self._queue: queue.Queue[Drawn | BaseException] | None = None
        if ahead > 0:
            self._queue = queue.Queue(maxsize=ahead)
            self._thread = threading.Thread(target=self._produce, name="batches", daemon=True)
            self._thread.start()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._queue is not None:
            self._thread.join()

    def _make(self) -> Drawn:
        inputs, labels = self._draw(self._step)
        self._step += 1
        return Drawn(inputs, labels, self._sampler.rng.bit_generator.state)

    def _produce(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            item: Drawn | BaseException
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

    def next(self) -> Drawn:
        if self._queue is None:
            return self._make()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


def device_augmenter(config: TrainConfig, device: str) -> Any:
    from asr.corpus.build import load_noise_bank
    from asr.device_augment import DeviceAugmenter

    noise = config.shared_data / "speech_commands_dev" / "manifest.jsonl" if config.shared_data else None
    bank = load_noise_bank(noise if noise and noise.is_file() else None, "train")
    return DeviceAugmenter(config.augment, [bank[name] for name in sorted(bank)], device)


class Loader:
    """Reads (from memory when cached), augments and pads a batch; threads for fast devices. With
    `batch_seeds` (augmentation on the device) it only reads and pads, and hands the device one
    seed per batch, drawn in step order."""

    def __init__(
        self,
        config: TrainConfig,
        features: Any,
        device: str,
        augment: Augmenter | None,
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

    def _hear(self, example: Example, seed: int) -> Heard:
        clean = self._read(example.path)
        return self.augment(clean, seed) if self.augment else Heard.unchanged(clean)

    def __call__(
        self, batch: list[Example], share: slice = slice(None)
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
