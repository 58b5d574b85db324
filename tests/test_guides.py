"""The README and the user guides cannot rot: every `voice-search` command, subcommand and option,
`make` target, HTTP route and project file they name must exist in the code as it is."""

import argparse
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import pytest
from starlette.routing import BaseRoute

from serving.app import create_app
from serving.cli import build_parser
from serving.settings import REPO_ROOT, Settings

GUIDES = (
    "README.md",
    *(f"docs/{name}.md" for name in ("cli", "api", "monitoring", "edge", "training", "deploy",
                                     "automation", "retraining", "simulation", "cluster")),
)  # fmt: skip
"""The user guides. docs/benchmarks.md is a record of what ran when, and keeps old commands."""
SHELL_BREAKS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "<"}
ROUTE = re.compile(
    r"\b(?:GET|POST|PUT|DELETE|WS)\s+(/[\w/{}.:-]*)|(?:127\.0\.0\.1|localhost):8000(/[\w/.-]*)"
)
PROJECT_FILE = re.compile(r"`((?:asr|serving|monitoring|scripts|tests|data|docs)/[\w/.-]+\.\w+)`")


def _text(name: str) -> str:
    return (REPO_ROOT / name).read_text(encoding="utf-8")


def _lines(text: str) -> list[str]:
    """Lines with shell continuations joined, so an option on the next line still counts."""
    return text.replace("\\\n", " ").splitlines()


def _invocations(text: str) -> list[list[str]]:
    """The words after each `voice-search` up to the end of its shell command or its backticks."""
    found = []
    for line in _lines(text):
        for match in re.finditer(r"(?<![\w/-])voice-search\s+([^`#\n]*)", line):
            try:
                words = shlex.split(match.group(1), comments=True)
            except ValueError:
                words = match.group(1).split()
            cut = next((i for i, w in enumerate(words) if w in SHELL_BREAKS or w.startswith(">")), len(words))
            found.append(words[:cut])
    return [words for words in found if words and re.fullmatch(r"[a-z][a-z-]*", words[0])]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _problems_of(words: list[str], root: argparse.ArgumentParser) -> list[str]:
    parser, path = root, ["voice-search"]
    for word in words:
        commands = _subparsers(parser)
        if not commands or word.startswith("-"):
            break
        if word not in commands:
            return [f"{' '.join(path)} has no command {word!r}"]
        parser, path = commands[word], [*path, word]
    options = _options(parser)
    flags = {w.split("=", 1)[0] for w in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", w)}
    return [f"{' '.join(path)} has no option {flag}" for flag in sorted(flags - options)]


def _paths(routes: Sequence[BaseRoute]) -> list[str]:
    """Every path an app serves; FastAPI keeps an included router's routes behind a wrapper."""
    paths: list[str] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        paths += _paths(included.routes) if included is not None else [getattr(route, "path", "")]
    return paths


@pytest.mark.parametrize("guide", GUIDES)
def test_every_command_and_option_named_exists(guide: str) -> None:
    root = build_parser()
    invocations = _invocations(_text(guide))
    problems = [p for words in invocations for p in _problems_of(words, root)]
    assert not problems, f"{guide}: {problems}"


def test_the_guides_name_commands_at_all() -> None:
    """The check above finds what it checks: a guide without a command would pass vacuously."""
    assert len(_invocations(_text("docs/training.md"))) >= 10
    assert _problems_of(["models", "frobnicate"], build_parser()) == [
        "voice-search models has no command 'frobnicate'"
    ]
    assert _problems_of(["train", "--no-such-flag"], build_parser()) == [
        "voice-search train has no option --no-such-flag"
    ]


@pytest.mark.parametrize("guide", GUIDES)
def test_every_make_target_named_exists(guide: str) -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", _text("Makefile"), flags=re.M))
    named = set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", _text(guide)))
    assert named <= targets, f"{guide} names make targets that do not exist: {sorted(named - targets)}"


@pytest.mark.parametrize("guide", GUIDES)
def test_every_route_named_exists(guide: str, tmp_path: Path) -> None:
    app = create_app(Settings(db_path=tmp_path / "events.sqlite3"))  # routes only: nothing is loaded
    paths = _paths(app.routes)
    assert "/v1/search" in paths and len(paths) > 20
    patterns = [re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path) + "/?") for path in paths]
    named = {(a or b).rstrip(":,") for a, b in ROUTE.findall(_text(guide))} - {""}  # prose punctuation

    def exists(path: str) -> bool:
        if path.endswith(("...", "/")) or path == "/v1":  # "/v1/admin/...", a base URL: a route under it
            return any(p.startswith(path.rstrip(".")) for p in paths)
        return any(p.fullmatch(path.rstrip(".")) for p in patterns)

    missing = [path for path in sorted(named) if not exists(path)]
    assert not missing, f"{guide} names routes the service does not have: {missing}"


@pytest.mark.parametrize("guide", GUIDES)
def test_every_project_file_named_exists(guide: str) -> None:
    named = set(PROJECT_FILE.findall(_text(guide)))
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert not missing, f"{guide} names files that do not exist: {missing}"
