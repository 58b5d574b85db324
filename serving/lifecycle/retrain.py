"""Retraining: new labels plus a replay of the old data, fine-tuned from the champion, and an
evaluation gate that registers the challenger only when it is better where it should be and no
worse anywhere else.

The steps, in `retrain`:
1. the dataset: the new labels split by session into a training part and a held-out part (the
   "new data" the gate scores), beside replay manifests of the original training data so that
   nothing is forgotten; every manifest's content version is recorded;
2. fine-tuning from the champion (`asr.training`), tracked as an MLflow run;
3. champion and challenger transcribe the held-out labels and every frozen golden set, clip by
   clip in turn (so their speeds are compared side by side on the same machine load), scored
   overall and per slice;
4. the gate (`judge_retrain`): the challenger must beat the champion's WER on the new data, no golden set
   or slice of one may get worse by more than `golden_margin` when a paired sign test over its
   clips says it is worse, and speed and size stay within limits. A passing challenger is
   registered with its lineage and the `challenger` alias; a failing one is not, and why is
   written down (report, MLflow run, audit log).
"""

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asr.corpus.datasets import GoldenSet, dataset_digest
from asr.errors import DataError
from asr.evaluate import Outcome, paired_errors, run_entry, summarize
from asr.manifest import ManifestEntry, read_manifest
from asr.pipeline import Pipeline, build_pipeline
from asr.training import CHECKPOINT, DataSource, TrainConfig, export_model, train
from serving.lifecycle.registry import CHALLENGER, CHAMPION, Lineage, RegisteredModel, Registry, code_commit
from serving.lifecycle.retrain_gate import NEW_DATA, GateDecision, GateLimits, PairScores, judge_retrain
from serving.lifecycle.tracking import TrainingRun
from serving.settings import REPO_ROOT

REPORT = "report.json"
MIN_HELD_OUT = 5
"""Sessions, at least, kept out of training for the gate to score on."""


@dataclass(frozen=True)
class RetrainConfig:
    out_dir: Path
    labels: Path
    """The new labels: a manifest in the shared format (`voice-search labels export` writes one)."""
    golden: tuple[GoldenSet, ...]
    replay: tuple[DataSource, ...] = ()
    new_weight: float = 1.0
    """Sampling weight of the new labels against the replay sources' weights."""
    held_out: float = 0.25
    """Share of the labels' sessions kept out of training to score the challenger on."""
    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-5
    """Peak learning rate. The champion ends its own training annealed (stage 3: to 1.5e-5); at 1e-4
    a 300-step fine-tune left speechocean762 significantly worse, at 5e-5 every golden set held
    (docs/benchmarks.md, "Retraining on a shifted vocabulary")."""
    freeze_layers: int = 0
    """Transformer layers (and everything below them) the fine-tune leaves as they are."""
    max_clip_s: float = 6.0
    seed: int = 0
    limits: GateLimits = field(default_factory=GateLimits)

    def __post_init__(self) -> None:
        if not self.golden:
            raise DataError(
                "the gate needs at least one golden set: freeze one with `voice-search data freeze`"
            )
        if not 0 < self.held_out < 1:
            raise DataError(f"the held-out share must be between 0 and 1, not {self.held_out}")


@dataclass
class RetrainReport:
    out_dir: Path
    champion: dict[str, Any]
    datasets: dict[str, str] = field(default_factory=dict)
    """Manifest -> content version, for every manifest trained or evaluated on."""
    steps: int = 0
    train_s: float = 0.0
    evaluate_s: float = 0.0
    scores: list[PairScores] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    decision: GateDecision | None = None
    registered: dict[str, Any] | None = None
    training_run: str = ""

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["out_dir"] = str(self.out_dir)
        if self.decision is not None:
            row["decision"]["reasons"] = self.decision.reasons
        return row

    def write(self) -> Path:
        path = self.out_dir / REPORT
        path.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
        return path


# 1. The dataset.


