"""Benchmark several replicas behind nginx on one PostgreSQL store, with locust, and prove the
no-lost-event promise under faults at full size.

Runs (each with a fresh database on one local PostgreSQL server, the bundled model, default
settings, locust in a closed loop of `--users` users for `--duration-s`):

1. `one`: 1 replica behind nginx: throughput and p50/p95;
2. `two`: 2 replicas behind nginx: the same, and the ratio to `one`;
3. `kill`: 2 replicas, one killed with SIGKILL a third of the way in;
4. `restart`: 2 replicas, PostgreSQL stopped a third of the way in and started 5 s later.

For every run: statuses, and whether every acknowledged request (any answer below 500) has its
event in the store (`lost` must be 0), and how many events have no acknowledged answer (requests
cut off after their event was written: at most the 502s).

Usage: python scripts/bench_cluster.py [--runs one,two,kill,restart] [--users 16] [--duration-s 60]
       [--json .cache/bench_cluster.json]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from serving.cluster.database import LocalPostgres
from serving.cluster.launch import Cluster, running_cluster
from serving.settings import REPO_ROOT

CLIP_TARGET_S = 3.0


def query_clips(folder: Path, count: int = 20) -> Path:
    """The corpus's held-out test queries closest to 3 s (as scripts/bench_api.py), else the samples."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = REPO_ROOT / "corpus" / "test.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("source") == "query"]
        rows.sort(key=lambda r: abs(float(r["duration_s"]) - CLIP_TARGET_S))
        sources = [manifest.parent / r["audio"] for r in rows[:count]]
    else:
        sources = sorted((REPO_ROOT / "data" / "samples").glob("*.flac"))
    for i, source in enumerate(sources):
        (folder / f"{i:03d}{source.suffix}").write_bytes(source.read_bytes())
    return folder


def run_locust(cluster: Cluster, clips: Path, users: int, duration_s: float, out: Path, name: str,
               during: Any = None) -> list[dict[str, Any]]:  # fmt: skip
    """locust, headless, in its own process; `during()` is called a third of the way in."""
    answers = out / f"{name}-answers.json"
    env = os.environ | {"VOICE_SEARCH_BENCH_CLIPS": str(clips), "VOICE_SEARCH_BENCH_ANSWERS": str(answers),
                        "VOICE_SEARCH_BENCH_SESSION": name}  # fmt: skip
    command = [
        str(Path(sys.executable).parent / "locust"), "-f", str(REPO_ROOT / "scripts" / "locustfile.py"),
        "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{duration_s:g}s",
        "--host", cluster.url, "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "30",
    ]  # fmt: skip
    with (out / f"{name}-locust.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        if during is not None:
            timer = threading.Timer(duration_s / 3, during)
            timer.start()
        process.wait(timeout=duration_s + 120)
    return list(json.loads(answers.read_text()))


def summarize(answers: list[dict[str, Any]], recorded: set[str], duration_s: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a["status"])] = statuses.get(str(a["status"]), 0) + 1
    ok = sorted(a["latency_s"] for a in answers if a["status"] == 200)
    acknowledged = {a["request_id"] for a in answers if 0 < a["status"] < 500 and a["request_id"]}
    return {
        "sent": len(answers),
        "statuses": statuses,
        "ok_rps": round(len(ok) / duration_s, 2),
        "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
        "p95_ms": round(1000 * float(np.percentile(ok, 95)), 1) if ok else None,
        "server_errors_500": sum(1 for a in answers if a["status"] == 500),
        "acknowledged": len(acknowledged),
        "events": len(recorded),
        "lost": len(acknowledged - recorded),
        "recorded_unacknowledged": len(recorded - acknowledged),
        "error_types": sorted({a["error_type"] for a in answers if a["error_type"]}),
    }


def recorded_ids(url: str) -> set[str]:
    with psycopg.connect(url) as db:
        return {r[0] for r in db.execute("SELECT request_id FROM events WHERE route = '/v1/search'")}


def bench(
    run: str, postgres: LocalPostgres, state: Path, clips: Path, users: int, duration_s: float
) -> dict[str, Any]:
    url = postgres.create_database(f"bench_{run}_{int(time.time())}")
    replicas = 1 if run == "one" else 2
    with running_cluster(state / run, replicas=replicas, event_store_url=url) as cluster:
        during = None
        if run == "kill":

            def during() -> None:
                cluster.replicas[0].process.send_signal(signal.SIGKILL)
        elif run == "restart":

            def during() -> None:
                postgres.stop()
                time.sleep(5.0)
                postgres.start()

        started = time.monotonic()
        answers = run_locust(cluster, clips, users, duration_s, state, run, during)
        elapsed = time.monotonic() - started
        result = summarize(answers, recorded_ids(url), min(elapsed, duration_s))
    result |= {"run": run, "replicas": replicas, "users": users, "duration_s": duration_s}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="one,two,kill,restart")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="voice-search-bench-cluster-"))
    base.chmod(0o755)  # the PostgreSQL server runs as `postgres` when root starts it
    clips = query_clips(base / "clips")
    postgres = LocalPostgres(base / "postgres").start()
    results: list[dict[str, Any]] = []
    try:
        for run in args.runs.split(","):
            results.append(bench(run, postgres, base, clips, args.users, args.duration_s))
    finally:
        postgres.stop()
    by_run = {r["run"]: r for r in results}
    if "one" in by_run and "two" in by_run and by_run["one"]["ok_rps"]:
        print(f"2 replicas / 1: {by_run['two']['ok_rps'] / by_run['one']['ok_rps']:.2f}x throughput")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
