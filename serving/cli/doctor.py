"""`voice-search doctor`: is the install complete, and does it work."""

import argparse
import sys

from serving.cli.common import EXIT_BROKEN_INSTALL, EXIT_OK
from serving.settings import Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """doctor."""
    doctor = commands.add_parser(
        "doctor", help="check the install: lock vs pyproject, installed versions, imports, native libraries"
    )
    doctor.set_defaults(command=_doctor)


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    from serving.doctor import run_checks

    problems = run_checks()
    for problem in problems:
        print(f"voice-search doctor: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BROKEN_INSTALL
    print("voice-search doctor: the install is complete and works")
    return EXIT_OK
