"""`voice-search monitor ...`: the reference profile, reports, and the Prometheus/Grafana files."""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asr.corpus.domain import DomainPack
from asr.errors import AudioError, ManifestError
from asr.manifest import ManifestEntry, read_manifest, select_entries
from asr.pipeline import PipelineOptions, Transcript, build_pipeline
from asr.text import vocabulary_words
from monitoring.alarms import AlarmEngine, load_rules, parse_duration
from monitoring.canary_gates import GatePolicy, RampPolicy
from monitoring.drift import ReferenceProfile
from monitoring.events import Event, EventStoreError
from monitoring.export import deploy_files
from monitoring.features import clip_features
from monitoring.report import build_report, render_html, render_text
from serving.cli.common import EXIT_OK, EXIT_USAGE
from serving.recording import transcript_fields
from serving.settings import REPO_ROOT, Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    monitor = commands.add_parser(
        "monitor", help="reference profile, reports and alerting files"
    ).add_subparsers(required=True, metavar="ACTION")
    baseline = monitor.add_parser(
        "baseline", help="profile the training data (input statistics and model outputs) for drift detection"
    )
    baseline.add_argument(
        "--manifest",
        type=Path,
        action="append",
        required=True,
        metavar="MANIFEST",
        help="training manifest (repeatable); its texts also make the training vocabulary",
    )
    baseline.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="profile only rows where FIELD equals VALUE (repeatable), e.g. source=query",
    )
    baseline.add_argument(
        "--limit", type=int, default=400, help="clips to run through the model (default 400)"
    )
    baseline.add_argument("--seed", type=int, default=0)
    baseline.add_argument("--out", type=Path, help="profile file (default: the configured reference_profile)")
    baseline.set_defaults(command=_baseline, inference=True)

    report = monitor.add_parser("report", help="what the monitors saw over a period, as text or HTML")
    report.add_argument("--since", default="1d", help="how far back from the newest event (default 1d)")
    report.add_argument("--db", type=Path, help="event store (default: the configured db_path)")
    report.add_argument("--format", choices=("text", "html"), default="text")
    report.add_argument("--output", type=Path, help="write to FILE instead of stdout")
    report.set_defaults(command=_report)

    export = monitor.add_parser(
        "export", help="write Prometheus alerting rules, a Grafana dashboard and prometheus.yml"
    )
    export.add_argument("--rules", type=Path, help="alarm rules (default: the configured alarm_rules)")
    export.add_argument("--out", type=Path, help="folder to write (default: monitoring/deploy)")
    export.set_defaults(command=_export)


def _baseline(args: argparse.Namespace, settings: Settings) -> int:
    entries: list[ManifestEntry] = [e for m in args.manifest for e in read_manifest(m)]
    rng = np.random.default_rng(args.seed)
    pool = select_entries(entries, args.where)
    if not pool:
        raise ManifestError("no manifest rows left after --where")
    picked = rng.choice(len(pool), min(args.limit, len(pool)), replace=False)
    chosen = [pool[i] for i in sorted(picked)]
    pack = DomainPack.load(settings.domain_dir)
    beam = pack.bias(settings.beam_size, settings.hotword_weight) if settings.bias_decoding else None
    pipeline = build_pipeline(
        settings.model_dir, device=settings.device, beam=beam, options=PipelineOptions()
    )
    rows, nulls = [], 0
    for entry in tqdm(chosen, desc="profiling", unit="clip", file=sys.stderr, disable=None):
        try:
            transcript = pipeline.transcribe(entry.audio)
        except AudioError as e:
            print(f"skipped {entry.audio}: {e}", file=sys.stderr)
            continue
        features = clip_features(_as_event(transcript))
        if features is not None:
            rows.append(features)
            nulls += transcript.no_speech
    if not rows:
        raise ManifestError("no clip of the manifests could be profiled")
    vocabulary = frozenset(w for e in entries for w in vocabulary_words(e.text)) | frozenset(
        pack.vocabulary()
    )
    confidences = [
        float(r["confidence"]) for r in rows if "confidence" in r and float(r["transcript_words"]) > 0
    ]
    metrics = {
        "null_transcript_ratio": nulls / len(rows),
        "mean_confidence": float(np.mean(confidences or [0.0])),
    }
    source = (
        f"{', '.join(str(m) for m in args.manifest)} ({len(rows)} clips, model {pipeline.recognizer.version})"
    )
    version = pipeline.recognizer.version
    profile = ReferenceProfile.from_rows(rows, vocabulary, source, metrics, args.seed, version)
    out = args.out or settings.reference_profile
    profile.save(out)
    print(
        f"wrote {out}: {len(rows)} clips, {len(vocabulary)} words; "
        f"null transcripts {metrics['null_transcript_ratio']:.1%}"
    )
    return EXIT_OK


def _as_event(transcript: Transcript) -> Event:
    """The transcript as the service would record it, so the profile and traffic share one feature code."""
    return Event(
        request_id="baseline",
        created_at=0.0,
        kind="voice_search",
        route="baseline",
        status_code=200,
        **transcript_fields(transcript),
    )


def _report(args: argparse.Namespace, settings: Settings) -> int:
    try:
        span_s = parse_duration(args.since)
        rules = load_rules(settings.alarm_rules)
    except ValueError as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.db:  # a file named on the command line wins over any configured store
        settings = replace(settings, db_path=args.db, event_store_url="")
    if not settings.event_store_url and not settings.db_path.is_file():
        print(f"voice-search: error: no event store at {settings.db_path}", file=sys.stderr)
        return EXIT_USAGE
    reference = (
        ReferenceProfile.load(settings.reference_profile) if settings.reference_profile.is_file() else None
    )
    try:
        store = settings.open_event_store()
    except EventStoreError as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        engine = AlarmEngine(rules, reference, redo_window_s=settings.redo_window_s)
        report = build_report(store, engine, span_s, generated_at=time.time())
    finally:
        store.close()
    text = render_html(report) if args.format == "html" else render_text(report)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _export(args: argparse.Namespace, settings: Settings) -> int:
    """The alarm rules as files for Prometheus and Grafana, so their thresholds cannot diverge."""
    try:
        rules = load_rules(args.rules or settings.alarm_rules)
    except ValueError as e:
        print(f"voice-search: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    out: Path = args.out or REPO_ROOT / "monitoring" / "deploy"
    out.mkdir(parents=True, exist_ok=True)
    gates = GatePolicy(min_samples=settings.canary_min_samples)
    plan = RampPolicy(settings.ramp_steps, settings.canary_hold_s, settings.canary_window_s, gates)
    for name, text in deploy_files(rules, plan).items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return EXIT_OK
