"""`voice-search models ...`: the registry for people who do not know MLflow.

    voice-search models list                     # versions, aliases, content versions
    voice-search models show champion            # one version with its lineage
    voice-search models register runs/v2/best --parent champion --manifest corpus/real_train.jsonl
    voice-search models promote 3                # 3 becomes champion, the old champion previous
    voice-search models rollback                 # previous becomes champion again
    voice-search models alias challenger 3       # any alias by hand

The bundled model is registered as the first champion the first time any of these runs.
"""

import argparse
import json
import sys
from pathlib import Path

from asr.corpus.datasets import dataset_digest
from asr.model import model_version
from serving.cli.common import EXIT_OK
from serving.lifecycle.registry import (
    FAILED_GATES,
    RUN_ID_FILE,
    Lineage,
    RegisteredModel,
    Registry,
    RegistryError,
    code_commit,
    registry_for,
)
from serving.settings import REPO_ROOT, Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    models = commands.add_parser(
        "models", help="the model registry (MLflow): versions, lineage, aliases"
    ).add_subparsers(required=True, metavar="ACTION")
    listing = models.add_parser("list", help="every registered version, newest first")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(command=_list)

    show = models.add_parser("show", help="one version (number or alias) with its lineage")
    show.add_argument("ref", help="a version number or an alias (champion, challenger, previous)")
    show.set_defaults(command=_show)

    register = models.add_parser("register", help="register a model folder as a new version")
    register.add_argument("model_dir", type=Path)
    register.add_argument(
        "--training-dir",
        type=Path,
        help="the `voice-search train --out` folder it came from: its MLflow run, manifests and start model",
    )
    register.add_argument("--parent", help="the version or alias it was trained from")
    register.add_argument(
        "--manifest", type=Path, action="append", default=[], help="training data (repeatable)"
    )
    register.add_argument("--run-id", help="the MLflow training run that made it")
    register.add_argument("--note", default="")
    register.add_argument("--alias", choices=("challenger",), help="also give it this alias")
    register.set_defaults(command=_register)

    promote = models.add_parser("promote", help="make a version champion (the old one becomes previous)")
    promote.add_argument("ref")
    promote.set_defaults(command=_promote)

    rollback = models.add_parser("rollback", help="make the previous champion champion again")
    rollback.set_defaults(command=_rollback)

    alias = models.add_parser("alias", help="point an alias at a version")
    alias.add_argument("alias", choices=("champion", "challenger", "previous"))
    alias.add_argument("ref")
    alias.set_defaults(command=_alias)


def open_registry(settings: Settings) -> Registry:
    """The configured registry, with the bundled model registered as champion on first use."""
    registry = registry_for(settings.mlflow_tracking_uri, settings.mlflow_dir, settings.registry_name)
    registry.ensure_champion(settings.model_dir)
    return registry


def _line(model: RegisteredModel) -> str:
    # A model that failed its canary gates has no alias and never will: say so rather than "-".
    aliases = ",".join(model.aliases) or ("failed gates" if model.tags.get(FAILED_GATES) else "-")
    return f"{model.version:>4}  {aliases:28s} {model.model_version:32s} run {model.run_id[:12]}"


def _list(args: argparse.Namespace, settings: Settings) -> int:
    versions = open_registry(settings).versions()
    if args.json:
        print(json.dumps([_as_dict(v) for v in versions], indent=1))
    else:
        print("   #  aliases                      model version                    source")
        for version in versions:
            print(_line(version))
    return EXIT_OK


def _show(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(_as_dict(open_registry(settings).get(args.ref)), indent=1))
    return EXIT_OK


def _register(args: argparse.Namespace, settings: Settings) -> int:
    registry = open_registry(settings)
    run_id, manifests, parent = args.run_id, list(args.manifest), ""
    if args.training_dir:
        run_id, trained_from, training_manifests = read_training_dir(args.training_dir)
        manifests += training_manifests
        parent = (
            model_version(trained_from) if (trained_from / "config.json").is_file() else str(trained_from)
        )
    missing = [str(m) for m in manifests if not m.is_file()]
    if missing:
        raise RegistryError(f"no such manifest: {', '.join(missing)}")
    if args.parent:
        parent = registry.get(args.parent).model_version
    lineage = Lineage(
        training_run=run_id or "",
        parent_model=parent,
        manifests={str(m): dataset_digest(m) for m in manifests},
        code_commit=code_commit(REPO_ROOT),
        note=args.note,
    )
    registered = registry.register(args.model_dir, lineage, run_id=run_id)
    if args.alias:
        registered = registry.set_alias(args.alias, registered.version)
    print(_line(registered))
    return EXIT_OK


def read_training_dir(folder: Path) -> tuple[str | None, Path, list[Path]]:
    """A training folder's MLflow run id (if tracked), start model and training manifests."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RegistryError(f"{folder} is not a training folder (no readable config.json): {e}") from e
    run_file = folder / RUN_ID_FILE
    run_id = run_file.read_text().strip() if run_file.is_file() else None
    return run_id, Path(config["init"]), [Path(source["manifest"]) for source in config["train"]]


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    print(_line(open_registry(settings).promote(args.ref)))
    return EXIT_OK


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    registry = open_registry(settings)
    champion = registry.rollback()
    print(_line(champion))
    previous = registry.alias("previous")
    # Rollback swaps champion and previous: say so, so that a second one does not flip back silently.
    then = f"version {previous.version} ({previous.model_version})" if previous else "nothing"
    print(
        f"now serving (once servers follow): version {champion.version} ({champion.model_version}); "
        f"previous is {then}, and another rollback would make it champion again",
        file=sys.stderr,
    )
    return EXIT_OK


def _alias(args: argparse.Namespace, settings: Settings) -> int:
    print(_line(open_registry(settings).set_alias(args.alias, args.ref)))
    return EXIT_OK


def _as_dict(model: RegisteredModel) -> dict[str, object]:
    return {
        "version": model.version,
        "aliases": list(model.aliases),
        "model_version": model.model_version,
        "run_id": model.run_id,
        "created_ms": model.created_ms,
        "lineage": model.lineage,
    }
