"""Streaming voice search on localhost: latency to the first partial and from the end of speech to
the final, against `POST /v1/search` on the same clips, at concurrency 1 and 8, then 32 streams
held at once (no error, and as many events as finals).

    .venv/bin/python scripts/bench_stream.py --clips 100 --json .cache/bench_stream.json

Clips: `corpus/real_dev.jsonl` (real dev speakers), else data/samples. Each clip is streamed at real
time in 100 ms chunks, and `end` is sent right after its last chunk: "end of speech" is then. The
server's endpoint silence is set longer than any clip (`--endpoint-ms`), so that every utterance
ends by `end` and the latency is the server's alone, not the endpoint's wait. "After speech" is
from the chunk holding the clip's speech onset (Silero VAD over the whole clip) sent. Partial
accuracy: the last partial's WER against the final, and the share of stable words the final keeps.
`--nginx` puts the cluster's nginx in front of the server.
"""

import argparse
import contextlib
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

from asr.audio import SAMPLE_RATE_HZ, load_audio
from asr.evaluate import word_errors
from asr.manifest import read_manifest
from asr.vad import WINDOW, SileroVAD
from serving.client import StreamClient, pcm16
from serving.cluster.balancer import running_nginx
from serving.local_server import Server, free_port, running_server
from serving.streaming import Utterance

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Streamed:
    first_partial_ms: float | None
    """From the first chunk sent to the first partial received."""
    after_speech_ms: float | None
    """From the chunk holding the clip's speech onset (Silero VAD's, offline) sent, to the first
    partial received: the issue's "after speech starts"."""
    words_after_speech_ms: float | None
    """The same, to the first partial with a word in it."""
    final_ms: float
    """From `end` sent to the final received."""
    transcript: str
    partials: list[str]
    stable: str
    """The last partial's stable prefix."""


def speech_onset_s(path: Path) -> float:
    """Where the clip's speech begins: the first window the VAD hears as speech (the server's
    Silero VAD and threshold, over the whole clip, without the segments' padding); 0 when none."""
    vad = SileroVAD.load()
    speech = np.flatnonzero(vad.probabilities(load_audio(str(path)).samples) >= vad.options.threshold)
    return float(speech[0]) * WINDOW / SAMPLE_RATE_HZ if len(speech) else 0.0


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


def stream_one(url: str, path: Path, session: str, onset_s: float = 0.0) -> Streamed:
    client = StreamClient(url, pace=1.0)
    firsts: dict[str, float] = {}
    partials: list[dict[str, object]] = []
    final: dict[str, object] = {}
    for message in client.stream(path, session):
        now = client.received_at[-1]  # when it came, not when the sending loop looked
        if message["type"] == "partial":
            partials.append(message)
            firsts.setdefault("partial", now)
            if message["transcript"]:
                firsts.setdefault("words", now)
        else:
            final = message
            firsts["final"] = now
    ended = client.end_sent_at
    assert ended is not None and final, f"no final for {path}: {len(partials)} partials, end sent: {ended}"
    speech = client.sent_at[min(int(onset_s / client.chunk_s), len(client.sent_at) - 1)]

    def since(start: float, key: str) -> float | None:
        return round(1000 * (firsts[key] - start), 1) if key in firsts else None

    return Streamed(
        since(client.sent_at[0], "partial"),
        since(speech, "partial"),
        since(speech, "words"),
        since(ended, "final") or 0.0,
        str(final["transcript"]),
        [str(m["transcript"]) for m in partials],
        str(partials[-1]["stable"]) if partials else "",
    )


def post_one(url: str, path: Path, session: str) -> tuple[float, str]:
    started = time.perf_counter()
    body = httpx.post(f"{url}/v1/search", params={"session_id": session}, content=wav(path),
                      headers={"Content-Type": "audio/wav"}, timeout=120).json()  # fmt: skip
    return 1000 * (time.perf_counter() - started), str(body["transcript"])


def p95(values: list[float]) -> float:
    return round(float(np.percentile(values, 95)), 1)


def run(server: Server, paths: list[Path], onsets: list[float], concurrency: int) -> dict[str, object]:
    with ThreadPoolExecutor(concurrency) as pool:
        streamed = list(
            pool.map(
                lambda a: stream_one(server.url, a[1][0], f"s{concurrency}-{a[0]}", a[1][1]),
                enumerate(zip(paths, onsets, strict=True)),
            )
        )
        posted = list(
            pool.map(lambda a: post_one(server.url, a[1], f"p{concurrency}-{a[0]}"), enumerate(paths))
        )
    same = sum(s.transcript == p[1] for s, p in zip(streamed, posted, strict=True))
    return {
        "concurrency": concurrency,
        "clips": len(paths),
        "final_after_end_p50_ms": round(statistics.median(s.final_ms for s in streamed), 1),
        "final_after_end_p95_ms": p95([s.final_ms for s in streamed]),
        "post_p95_ms": p95([p[0] for p in posted]),
        **spread("first_partial", [s.first_partial_ms for s in streamed]),
        **spread("first_partial_after_speech", [s.after_speech_ms for s in streamed]),
        **spread("first_words_after_speech", [s.words_after_speech_ms for s in streamed]),
        "streams_without_partial": sum(not s.partials for s in streamed),
        "finals_equal_to_post": same,
        **partial_accuracy(streamed),
        "examples": [asdict(s) for s in streamed[:3]],
    }


def spread(name: str, values: list[float | None]) -> dict[str, float | None]:
    """p50 and p95 of the streams that have the figure."""
    present = [v for v in values if v is not None]
    return {
        f"{name}_p50_ms": round(statistics.median(present), 1) if present else None,
        f"{name}_p95_ms": p95(present) if present else None,
    }


def partial_accuracy(streamed: list[Streamed]) -> dict[str, float]:
    """How near the live text comes to the final: the WER of the last partial against the final,
    and of the stable words, the share the final keeps where they stood (a stable word the final
    drops or moves is a flicker the user saw)."""
    errors = words = kept = stable = 0
    for s in streamed:
        if not s.partials:
            continue
        wrong, total = word_errors(s.transcript, s.partials[-1])
        errors, words = errors + wrong, words + total
        said, final = s.stable.split(), s.transcript.split()
        stable += len(said)
        kept += sum(a == b for a, b in zip(said, final, strict=False))
    return {
        "last_partial_wer_vs_final": round(errors / max(words, 1), 3),
        "stable_words": stable,
        "stable_words_kept_by_final": round(kept / stable, 3) if stable else 1.0,
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
    parser.add_argument(
        "--nginx", action="store_true", help="through nginx, as `voice-search cluster` serves"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    paths = clips(args.clips)
    onsets = [speech_onset_s(path) for path in paths]
    report: dict[str, object] = {"runs": [], "via": "nginx" if args.nginx else "direct"}
    with (
        tempfile.TemporaryDirectory() as state,
        running_server(
            Path(state),
            stream_max_concurrent=str(max(args.hold, *args.concurrency) + 4),
            stream_endpoint_ms=str(args.endpoint_ms),
            torch_threads="2",
        ) as server,
        contextlib.ExitStack() as stack,
    ):
        if args.nginx:  # the cluster's balancer in front: the same server, reached through nginx
            upstream = server.url.removeprefix("http://")
            balancer = stack.enter_context(
                running_nginx(Path(state) / "nginx", free_port(), [upstream], 1 << 24)
            )
            server = Server(balancer.url, server.db_path, server.process, server.log_path)
        post_one(server.url, paths[0], "warm-up")
        for concurrency in args.concurrency:
            result = run(server, paths, onsets, concurrency)
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
