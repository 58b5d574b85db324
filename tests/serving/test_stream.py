"""Streaming voice search against a real server with a real WebSocket client: the protocol
(partials before one final equal to the upload's answer), endpointing, every bad input, a client
that vanishes, the limits, and the stream's event in the store."""

import asyncio
import base64
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websocket

from serving.cluster.balancer import running_nginx
from serving.local_server import Server, free_port, running_server
from tests.signals import SPEECH_SAMPLE

TOKEN = "stream-test-token"
MAX_CLIP_S = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("stream"),
        admin_token=TOKEN,
        stream_max_concurrent="2",
        api_max_clip_s=str(MAX_CLIP_S),
        stream_idle_timeout_s="3",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def sentence() -> tuple[bytes, int]:
    """A real 3.3 s ARCTIC sentence as int16 PCM, and its rate."""
    samples, rate = sf.read(SPEECH_SAMPLE, dtype="int16")
    return samples.tobytes(), int(rate)


def connect(
    server: Server, query: str = "session_id=s1", origin: str | None = None, **options: Any
) -> websocket.WebSocket:
    """A client socket; like a browser's, it says the page's origin (websocket-client's default
    is the server's own). `options`: websocket-client's, such as `header` or `subprotocols`."""
    url = server.url.replace("http://", "ws://") + "/v1/search/stream?" + query
    return websocket.create_connection(url, timeout=60, origin=origin, **options)


def stream(ws: websocket.WebSocket, pcm: bytes, rate: int, chunk_s: float = 0.1, pace: float = 1.0) -> None:
    """Send `pcm` in chunks, at `pace` times real time (0: as fast as possible)."""
    step = 2 * int(rate * chunk_s)
    for start in range(0, len(pcm), step):
        ws.send_binary(pcm[start : start + step])
        if pace:
            time.sleep(chunk_s / pace)


def read_all(ws: websocket.WebSocket) -> tuple[list[tuple[float, dict[str, Any]]], int | None]:
    """Every message (with its arrival time) until the server closes, and the close code."""
    messages: list[tuple[float, dict[str, Any]]] = []
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return messages, int.from_bytes(data[:2], "big") if len(data) >= 2 else None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append((time.perf_counter(), json.loads(data)))


def events(server: Server, route: str = "/v1/search/stream") -> list[sqlite3.Row]:
    with sqlite3.connect(server.db_path) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute("SELECT * FROM events WHERE route = ? ORDER BY created_at", (route,)))


