"""Benchmark `voice-search transcribe --ray`: throughput with 1 and 2 Ray workers vs the plain CLI.

Every configuration is the real command in its own process, on the same files, writing JSONL to a
file; this script watches that file grow, so it reports both

- end to end: files and audio seconds per second of the whole command (Python and model start-up,
  and for --ray the start of a local Ray and of its actors), what a user waits for, and
- steady: files per second from the first row written to the last, the rate once running, which is
  what more workers buy on a long batch (start-up is paid once). Ray hands rows back a block (4
  files) at a time, so on a short run this is coarse.

The plain CLI runs twice: with torch's default threads (one per core) and with one thread, as each
Ray actor has; on a loaded machine, torch's threads wait for each other at every parallel step.

The clips: 200 rows spread evenly over corpus/real_dev.jsonl (real speakers of every set; its first
rows are all one set, mostly silence), written to a temporary manifest; without that manifest,
data/samples copied until there are as many files. Runs alternate between configurations when
--repeats > 1, so that a change in background load falls on all of them.

    nice -n 5 .venv/bin/python scripts/bench_ray.py                 # table, then JSON, on stdout
    nice -n 5 .venv/bin/python scripts/bench_ray.py --clips 400 --repeats 2 --json-out bench.json
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "data" / "models" / "voice-search-small"
REAL_DEV = REPO / "corpus" / "real_dev.jsonl"
SAMPLES = REPO / "data" / "samples"
POLL_S = 0.02
"""How often the output file is checked for new rows: small next to a clip's tens of milliseconds."""


@dataclass(frozen=True)
class Config:
    name: str
    ray_workers: int | None
    """None: the plain CLI (one process)."""
    omp_threads: int | None = None
    """OMP_NUM_THREADS for the plain CLI (torch's intra-op threads); None: torch's default, one
    per core. Each Ray actor runs one thread whatever this says."""

    def argv(self) -> list[str]:
        return [] if self.ray_workers is None else ["--ray", "--ray-workers", str(self.ray_workers)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.omp_threads is not None:
            env["OMP_NUM_THREADS"] = str(self.omp_threads)
        return env


CONFIGS = (
    Config("plain CLI", None),
    Config("plain CLI, 1 thread", None, omp_threads=1),
    Config("--ray, 1 worker", 1),
    Config("--ray, 2 workers", 2),
)


@dataclass(frozen=True)
class Measurement:
    config: str
    files: int
    failed: int
    audio_s: float
    wall_s: float
    first_row_s: float
    last_row_s: float

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s

    @property
    def audio_s_per_s(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def steady_files_per_s(self) -> float:
        return (self.files - 1) / max(self.last_row_s - self.first_row_s, 1e-9)

    @property
    def steady_audio_s_per_s(self) -> float:
        return self.steady_files_per_s * self.audio_s / self.files


def make_manifest(folder: Path, clips: int) -> Path:
    """A manifest of `clips` real clips, with absolute audio paths."""
    manifest = folder / "clips.jsonl"
    if REAL_DEV.is_file():
        rows = [json.loads(line) for line in REAL_DEV.read_text(encoding="utf-8").splitlines() if line]
        step = len(rows) / clips
        chosen = [rows[int(i * step)] for i in range(min(clips, len(rows)))]
        for row in chosen:
            row["audio"] = str((REAL_DEV.parent / row["audio"]).resolve())
    else:  # copies, not the same path again: the CLI drops repeated paths
        originals = sorted(SAMPLES.glob("*.flac"))
        chosen = []
        for i in range(clips):
            copy = folder / f"{i:04d}_{originals[i % len(originals)].name}"
            shutil.copy(originals[i % len(originals)], copy)
            chosen.append({"audio": str(copy), "text": ""})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in chosen), encoding="utf-8")
    return manifest


