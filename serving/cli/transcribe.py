"""`voice-search transcribe` and `voice-search evaluate`: the pipeline on files and manifests."""

import argparse
import csv
import glob
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from asr.errors import AudioError, DataError, ManifestError
from asr.evaluate import EvaluationReport, Scores, run_entry, summarize
from asr.manifest import read_manifest, select_entries
from asr.pipeline import Transcript
from asr.text import normalize_text
from serving.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    UsageError,
    add_recognition_options,
    expand_inputs,
    pipeline_factory,
    positive_int,
)
from serving.settings import Settings


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """transcribe and evaluate."""
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
        type=positive_int,
        default=2,
        metavar="N",
        help="Ray actors, one CPU each (default 2)",
    )
    add_recognition_options(transcribe)
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
    add_recognition_options(evaluate)
    evaluate.set_defaults(command=_evaluate, inference=True)


MANIFEST_SUFFIX = ".jsonl"
"""An input with this suffix is a manifest: its rows' `audio` paths are the inputs."""


RAY_LOCAL = "(local)"
"""`--ray` without an address: start a local Ray for this command."""


def transcribe_inputs(patterns: Sequence[str]) -> list[Path]:
    """`expand_inputs`, where a `.jsonl` argument is a manifest (`asr.manifest.read_manifest`:
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
    build = pipeline_factory(args, settings)
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
    pipeline = pipeline_factory(args, settings)()

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
