"""Streaming voice search on localhost: latency to the first partial and from the end of speech to
the final, against `POST /v1/search` on the same clips, at concurrency 1 and 8, then 32 streams
held at once (no error, and as many events as finals).

    .venv/bin/python scripts/bench_stream.py --clips 100 --json .cache/bench_stream.json

Clips: `corpus/real_dev.jsonl` (real dev speakers), else data/samples. Each clip is streamed at real
time in 100 ms chunks, and `end` is sent right after its last chunk: "end of speech" is then. The
server's endpoint silence is set longer than any clip (`--endpoint-ms`), so that every utterance
ends by `end` and the latency is the server's alone, not the endpoint's wait.
"""

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.audio import load_audio
from asr.manifest import read_manifest
from serving.client import StreamClient, pcm16
from serving.local_server import Server, running_server
from serving.streaming import Utterance

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Streamed:
    first_partial_ms: float | None
    final_ms: float
    """From `end` sent to the final received."""
    transcript: str
    partials: int


def clips(count: int) -> list[Path]:
    dev = REPO / "corpus" / "real_dev.jsonl"
    if dev.is_file():
        entries = [e for e in read_manifest(dev) if 1.0 <= float(e.fields.get("duration_s", 0) or 0) <= 8.0]
        rng = np.random.default_rng(0)
        picked = rng.choice(len(entries), size=min(count, len(entries)), replace=False)
        return [entries[i].audio for i in sorted(picked)]
    return sorted((REPO / "data" / "samples").glob("*.flac"))[:count]


def wav(path: Path) -> bytes:
    """The WAV the server makes of the clip's stream (the client's PCM in the stream's own
    container), so that both routes hear the very same bytes."""
    utterance = Utterance(max_s=3600.0)
    utterance.pcm += pcm16(load_audio(str(path)).samples)
    return utterance.wav()


def stream_one(url: str, path: Path, session: str) -> Streamed:
    client = StreamClient(url, pace=1.0)
    started = time.perf_counter()
    first = None
    partials = 0
    ended = None
    final: dict[str, object] = {}
    kinds = []
    for message in client.stream(path, session):
        kinds.append(message["type"])
        if message["type"] == "partial":
            partials += 1
            first = first or time.perf_counter()
        else:
            final = message
    ended = client.end_sent_at
    assert ended is not None and final, f"no final for {path}: {kinds}, end sent: {ended}"
    return Streamed(
        round(1000 * (first - started), 1) if first else None,
        round(1000 * (time.perf_counter() - ended), 1),
        str(final["transcript"]),
        partials,
    )


def post_one(url: str, path: Path, session: str) -> tuple[float, str]:
    started = time.perf_counter()
    body = httpx.post(f"{url}/v1/search", params={"session_id": session}, content=wav(path),
                      headers={"Content-Type": "audio/wav"}, timeout=120).json()  # fmt: skip
    return 1000 * (time.perf_counter() - started), str(body["transcript"])


def p95(values: list[float]) -> float:
    return round(float(np.percentile(values, 95)), 1)


def run(server: Server, paths: list[Path], concurrency: int) -> dict[str, object]:
    with ThreadPoolExecutor(concurrency) as pool:
        streamed = list(
            pool.map(lambda a: stream_one(server.url, a[1], f"s{concurrency}-{a[0]}"), enumerate(paths))
        )
        posted = list(
            pool.map(lambda a: post_one(server.url, a[1], f"p{concurrency}-{a[0]}"), enumerate(paths))
        )
    same = sum(s.transcript == p[1] for s, p in zip(streamed, posted, strict=True))
    firsts = [s.first_partial_ms for s in streamed if s.first_partial_ms is not None]
    return {
        "concurrency": concurrency,
        "clips": len(paths),
        "final_after_end_p50_ms": round(statistics.median(s.final_ms for s in streamed), 1),
        "final_after_end_p95_ms": p95([s.final_ms for s in streamed]),
        "post_p95_ms": p95([p[0] for p in posted]),
        "first_partial_p50_ms": round(statistics.median(firsts), 1) if firsts else None,
        "first_partial_p95_ms": p95(firsts) if firsts else None,
        "streams_without_partial": sum(s.first_partial_ms is None for s in streamed),
        "finals_equal_to_post": same,
        "examples": [asdict(s) for s in streamed[:3]],
    }


def hold(server: Server, paths: list[Path], streams: int) -> dict[str, object]:
    """`streams` at once; every one must end in a final, and each final be one event."""
    chosen = [paths[i % len(paths)] for i in range(streams)]
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda a: _safe(server.url, a[1], f"hold-{a[0]}"), enumerate(chosen)))
    time.sleep(1)
    with sqlite3.connect(server.db_path) as db:
        events = db.execute(
            "SELECT COUNT(*) FROM events WHERE route = '/v1/search/stream' AND session_id LIKE 'hold-%' "
            "AND status_code = 200"
        ).fetchone()[0]
    errors = [r for r in results if r]
    return {"streams": streams, "finals": len(results) - len(errors), "errors": errors, "events": events}


def _safe(url: str, path: Path, session: str) -> str | None:
    try:
        stream_one(url, path, session)
    except Exception as e:  # noqa: BLE001 (counted and reported, the benchmark goes on)
        return f"{type(e).__name__}: {e}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--hold", type=int, default=32)
    parser.add_argument("--endpoint-ms", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = clips(args.clips)
    report: dict[str, object] = {"runs": []}
    with (
        tempfile.TemporaryDirectory() as state,
        running_server(
            Path(state),
            stream_max_concurrent=str(max(args.hold, *args.concurrency) + 4),
            stream_endpoint_ms=str(args.endpoint_ms),
            torch_threads="2",
        ) as server,
    ):
        post_one(server.url, paths[0], "warm-up")
        for concurrency in args.concurrency:
            result = run(server, paths, concurrency)
            print(json.dumps(result), flush=True)
            report["runs"].append(result)  # type: ignore[attr-defined]
        if args.hold:
            report["hold"] = hold(server, paths, args.hold)
            print(json.dumps(report["hold"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
