"""`voice-search corpus build`, `data check|freeze|golden` and `lm build`: the data the models
learn from and are judged on."""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from serving.cli.common import EXIT_OK, EXIT_SOME_FAILED, positive_int
from serving.cli.retrain import add_golden_commands
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_SHARED_DATA, Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """corpus, data and lm."""
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
    build.add_argument("--workers", type=positive_int, default=2)
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(command=_corpus_build)

    data = commands.add_parser("data", help="check training data").add_subparsers(
        required=True, metavar="ACTION"
    )
    check = data.add_parser("check", help="label consistency and audio statistics of a manifest")
    check.add_argument("manifest", type=Path, metavar="MANIFEST")
    check.add_argument(
        "--sample", type=positive_int, metavar="N", help="measure audio on N random clips only"
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


def _lm_build(args: argparse.Namespace, settings: Settings) -> int:
    from asr.lm import build_lm, corpus_sentences

    files = build_lm(
        corpus_sentences(args.text), args.out, order=args.order, exclude=corpus_sentences(args.exclude)
    )
    print(json.dumps(asdict(files), default=str))
    print(f"use it with: transcribe --lexicon {files.lexicon} --lm {files.arpa}", file=sys.stderr)
    return EXIT_OK