def split_labels(labels: Path, out_dir: Path, held_out: float, seed: int) -> tuple[Path, Path]:
    """Write `train.jsonl` and `held_out.jsonl`: whole sessions on one side (one user's redos
    must not be on both). Sessions are ranked by a seeded hash and the first `held_out` share of
    them (at least `MIN_HELD_OUT`) is held out, so a session keeps its side as labels arrive."""
    lines = [line for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    entries = read_manifest(labels)
    rows: dict[str, list[str]] = {}
    for line, entry in zip(lines, entries, strict=True):
        row = json.loads(line)
        group = str(row.get("session_id") or row.get("request_id") or entry.audio.name)
        row["audio"] = str(entry.audio.resolve())
        rows.setdefault(group, []).append(json.dumps(row))
    ranked = sorted(rows, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).digest())
    count = max(MIN_HELD_OUT, round(held_out * len(ranked)))
    if count >= len(ranked):
        raise DataError(
            f"{labels} has {len(entries)} labels in {len(ranked)} sessions: too few to hold out "
            f"{MIN_HELD_OUT} sessions to score on and still train"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, held_path = out_dir / "train.jsonl", out_dir / "held_out.jsonl"
    for path, groups in ((held_path, ranked[:count]), (train_path, ranked[count:])):
        path.write_text("".join(r + "\n" for g in groups for r in rows[g]), encoding="utf-8")
    return train_path, held_path


# 3. Side-by-side evaluation.


def evaluate_pair(
    name: str,
    entries: Sequence[ManifestEntry],
    champion: Pipeline,
    challenger: Pipeline,
    slices: Sequence[str],
) -> PairScores:
    """Both models on every entry, in turn clip by clip, scored overall, per slice and for speed."""
    outcomes: tuple[list[Outcome], list[Outcome]] = ([], [])
    for pipeline in (champion, challenger):  # first calls pay for lazy set-up: not timed
        run_entry(pipeline.transcribe, entries[0])
    for entry in entries:
        outcomes[0].append(run_entry(champion.transcribe, entry))
        outcomes[1].append(run_entry(challenger.transcribe, entry))
    present = [f for f in slices if any(f in e.fields for e in entries)]
    paired: dict[str, list[tuple[int, int, int]]] = {"overall": []}
    for a, b in zip(*outcomes, strict=True):
        clip = paired_errors(a, b)
        if clip is None:
            continue
        keys = ["overall"] + [f"{f}={a.entry.fields.get(f, '(none)')}" for f in present]
        for key in keys:
            paired.setdefault(key, []).append(clip)
    champion_scores, challenger_scores = (summarize(o, by=present).to_dict() for o in outcomes)
    return PairScores(name, champion_scores, challenger_scores, paired)


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or sum(
        p.stat().st_size for p in model_dir.glob("*.bin")
    )


# The loop.


def retrain(
    config: RetrainConfig,
    registry: Registry,
    log: Callable[[str], None] = print,
    pipeline_for: Callable[[Path], Pipeline] = lambda d: build_pipeline(d, device="cpu"),
) -> RetrainReport:
    """Dataset, fine-tune from the champion, evaluate, gate, and register when the gate passes."""
    champion = registry.get(CHAMPION)
    champion_dir = registry.model_dir(CHAMPION)
    report = RetrainReport(
        config.out_dir, {"version": champion.version, "model_version": champion.model_version}
    )
    config.out_dir.mkdir(parents=True, exist_ok=True)
    train_split, held_out = split_labels(
        config.labels, config.out_dir / "dataset", config.held_out, config.seed
    )
    sources = (DataSource(train_split, config.new_weight), *config.replay)
    for manifest in (train_split, held_out, *(s.manifest for s in config.replay)):
        report.datasets[str(manifest)] = dataset_digest(manifest)
    report.datasets |= {str(g.manifest): g.digest for g in config.golden}

    log(f"fine-tuning {champion.model_version} (v{champion.version}) for {config.steps} steps")
    train_config = TrainConfig(
        out_dir=config.out_dir / "train", init=str(champion_dir), train=sources, steps=config.steps,
        batch_size=config.batch_size, lr=config.lr, warmup_steps=max(1, config.steps // 10),
        curriculum_steps=0, eval_every=config.steps, max_clip_s=config.max_clip_s, seed=config.seed,
        freeze_layers=config.freeze_layers,
    )  # fmt: skip
    run = TrainingRun(registry, train_config)
    report.training_run = run.run_id
    started = time.perf_counter()
    state = train(train_config, log=log, on_record=run.record)
    report.steps, report.train_s = state.step, round(time.perf_counter() - started, 1)
    challenger_dir = export_model(train_config.out_dir / CHECKPOINT, config.out_dir / "model")

    log("evaluating champion and challenger side by side")
    started = time.perf_counter()
    pipelines = pipeline_for(champion_dir), pipeline_for(challenger_dir)
    report.scores.append(
        evaluate_pair(NEW_DATA, read_manifest(held_out), *pipelines, config.limits.slice_fields)
    )
    for golden in config.golden:
        entries = read_manifest(golden.manifest)
        report.scores.append(evaluate_pair(golden.ref, entries, *pipelines, config.limits.slice_fields))
    report.evaluate_s = round(time.perf_counter() - started, 1)
    report.sizes = {CHAMPION: weights_bytes(champion_dir), CHALLENGER: weights_bytes(challenger_dir)}
    decision = judge_retrain(report.scores, report.sizes, config.limits, [g.ref for g in config.golden])
    report.decision = decision

    run.client.set_tag(run.run_id, "gate", "passed" if decision.passed else "rejected")
    run.client.set_tag(run.run_id, "gate.golden_sets", ", ".join(decision.golden))
    if not decision.passed:
        run.client.set_tag(run.run_id, "gate.reasons", "; ".join(decision.reasons)[:5000])
    else:
        registered = _register(registry, challenger_dir, champion, report, run.run_id)
        report.registered = {"version": registered.version, "model_version": registered.model_version}
    run.finish(evaluation=report.write())
    return report


def _register(
    registry: Registry, model_dir: Path, champion: RegisteredModel, report: RetrainReport, run_id: str
) -> RegisteredModel:
    lineage = Lineage(
        training_run=run_id,
        parent_model=f"{registry.name} v{champion.version} ({champion.model_version})",
        manifests=report.datasets,
        code_commit=code_commit(REPO_ROOT),
        note="retrained on production labels; passed the gate on "
        + ", ".join(report.decision.golden if report.decision else []),
    )
    registered = registry.register(model_dir, lineage, run_id=run_id)
    return registry.set_alias(CHALLENGER, registered.version)


def audit_details(report: RetrainReport) -> dict[str, Any]:
    """What the audit log keeps of a retrain: enough to know why, without the whole report."""
    decision = report.decision
    return {
        "out_dir": str(report.out_dir),
        "champion": report.champion,
        "registered": report.registered,
        "training_run": report.training_run,
        "golden_sets": decision.golden if decision else [],
        "reasons": decision.reasons if decision else [],
        "pid": os.getpid(),
    }