def events_of(server: Server, prefix: str, count: int = 1, timeout_s: float = 20) -> list[sqlite3.Row]:
    """The stream events of sessions starting with `prefix`, once `count` are written (the server
    writes a stream's event after it closes the socket)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [e for e in events(server) if (e["session_id"] or "").startswith(prefix)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def rejected(
    server: Server, send: Any = None, query: str = "session_id=s1", origin: str | None = None, **options: Any
) -> tuple[str, int | None]:
    """The error type and close code a stream gets for `send` (a callable given the socket)."""
    ws = connect(server, query, origin, **options)
    try:
        if send is not None:
            send(ws)
        messages, code = read_all(ws)
    finally:
        ws.close()
    errors = [m for _, m in messages if m["type"] == "error"]
    assert len(errors) == 1 and not [m for _, m in messages if m["type"] == "final"], messages
    return errors[0]["error"]["type"], code


def test_partials_come_before_one_final_that_equals_the_upload(
    server: Server, sentence: tuple[bytes, int]
) -> None:
    pcm, rate = sentence
    ws = connect(server, "session_id=stream-1&user_id=u1")
    ws.send(json.dumps({"sample_rate": rate}))
    stream(ws, pcm, rate)
    ws.send(json.dumps({"event": "end"}))
    messages, code = read_all(ws)
    kinds = [m["type"] for _, m in messages]
    assert code == 1000
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert kinds.count("partial") >= 2, kinds
    partial = next(m for _, m in messages if m["type"] == "partial")
    assert set(partial) == {"type", "transcript", "hits", "stable"}
    final = messages[-1][1]
    uploaded = httpx.post(
        server.url + "/v1/search", files={"file": ("q.flac", SPEECH_SAMPLE.read_bytes())},
        data={"session_id": "upload-1"}, timeout=60,
    ).json()  # fmt: skip
    assert final["transcript"] == uploaded["transcript"] and final["transcript"]
    assert [h["id"] for h in final["hits"]] == [h["id"] for h in uploaded["hits"]]
    assert final["session_id"] == "stream-1" and final["input"]["duration_s"] == pytest.approx(3.3, abs=0.1)
    recorded = [e for e in events_of(server, "stream-1") if e["request_id"] == final["request_id"]]
    assert len(recorded) == 1
    event = recorded[0]
    assert (event["kind"], event["status_code"]) == ("voice_search", 200)
    assert event["outcome"] == ("no_result" if final["no_result"] else "ok")
    assert (event["session_id"], event["user_id"], event["transcript"]) == (
        "stream-1",
        "u1",
        final["transcript"],
    )
    assert event["model_version"] == final["model_version"] and event["slot"] == final["slot"]
    assert event["duration_s"] == pytest.approx(3.3, abs=0.1)
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert "voice_search_stream_first_partial_seconds_count 1.0" in metrics
    assert "voice_search_stream_final_seconds_count 1.0" in metrics


def test_silence_after_speech_ends_the_utterance_without_end(
    server: Server, sentence: tuple[bytes, int]
) -> None:
    pcm, rate = sentence
    quiet = bytes(2 * 2 * rate)  # 2 s of digital silence
    ws = connect(server, "session_id=endpoint-1")
    ws.send(json.dumps({"sample_rate": rate}))
    stream(ws, pcm + quiet, rate)  # never sends `end`
    messages, code = read_all(ws)
    assert code == 1000 and messages[-1][1]["type"] == "final"
    assert messages[-1][1]["transcript"]


@pytest.mark.parametrize(
    ("name", "send", "kind", "code"),
    [
        ("odd-length PCM", lambda ws: ws.send_binary(b"\x00\x01\x02"), "invalid_audio", 1003),
        ("not JSON", lambda ws: ws.send("hello"), "invalid_request", 1003),
        ("an unknown message", lambda ws: ws.send(json.dumps({"pause": True})), "invalid_request", 1003),
        ("a rate under 8 kHz", lambda ws: ws.send(json.dumps({"sample_rate": 4000})),
         "unsupported_sample_rate", 1003),
        ("a rate after audio", lambda ws: (ws.send_binary(bytes(1600)), ws.send('{"sample_rate": 8000}')),
         "invalid_request", 1003),
        ("nothing at all", None, "timeout", 1008),
        ("an utterance over the limit", lambda ws: ws.send_binary(b"\x00\x00" * 16000 * (MAX_CLIP_S + 1)),
         "clip_too_long", 1009),
        ("end with no audio", lambda ws: ws.send(json.dumps({"event": "end"})), "empty_audio", 1003),
    ],
)  # fmt: skip
def test_bad_input_gets_an_error_frame_and_a_close_code(
    server: Server, name: str, send: Any, kind: str, code: int
) -> None:
    session = "bad-" + name.replace(" ", "-")
    got_kind, got_code = rejected(server, send, query=f"session_id={session}")
    assert (got_kind, got_code) == (kind, code), name
    failed = events_of(server, session)
    assert failed and all(400 <= e["status_code"] < 500 for e in failed), name


def test_a_stream_needs_a_session_and_a_page_of_its_own_origin(server: Server) -> None:
    assert rejected(server, query="user_id=u") == ("invalid_request", 1008)
    foreign = "http://elsewhere.example"
    assert rejected(server, query="session_id=o1", origin=foreign) == ("forbidden", 1008)
    # The admin token lets a foreign page in, from a header or (a browser's only way) a
    # subprotocol, never from the URL, which access logs print.
    assert rejected(server, query=f"session_id=o1&token={TOKEN}", origin=foreign) == ("forbidden", 1008)
    encoded = base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")
    wrong = base64.urlsafe_b64encode(b"not-the-token").decode().rstrip("=")
    bad = ["voice-search", f"voice-search.bearer.{wrong}"]
    assert rejected(server, query="session_id=o1", origin=foreign, subprotocols=bad) == ("forbidden", 1008)
    accented = base64.urlsafe_b64encode("tökén".encode()).decode().rstrip("=")  # not ASCII: refused, no fault
    odd = ["voice-search", f"voice-search.bearer.{accented}"]
    assert rejected(server, query="session_id=o1", origin=foreign, subprotocols=odd) == ("forbidden", 1008)
    admitted = [
        connect(server, "session_id=o2", foreign, header=[f"Authorization: Bearer {TOKEN}"]),
        connect(
            server, "session_id=o2", foreign, subprotocols=["voice-search", f"voice-search.bearer.{encoded}"]
        ),
    ]
    assert admitted[1].getsubprotocol() == "voice-search"
    for ws in admitted:
        ws.send(json.dumps({"event": "end"}))
        messages, code = read_all(ws)
        assert messages[-1][1]["error"]["type"] != "forbidden" and code == 1003
    host = server.url.removeprefix("http://")
    own = connect(server, "session_id=o3", f"http://{host}")
    own.send(json.dumps({"event": "end"}))
    assert read_all(own)[0][-1][1]["error"]["type"] != "forbidden"


def test_streams_beyond_the_limit_are_refused_and_a_vanished_client_is_not_a_success(
    server: Server, sentence: tuple[bytes, int]
) -> None:
    pcm, rate = sentence
    held = [connect(server, f"session_id=held-{i}") for i in range(2)]
    for ws in held:
        ws.send_binary(pcm[: 2 * rate // 2])
    time.sleep(0.5)
    assert rejected(server, query="session_id=third") == ("overloaded", 1013)
    for ws in held:  # vanish: the TCP connection drops, no close frame
        assert ws.sock is not None
        ws.sock.shutdown(socket.SHUT_RDWR)
        ws.sock.close()
    vanished = events_of(server, "held-", count=2)
    assert [(e["status_code"], e["outcome"]) for e in vanished] == [(499, "client_error")] * 2
    assert "voice_search_streams_open 0.0" in httpx.get(server.url + "/metrics", timeout=10).text
    ws = connect(server, "session_id=after")  # the slots are free again
    ws.send(json.dumps({"sample_rate": rate}))
    stream(ws, pcm, rate, pace=0)
    ws.send(json.dumps({"event": "end"}))
    assert read_all(ws)[0][-1][1]["type"] == "final"


def test_a_stream_goes_through_nginx(server: Server, sentence: tuple[bytes, int], tmp_path: Path) -> None:
    """The cluster's balancer upgrades the stream to one replica, with the page's origin intact."""
    pcm, rate = sentence
    upstream = server.url.removeprefix("http://")
    with running_nginx(tmp_path / "nginx", free_port(), [upstream], 10 * 1024 * 1024) as balancer:
        front = Server(balancer.url, server.db_path, server.process, server.log_path)
        ws = connect(front, "session_id=via-nginx", origin=balancer.url)
        ws.send(json.dumps({"sample_rate": rate}))
        stream(ws, pcm, rate, pace=2)
        ws.send(json.dumps({"event": "end"}))
        messages, code = read_all(ws)
    assert code == 1000 and messages[-1][1]["type"] == "final" and messages[-1][1]["transcript"]
    assert [m["type"] for _, m in messages].count("partial") >= 1


def test_the_cli_client_streams_a_file_and_prints_partials_then_the_final(
    server: Server, tmp_path: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "serving.cli",
        "client",
        "--mode",
        "cloud",
        "--stream",
        "--url",
        server.url,
    ]
    done = subprocess.run(
        [*command, "--pace", "2", str(SPEECH_SAMPLE)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [m["type"] for m in lines][-1] == "final" and "partial" in [m["type"] for m in lines]
    assert all(m["path"] == str(SPEECH_SAMPLE) for m in lines) and lines[-1]["transcript"]
    edge = subprocess.run(
        [*command[:5], "edge", "--stream", str(SPEECH_SAMPLE)], capture_output=True, text=True
    )
    assert edge.returncode == 2 and "--stream needs --mode cloud" in edge.stderr
    # The server ending the stream (an utterance over its limit, sent as fast as it goes) is a
    # failed file on stderr, exit 1, even when the client meets it as a broken socket.
    too_long = tmp_path / "long.wav"
    sf.write(too_long, np.zeros(16000 * (MAX_CLIP_S + 4), np.float32), 16000)
    refused = subprocess.run(
        [*command, "--pace", "0", str(too_long)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 1 and str(too_long) in refused.stderr, refused.stderr
    # `| head -1`: the reader leaves after the first partial; the client stops quietly, and
    # does not report the closed pipe as a failed file.
    piped = subprocess.Popen([*command, str(SPEECH_SAMPLE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert piped.stdout is not None and piped.stderr is not None
    assert json.loads(piped.stdout.readline())["type"] == "partial"
    piped.stdout.close()
    err = piped.stderr.read().decode()
    assert piped.wait(timeout=120) == 141 and not err, err


def test_stable_is_what_the_last_partials_agree_on() -> None:
    from serving.streaming import stable_prefix

    assert stable_prefix(["weather", "weather in", "weather in pa"]) == "weather"
    assert stable_prefix(["weather in", "weather in pa", "weather in paris"]) == "weather in"
    assert stable_prefix(["a b", "a b"]) == ""  # too few partials to call anything stable


def test_a_slow_client_keeps_only_the_latest_partials_queued() -> None:
    """The send queue is bounded: partials a client has not taken yet make way for newer ones
    (a unit test: through real sockets the kernel's buffers hide a slow reader)."""
    from types import SimpleNamespace

    from serving.routes.stream import Stream
    from serving.settings import Settings

    service = SimpleNamespace(settings=Settings(stream_send_queue=2))
    stream = Stream(websocket=None, service=service)  # type: ignore[arg-type]
    for number in range(5):
        stream._post({"type": "partial", "transcript": str(number)})
    queued = [stream.outbox.get_nowait()["transcript"] for _ in range(stream.outbox.qsize())]
    assert queued == ["3", "4"]


def test_a_client_that_takes_nothing_cannot_hold_its_stream_for_ever() -> None:
    """The final waits for its send at most `stream_idle_timeout_s`; then the client counts as
    gone (a unit test: a socket that never drains needs the kernel's buffers filled first)."""
    from types import SimpleNamespace

    from serving.routes.stream import Stream
    from serving.settings import Settings

    class Stuck:
        async def send_json(self, message: Any) -> None:
            await asyncio.Event().wait()  # the peer's window stays shut

    service = SimpleNamespace(settings=Settings(stream_idle_timeout_s=0.2))
    stream = Stream(websocket=Stuck(), service=service)  # type: ignore[arg-type]

    async def deliver() -> None:
        sender = asyncio.create_task(stream._send_all())
        await asyncio.wait_for(stream._deliver({"type": "final"}), timeout=30)  # a hang fails here
        sender.cancel()

    asyncio.run(deliver())
    assert stream.gone


def stream_final(server: Server, session: str, pcm: bytes, rate: int) -> dict[str, Any]:
    ws = connect(server, f"session_id={session}")
    ws.send(json.dumps({"sample_rate": rate}))
    stream(ws, pcm, rate, pace=0)
    ws.send(json.dumps({"event": "end"}))
    final: dict[str, Any] = read_all(ws)[0][-1][1]
    assert final["type"] == "final", final
    return final


def test_a_stream_is_routed_by_session_and_shadowed_like_an_upload(
    tmp_path: Path, tiny_model_dir: Path, sentence: tuple[bytes, int]
) -> None:
    from serving.lifecycle.rollout import RolloutPlan, routes_to_challenger

    pcm, rate = sentence
    plan = RolloutPlan("canary", 0.5)
    to_challenger = next(f"c-{i}" for i in range(100) if routes_to_challenger(plan, f"c-{i}"))
    to_champion = next(f"c-{i}" for i in range(100) if not routes_to_challenger(plan, f"c-{i}"))
    settings = {"challenger_dir": str(tiny_model_dir), "canary_share": "0.5"}
    with running_server(tmp_path / "canary", rollout_mode="canary", **settings) as canary:
        challenged, championed = (stream_final(canary, s, pcm, rate) for s in (to_challenger, to_champion))
        assert challenged["slot"] == "challenger" and challenged["model_version"].startswith("tiny@")
        assert championed["slot"] == "primary" and not championed["model_version"].startswith("tiny@")
        slots = {e["session_id"]: e["slot"] for e in events_of(canary, "c-", count=2)}
        assert slots == {to_challenger: "challenger", to_champion: "primary"}
    with running_server(
        tmp_path / "shadow", rollout_mode="shadow", challenger_dir=str(tiny_model_dir)
    ) as shadow:
        final = stream_final(shadow, "shadowed", pcm, rate)
        deadline, shadows = time.monotonic() + 60, list[Any]()
        while not shadows and time.monotonic() < deadline:
            time.sleep(0.3)
            with sqlite3.connect(shadow.db_path) as db:
                shadows = db.execute(
                    "SELECT target_request_id, slot FROM events WHERE kind = 'shadow'"
                ).fetchall()
        assert shadows == [(final["request_id"], "challenger")]


def test_the_readmes_ten_line_client_streams_a_file(server: Server, tmp_path: Path) -> None:
    """The README's client, as printed there, against a real server: partials, then the final."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Streaming search") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    assert len(code.strip().splitlines()) <= 11  # ten lines and the blank after the imports
    script = tmp_path / "client.py"
    script.write_text(code.replace("ws://127.0.0.1:8000", server.url.replace("http://", "ws://")))
    done = subprocess.run(
        [sys.executable, str(script), str(SPEECH_SAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    kinds = [line.split()[0] for line in done.stdout.splitlines()]
    assert kinds[-1] == "final" and "partial" in kinds[:-1], done.stdout