def run(config: Config, manifest: Path, model: Path, out: Path) -> Measurement:
    """Run the command once, timing its rows as they reach the output file."""
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "serving.cli", "transcribe", str(manifest), "--model", str(model)]
    command += ["--format", "jsonl", "--output", str(out), "--quiet", *config.argv()]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=config.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    first = last = None
    rows = 0
    while True:
        finished = process.poll() is not None
        now = time.perf_counter() - started
        if out.exists():
            count = out.read_bytes().count(b"\n")
            if count > rows:
                first = now if first is None else first
                last, rows = now, count
        if finished:
            break
        time.sleep(POLL_S)
    wall = time.perf_counter() - started
    stderr = process.stderr.read() if process.stderr else ""
    if process.returncode not in (0, 1) or first is None or last is None:
        raise RuntimeError(f"{config.name} failed (exit {process.returncode}):\n{stderr[-2000:]}")
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    done = [r for r in results if "error" not in r]
    return Measurement(
        config=config.name,
        files=len(results),
        failed=len(results) - len(done),
        audio_s=sum(r["duration_s"] for r in done),
        wall_s=wall,
        first_row_s=first,
        last_row_s=last,
    )


@dataclass(frozen=True)
class Summary:
    """One configuration: medians over its runs."""

    config: str
    runs: int
    files: int
    failed: int
    audio_s: float
    wall_s: float
    first_row_s: float
    files_per_s: float
    audio_s_per_s: float
    steady_files_per_s: float
    steady_audio_s_per_s: float


def summarize(measurements: list[Measurement]) -> list[Summary]:
    summary = []
    for config in CONFIGS:
        mine = [m for m in measurements if m.config == config.name]
        summary.append(
            Summary(
                config=config.name,
                runs=len(mine),
                files=mine[0].files,
                failed=mine[0].failed,
                audio_s=round(mine[0].audio_s, 1),
                wall_s=round(statistics.median(m.wall_s for m in mine), 2),
                first_row_s=round(statistics.median(m.first_row_s for m in mine), 2),
                files_per_s=round(statistics.median(m.files_per_s for m in mine), 2),
                audio_s_per_s=round(statistics.median(m.audio_s_per_s for m in mine), 2),
                steady_files_per_s=round(statistics.median(m.steady_files_per_s for m in mine), 2),
                steady_audio_s_per_s=round(statistics.median(m.steady_audio_s_per_s for m in mine), 2),
            )
        )
    return summary


def table(summary: list[Summary]) -> str:
    header = ["config", "files", "wall s", "first row s", "files/s", "audio s/s", "steady files/s",
              "steady audio s/s"]  # fmt: skip
    rows = [header]
    for row in summary:
        cells = (row.files, row.wall_s, row.first_row_s, row.files_per_s, row.audio_s_per_s)
        rows.append(
            [row.config, *map(str, cells), str(row.steady_files_per_s), str(row.steady_audio_s_per_s)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to FILE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        folder = Path(tmp)
        manifest = make_manifest(folder, args.clips)
        measurements = []
        for repeat in range(args.repeats):
            order = CONFIGS if repeat % 2 == 0 else tuple(reversed(CONFIGS))
            for config in order:
                measurement = run(config, manifest, args.model, folder / "out.jsonl")
                print(f"{config.name}: {measurement.wall_s:.1f} s", file=sys.stderr, flush=True)
                measurements.append(measurement)

    summary = summarize(measurements)
    by_name = {row.config: row for row in summary}
    one, two = by_name["--ray, 1 worker"], by_name["--ray, 2 workers"]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_at_end": os.getloadavg(),
        "model": str(args.model),
        "clips": f"{args.clips} evenly spaced rows of {REAL_DEV.relative_to(REPO)}"
        if REAL_DEV.is_file()
        else f"{args.clips} copies of data/samples",
        "summary": [asdict(row) for row in summary],
        "ratio_2_to_1_workers": {
            "end_to_end": round(two.files_per_s / one.files_per_s, 2),
            "steady": round(two.steady_files_per_s / one.steady_files_per_s, 2),
        },
        "runs": [asdict(m) for m in measurements],
    }
    print(table(summary))
    print()
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
