"""What every command group shares: the exit codes, the usage error, input expansion, and the
recognition options (model, decoding, limits) of the commands that run the pipeline."""

import argparse
import glob
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from asr.audio import AUDIO_SUFFIXES, AudioLimits
from asr.decoding import BeamOptions, read_word_list
from asr.lm import LM_WEIGHT, WORD_SCORE
from asr.model import Device
from asr.pipeline import Pipeline, PipelineOptions, build_pipeline
from serving.settings import DEFAULT_MODEL_DIR, Settings

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_BROKEN_INSTALL = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 141
"""The reader of stdout left (`| head`): what a shell reports for a tool SIGPIPE ended."""


class OutputClosedError(Exception):
    """The reader of stdout left (`| head`): `main` ends the command quietly with `EXIT_BROKEN_PIPE`."""


def emit(line: str) -> None:
    """One line of a command's output, sent now. A closed stdout raises `OutputClosedError`, so that a
    command talking to a socket can tell its own reader leaving from the server's connection
    breaking (both are `BrokenPipeError`)."""
    try:
        print(line, flush=True)
    except BrokenPipeError as e:
        raise OutputClosedError from e


class UsageError(Exception):
    """A problem with how the command was called: reported in one line, exit code 2."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_recognition_options(parser: argparse.ArgumentParser) -> None:
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
        "--beam-size", type=positive_int, metavar="N", help="beam search with N hypotheses (default: greedy)"
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
    group.add_argument("--batch-size", type=positive_int, metavar="N", help="speech segments per model call")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def pipeline_factory(args: argparse.Namespace, settings: Settings) -> "partial[Pipeline]":
    """The pipeline the options ask for, checked here but built by the caller: in this process,
    or in each Ray actor (a `partial` of `build_pipeline` pickles by reference)."""
    model_dir: Path = args.model or settings.model_dir
    if not model_dir.is_dir():
        hint = " (the bundled model is not in this checkout yet)" if model_dir == DEFAULT_MODEL_DIR else ""
        raise UsageError(f"no model folder at {model_dir}{hint}; pass --model DIR with a local checkpoint")
    beam = beam_options(args)
    device: Device = args.device or settings.device
    options = PipelineOptions(
        limits=AudioLimits(max_clip_s=args.max_clip_s or settings.max_clip_s),
        batch_size=args.batch_size or settings.batch_size,
    )
    return partial(
        build_pipeline, model_dir, device=device, use_vad=not args.no_vad, beam=beam, options=options
    )


def beam_options(args: argparse.Namespace) -> BeamOptions | None:
    wants_beam = args.beam_size or args.hotwords or args.lexicon or args.lm
    if not wants_beam:
        return None
    return BeamOptions(
        beam_size=args.beam_size or BeamOptions.beam_size,
        lexicon=read_word_list(args.lexicon) if args.lexicon else None,
        lm_path=args.lm,
        lm_weight=LM_WEIGHT if args.lm_weight is None else args.lm_weight,
        word_score=args.word_score if args.word_score is not None else default_word_score(args.lm),
        hotwords=read_word_list(args.hotwords) if args.hotwords else (),
    )


def default_word_score(lm: Path | None) -> float:
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
