"""`voice-search labels export`: production labels as a training manifest, checked."""

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from monitoring.alarms import parse_duration
from monitoring.events import SQLiteEventStore
from serving.cli.common import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from serving.lifecycle.labels import STRENGTHS, export_labels
from serving.lifecycle.review import REVIEW_LABELS
from serving.settings import Settings

EXIT_CHECK_FAILED = EXIT_SOME_FAILED


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    labels = commands.add_parser("labels", help="labels from production traffic").add_subparsers(
        required=True, metavar="ACTION"
    )
    export = labels.add_parser(
        "export", help="corrections, clicks and typed queries on kept audio, as a checked manifest"
    )
    export.add_argument("--out", type=Path, required=True, help="folder for manifest.jsonl and audio/")
    export.add_argument("--since", default="7d", help="how far back (default 7d)")
    export.add_argument("--min-strength", choices=STRENGTHS, default="strong")
    export.add_argument("--db", type=Path, help="event store (default: the configured db_path)")
    export.set_defaults(command=_export)


def _export(args: argparse.Namespace, settings: Settings) -> int:
    try:
        since_s = parse_duration(args.since)
    except ValueError as e:
        print(f"voice-search: error: --since: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.db:  # everything an export reads belongs to the store it names, reviews included
        settings = replace(settings, db_path=args.db, event_store_url="")
    store = SQLiteEventStore(args.db) if args.db else settings.open_event_store()
    try:
        reviews = settings.labels_dir / REVIEW_LABELS
        report = export_labels(store, args.out, since_s, args.min_strength, settings.redo_window_s, reviews)
    finally:
        store.close()
    check = report.check
    print(
        json.dumps(
            {
                "manifest": str(report.manifest),
                "labels": report.labels,
                "by_source": report.by_source,
                "check_errors": [asdict(f) for f in check.errors],
            },
            indent=1,
        )
    )
    if not report.labels and report.voice_searches and not report.kept_audio:
        print(
            f"voice-search: no labels: none of the {report.voice_searches} voice searches of the last "
            f"{args.since} kept its audio, and a label needs the audio it labels. Set "
            "VOICE_SEARCH_RETAIN_AUDIO=true on the server (audio is then kept for "
            "VOICE_SEARCH_AUDIO_RETENTION_DAYS).",
            file=sys.stderr,
        )
    return EXIT_OK if not check.errors else EXIT_CHECK_FAILED
