"""`voice-search`: the command-line interface, one module per command group.

Exit codes: 0 every input succeeded; 1 some inputs failed (each is reported, the rest still
processed); 2 a usage error (bad flags, no inputs, a model or decoder option that cannot load);
3 a broken install (a package fails to load: `make install` cures it).
User errors print one line to stderr, never a traceback: `main` is the one place that maps the
project's errors to exit codes.
"""

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from asr.errors import DataError, DecoderConfigError, DependencyError, ManifestError, ModelLoadError
from monitoring.events import EventStoreError
from serving.cli import (
    client,
    data,
    doctor,
    labels,
    models,
    monitor,
    retrain,
    serve,
    simulate,
    train,
    transcribe,
)
from serving.cli.common import (
    EXIT_BROKEN_INSTALL,
    EXIT_BROKEN_PIPE,
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    OutputClosedError,
    UsageError,
    expand_inputs,
)
from serving.lifecycle.registry import RegistryError
from serving.runtime import limit_allocator_caching
from serving.settings import Settings

__all__ = [
    "EXIT_BROKEN_INSTALL",
    "EXIT_BROKEN_PIPE",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "UsageError",
    "expand_inputs",
    "main",
]

GROUPS = (transcribe, serve, client, data, train, models, labels, retrain, monitor, simulate, doctor)
"""Each module adds its commands (`add_commands`), in this order in `--help`."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every group's commands, as `main` parses them."""
    parser = argparse.ArgumentParser(
        prog="voice-search", description="Offline voice search and speech recognition."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
    except (OutputClosedError, BrokenPipeError):
        # The reader left (`| head`): stop quietly, as Unix tools do, and keep the interpreter's
        # final flush of stdout from raising again (when stdout is a real file descriptor).
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


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
