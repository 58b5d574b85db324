"""Benchmark the voice-search API on localhost: search success, latency, throughput, overload.

Starts a real server (`serving.local_server`) with the bundled model and a fresh SQLite event store,
then drives it over HTTP with a bounded asyncio load generator:

1. search success: the corpus's held-out-voice test queries sent as audio to `/v1/search`; the
   intended catalog entry's rank, top-1 and top-5 rates; the same through `/v1/search/text` with
   the reference transcripts, so the ASR's share of the misses is visible;
2. latency at concurrency 1 on 3 s queries (p50/p95 end to end, per-stage means);
3. sustained load at concurrency 16 for `--duration-s` with micro-batching on (rps, p95, 5xx,
   events recorded vs requests sent);
4. overload at concurrency 64: 503s with Retry-After, and recovery after the burst;
5. monitoring overhead: two servers, monitoring on and off, sent the same 3 s queries in
   alternation at concurrency 1, so machine noise hits both alike;
6. shadow overhead: two servers with the same challenger loaded (a copy of the champion, so it
   costs what a real challenger of that shape costs), shadow on and off, sent bursts at
   concurrency 4 in alternating order; the champion's p95 on each.

Usage: python scripts/bench_api.py [--corpus corpus] [--duration-s 60] [--json .cache/bench_api.json]
       python scripts/bench_api.py --sections api --model edge/int8   # serve the int8 export
       python scripts/bench_api.py --sections monitoring     # only the monitoring overhead
       python scripts/bench_api.py --sections shadow         # only the shadow overhead
"""

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from asr.manifest import ManifestEntry, read_manifest
from serving.local_server import Server, running_server
from serving.settings import DEFAULT_MODEL_DIR


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = sorted(self.latencies_s)
        return {
            "concurrency": self.concurrency,
            "duration_s": round(self.duration_s, 1),
            "sent": self.sent,
            "rps": round(self.sent / self.duration_s, 2),
            "ok_rps": round(self.statuses.get(200, 0) / self.duration_s, 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": round(1000 * _percentile(ok, 50), 1) if ok else None,
            "p95_ms": round(1000 * _percentile(ok, 95), 1) if ok else None,
            "server_errors_5xx_not_503": sum(v for k, v in self.statuses.items() if k >= 500 and k != 503),
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    return float(np.percentile(sorted_values, q))


async def _post_audio(client: httpx.AsyncClient, url: str, audio: bytes, session: str) -> httpx.Response:
    return await client.post(
        url + "/v1/search",
        params={"session_id": session},
        content=audio,
        headers={"content-type": "audio/flac"},
    )


async def search_success(server: Server, queries: list[ManifestEntry]) -> dict[str, Any]:
    """Rank of the intended entry among the hits, by voice and by reference text."""
    ranks: dict[str, list[int | None]] = {"voice": [], "reference_text": []}
    async with httpx.AsyncClient(timeout=60) as client:
        for entry in queries:
            wanted = set(str(entry.fields["entries"]).split(","))
            voice = await _post_audio(client, server.url, entry.audio.read_bytes(), "bench-success")
            text = await client.post(
                server.url + "/v1/search/text", json={"session_id": "bench-success", "query": entry.text}
            )
            for name, response in (("voice", voice), ("reference_text", text)):
                ids = (
                    [h["id"] for h in response.json().get("hits", [])] if response.status_code == 200 else []
                )
                ranks[name].append(next((i + 1 for i, hit in enumerate(ids) if hit in wanted), None))
    return {
        name: {
            "queries": len(values),
            "top1": round(sum(r == 1 for r in values) / len(values), 4),
            "top5": round(sum(r is not None and r <= 5 for r in values) / len(values), 4),
        }
        for name, values in ranks.items()
    }


async def latency_at_concurrency_one(server: Server, clips: list[bytes], requests: int) -> dict[str, Any]:
    latencies, stages = [], []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(requests):
            started = time.perf_counter()
            response = await _post_audio(client, server.url, clips[i % len(clips)], "bench-latency")
            latencies.append(time.perf_counter() - started)
            stages.append(response.json()["timings_ms"])
    latencies.sort()
    keys = ("decode", "preprocess", "vad", "asr", "decoding", "search")
    return {
        "requests": requests,
        "p50_ms": round(1000 * _percentile(latencies, 50), 1),
        "p95_ms": round(1000 * _percentile(latencies, 95), 1),
        "stage_mean_ms": {k: round(statistics.mean(s.get(k, 0.0) for s in stages), 2) for k in keys},
    }


async def load(server: Server, clips: list[bytes], concurrency: int, duration_s: float) -> LoadResult:
    result = LoadResult(concurrency, duration_s)
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        i = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await _post_audio(client, server.url, clips[i % len(clips)], f"bench-load-{index}")
                status = response.status_code
            except httpx.TransportError:
                status = 599
            result.sent += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_s.append(time.perf_counter() - started)
            elif status == 503:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")) / 10)
            i += concurrency

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(i, client) for i in range(concurrency)))
    result.duration_s = time.perf_counter() - started
    return result


