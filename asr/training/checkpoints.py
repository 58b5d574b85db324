"""A run's folder on disk: checkpoints written atomically and resumed, the best model, fp16
snapshots, averaging late snapshots, and export to the bundled format."""

import copy
import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.distributed import Ranks
from asr.errors import DataError
from asr.model import load_ctc_model, model_version
from asr.training.config import TrainConfig, TrainState

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST = "best"
METRICS = "metrics.jsonl"
SNAPSHOTS = "steps"


def generators() -> dict[str, Any]:
    """This process's torch and numpy global generator states (dropout, SpecAugment masks)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def restore_generators(saved: dict[str, Any], ranks: Ranks, log: Callable[[str], None]) -> None:
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


def check_same_optimizer(saved: Mapping[str, Any], config: TrainConfig) -> None:
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


def restore_checkpoint(
    checkpoint: Path,
    optimizer: Any,
    schedule: Any,
    sampler_rng: np.random.Generator,
    projection: torch.nn.Module | None,
    config: TrainConfig,
    ranks: Ranks,
    log: Callable[[str], None],
) -> TrainState:
    """Put the optimizer, schedule, sampler, generators and distillation projection back as
    `checkpoint` left them, and return the run's progress."""
    saved = torch.load(checkpoint / "state.pt", weights_only=False)
    check_same_optimizer(saved, config)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    sampler_rng.bit_generator.state = saved["sampler"]
    if "torch_rng" in saved:  # absent from checkpoints written before the generators were saved
        restore_generators(saved, ranks, log)
    state = TrainState(**saved["state"])
    if projection is not None and "projection" in saved:
        projection.load_state_dict(saved["projection"])
    log(f"resumed at step {state.step}")
    return state


def save_checkpoint(
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