async def monitoring_overhead(clips: list[bytes], requests: int) -> dict[str, Any]:
    """p50/p95 with monitoring on and off, measured side by side in alternation."""
    with (
        tempfile.TemporaryDirectory() as on_dir,
        tempfile.TemporaryDirectory() as off_dir,
        running_server(Path(on_dir)) as on,
        running_server(Path(off_dir), monitoring="false") as off,
    ):
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        async with httpx.AsyncClient(timeout=60) as client:
            for i in range(requests * 2):
                name, server = ("on", on) if i % 2 == 0 else ("off", off)
                if (i // 2) % 2:  # alternate which goes first, so neither always follows the other
                    name, server = ("off", off) if name == "on" else ("on", on)
                started = time.perf_counter()
                response = await _post_audio(client, server.url, clips[(i // 2) % len(clips)], "bench-mon")
                response.raise_for_status()
                latencies[name].append(time.perf_counter() - started)
        metrics = httpx.get(on.url + "/metrics").status_code
    out: dict[str, Any] = {"requests_each": requests, "metrics_status_on": metrics}
    for name, values in latencies.items():
        values.sort()
        out[name] = {
            "p50_ms": round(1000 * _percentile(values, 50), 2),
            "p95_ms": round(1000 * _percentile(values, 95), 2),
        }
    out["p95_overhead_ms"] = round(out["on"]["p95_ms"] - out["off"]["p95_ms"], 2)
    out["p50_overhead_ms"] = round(out["on"]["p50_ms"] - out["off"]["p50_ms"], 2)
    return out


async def shadow_overhead(
    clips: list[bytes], rounds: int, per_round: int, concurrency: int = 4
) -> dict[str, Any]:
    """The champion's latency at `concurrency` with shadow on and off, in alternating bursts."""
    challenger = {"challenger_dir": str(DEFAULT_MODEL_DIR)}
    with (
        tempfile.TemporaryDirectory() as on_dir,
        tempfile.TemporaryDirectory() as off_dir,
        running_server(Path(on_dir), rollout_mode="shadow", **challenger) as on,
        running_server(Path(off_dir), rollout_mode="off", **challenger) as off,
    ):
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        async with httpx.AsyncClient(timeout=120) as client:
            for r in range(rounds):
                order = [("on", on), ("off", off)] if r % 2 == 0 else [("off", off), ("on", on)]
                for name, server in order:
                    latencies[name] += await _burst(client, server, clips, per_round, concurrency, r)
                    await _drain_shadow(client, on)
            state = (await client.get(on.url + "/v1/rollout", params={"window": "1h"})).json()
    out: dict[str, Any] = {"rounds": rounds, "requests_each": rounds * per_round, "concurrency": concurrency}
    for name, values in latencies.items():
        values.sort()
        out[name] = {
            "p50_ms": round(1000 * _percentile(values, 50), 1),
            "p95_ms": round(1000 * _percentile(values, 95), 1),
        }
    out["p95_overhead_ratio"] = round(out["on"]["p95_ms"] / out["off"]["p95_ms"] - 1, 4)
    out["shadow"] = state["shadow"]
    out["comparison"] = state["comparison"]
    return out


async def _burst(
    client: httpx.AsyncClient,
    server: Server,
    clips: list[bytes],
    count: int,
    concurrency: int,
    round_index: int,
) -> list[float]:
    latencies: list[float] = []

    async def worker(index: int) -> None:
        for i in range(index, count, concurrency):
            started = time.perf_counter()
            response = await _post_audio(
                client, server.url, clips[i % len(clips)], f"bench-shadow-{round_index}-{i}"
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


async def _drain_shadow(client: httpx.AsyncClient, server: Server, timeout_s: float = 120) -> None:
    """Wait until the challenger has heard everything it was offered, so one burst's shadow work
    does not spill into the next burst against the other server."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        shadow = (await client.get(server.url + "/v1/rollout")).json()["shadow"]
        if (
            shadow["queued"] == 0
            and shadow["recorded"] + shadow["failed"] + shadow["dropped"] >= shadow["offered"]
        ):
            return
        await asyncio.sleep(0.2)


def count_events(server: Server, session_prefix: str) -> int:
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        return int(
            db.execute(
                "SELECT COUNT(*) FROM events WHERE session_id LIKE ?", (session_prefix + "%",)
            ).fetchone()[0]
        )


def three_second_queries(entries: list[ManifestEntry], count: int) -> list[bytes]:
    near = sorted(entries, key=lambda e: abs(float(e.fields.get("duration_s", 0)) - 3.0))[:count]
    return [e.audio.read_bytes() for e in near]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    queries = [e for e in read_manifest(args.corpus / "test.jsonl") if e.fields.get("source") == "query"]
    queries = queries[: args.limit] if args.limit else queries
    clips = three_second_queries(queries, 20)
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "queries": len(queries)}
    out["model"] = str(args.model)
    if "monitoring" in args.sections:
        out["monitoring_overhead"] = await monitoring_overhead(clips, args.latency_requests * 2)
        print(json.dumps(out["monitoring_overhead"]), flush=True)
    if "shadow" in args.sections:
        out["shadow_overhead"] = await shadow_overhead(clips, args.shadow_rounds, args.shadow_requests)
        print(json.dumps(out["shadow_overhead"]), flush=True)
    if "api" not in args.sections:
        return out
    model = {"model_dir": str(args.model)}
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp), **model) as server:
        out["search_success"] = await search_success(server, queries)
        print(json.dumps(out["search_success"]), flush=True)
        out["latency_c1_3s"] = await latency_at_concurrency_one(server, clips, args.latency_requests)
        print(json.dumps(out["latency_c1_3s"]), flush=True)
        sustained = await load(server, clips, 16, args.duration_s)
        out["sustained_c16"] = sustained.summary() | {"events_recorded": count_events(server, "bench-load-")}
        print(json.dumps(out["sustained_c16"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp), **model) as server:
        overload = await load(server, clips, 64, args.overload_s)
        recovery = await latency_at_concurrency_one(server, clips, 10)
        out["overload_c64"] = overload.summary() | {
            "events_recorded": count_events(server, "bench-load-"),
            "after_burst_p50_ms": recovery["p50_ms"],
        }
        print(json.dumps(out["overload_c64"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=Path("corpus"))
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="the model the api section serves: a checkpoint or an edge folder (default: the bundled model)",
    )
    parser.add_argument("--limit", type=int, help="at most N test queries for search success")
    parser.add_argument("--latency-requests", type=int, default=100)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--overload-s", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("api", "monitoring", "shadow"),
        default=["api", "monitoring", "shadow"],
        help="what to measure (default: all)",
    )
    parser.add_argument("--shadow-rounds", type=int, default=6)
    parser.add_argument("--shadow-requests", type=int, default=40, help="requests per burst")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
