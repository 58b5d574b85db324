"""Edge and cloud clients: one voice query answered on the device, or its speech sent to the server.

Both run voice activity detection on the device, as a phone or a smart speaker would:

- **edge** recognizes and searches locally (an int8 edge folder is the usual model);
- **cloud** cuts the speech out of the clip and uploads only that, as 16 kHz FLAC, to
  `POST /v1/search`; silence costs nothing on the network;
- **stream** (`StreamClient`) speaks the whole clip into `WS /v1/search/stream` as a microphone
  would, and reads the partial results while it speaks.

Results carry the same per-stage milliseconds either way, so the two can be compared clip by
clip (`scripts/bench_edge_cloud.py`).
"""

import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import numpy as np
import soundfile as sf

from asr.audio import SAMPLE_RATE_HZ
from asr.pipeline import Frontend, Pipeline
from serving.search import CatalogIndex

Mode = Literal["edge", "cloud"]
GAP_S = 0.1
"""Silence kept between speech spans when they are joined for upload, so words do not run together."""


@dataclass(frozen=True)
class ClientResult:
    mode: Mode
    transcript: str
    hits: tuple[str, ...]
    """Catalog ids, best first."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Per stage; for cloud, "upload" is the HTTP round trip minus the server's own time."""
    payload_bytes: int = 0
    """Bytes sent over the network (0 on the edge, or when there was no speech)."""
    audio_s: float = 0.0


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


class EdgeClient:
    """Everything on the device: the pipeline (VAD, model, decoding) and the catalog search."""

    def __init__(self, pipeline: Pipeline, index: CatalogIndex) -> None:
        self.pipeline, self.index = pipeline, index

    def search(self, audio: bytes | Path) -> ClientResult:
        started = time.perf_counter()
        transcript = self.pipeline.transcribe(audio)
        searched = time.perf_counter()
        result = self.index.search_spoken(transcript.text, transcript.spots) if transcript.text else None
        timings = {stage: _ms(s) for stage, s in transcript.timings_s.items()}
        timings["search"] = _ms(time.perf_counter() - searched)
        timings["total"] = _ms(time.perf_counter() - started)
        hits = tuple(h.entry.id for h in result.hits) if result else ()
        return ClientResult("edge", transcript.text, hits, timings, 0, transcript.stats.duration_s)


class CloudClient:
    """VAD on the device, recognition and search on the server at `url`."""

    def __init__(
        self, url: str, front: Frontend, session_id: str = "cloud-client", timeout_s: float = 60.0
    ) -> None:
        """`front` decodes, preprocesses and finds the speech; the device holds no model."""
        self.url, self.front, self.session_id = url.rstrip("/"), front, session_id
        self.http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def search(self, audio: bytes | Path) -> ClientResult:
        started = time.perf_counter()
        clip, spans, stage_s = self.front.speech(audio if isinstance(audio, bytes) else str(audio))
        timings = {stage: _ms(stage_s[stage]) for stage in ("decode", "preprocess", "vad")}
        duration = clip.stats.duration_s
        if not spans:  # nothing to send: the device answers "no speech" itself
            timings["total"] = _ms(time.perf_counter() - started)
            return ClientResult("cloud", "", (), timings, 0, duration)
        encoded = time.perf_counter()
        payload = flac_of_speech(clip.samples, [(s.start_s, s.end_s) for s in spans])
        timings["encode"] = _ms(time.perf_counter() - encoded)
        sent = time.perf_counter()
        response = self.http.post(
            self.url + "/v1/search",
            params={"session_id": self.session_id},
            content=payload,
            headers={"Content-Type": "audio/flac"},
        )
        round_trip = time.perf_counter() - sent
        response.raise_for_status()
        body = response.json()
        server = body.get("timings_ms", {})
        for stage in ("asr", "decoding", "search"):
            timings[stage] = float(server.get(stage, 0.0))
        timings["upload"] = _ms(max(round_trip - float(server.get("total", 0.0)) / 1000, 0.0))
        timings["server"] = float(server.get("total", 0.0))
        timings["total"] = _ms(time.perf_counter() - started)
        hits = tuple(h["id"] for h in body.get("hits", []))
        return ClientResult("cloud", body.get("transcript") or "", hits, timings, len(payload), duration)


def flac_of_speech(samples: np.ndarray, spans: list[tuple[float, float]]) -> bytes:
    """The speech spans of a 16 kHz clip, joined with short gaps, as 16-bit FLAC."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE_HZ), np.float32)
    pieces: list[np.ndarray] = []
    for start, end in spans:
        pieces += [samples[round(start * SAMPLE_RATE_HZ) : round(end * SAMPLE_RATE_HZ)], gap]
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate(pieces[:-1]), SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


class StreamRefusedError(RuntimeError):
    """The server ended a stream with an error frame (its type and message)."""


class StreamClient:
    """A file spoken into `WS /v1/search/stream` as a microphone would: 16 kHz int16 PCM in
    chunks of `chunk_s`, at `pace` times real time (0: as fast as the socket takes it), then
    `end`. The messages come back as the server sends them: partials, then the final."""

    def __init__(self, url: str, pace: float = 1.0, chunk_s: float = 0.1, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
        self.pace, self.chunk_s, self.timeout_s = pace, chunk_s, timeout_s
        self.sent_at: list[float] = []
        """When each chunk of the last stream went out (`time.perf_counter`)."""
        self.received_at: list[float] = []
        """When each message the last stream yielded came in, in order (the reader thread's clock,
        not the moment this generator got round to it between chunks)."""
        self.end_sent_at: float | None = None
        """When the last stream's `end` went out (`time.perf_counter`): the end of speech. None
        when the server ended the utterance itself (its endpoint came before the clip's end)."""

    def stream(self, audio: Path, session_id: str) -> Iterator[dict[str, Any]]:
        """Partials as they come, then the final; raises `StreamRefusedError` on an error frame. A reader
        thread takes the messages whole while this one speaks (a socket timeout in the middle of
        a frame would lose its place in the stream)."""
        import websocket

        from asr.audio import load_audio

        pcm = pcm16(load_audio(str(audio)).samples)
        query = urlencode({"session_id": session_id})
        ws = websocket.create_connection(f"{self.url}/v1/search/stream?{query}", timeout=self.timeout_s)
        self.sent_at, self.received_at, self.end_sent_at = [], [], None
        inbox: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue()
        reader = threading.Thread(target=_read_all, args=(ws, inbox), name="stream-reader", daemon=True)
        reader.start()
        try:
            ws.send(json.dumps({"sample_rate": SAMPLE_RATE_HZ}))
            step = 2 * int(SAMPLE_RATE_HZ * self.chunk_s)
            for start in range(0, len(pcm), step):
                ws.send_binary(pcm[start : start + step])
                self.sent_at.append(time.perf_counter())
                if self.pace:
                    time.sleep(self.chunk_s / self.pace)
                for message in _drain(inbox, self.received_at, block=False):
                    yield message
                    if message["type"] == "final":  # the server heard the end of speech first
                        return
            ws.send(json.dumps({"event": "end"}))
            self.end_sent_at = time.perf_counter()
            yield from _drain(inbox, self.received_at, block=True)
        finally:
            ws.close()
            reader.join(timeout=5)


def pcm16(samples: np.ndarray) -> bytes:
    """Float samples as little-endian int16 PCM, rounded as libsndfile writes a 16-bit WAV."""
    pcm: bytes = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def _read_all(ws: Any, inbox: "queue.Queue[tuple[float, dict[str, Any]] | None]") -> None:
    """Every text message, with the time it came, into `inbox` until the socket closes, then None."""
    import websocket

    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                inbox.put((time.perf_counter(), json.loads(data)))
    except (websocket.WebSocketException, OSError):
        return
    finally:
        inbox.put(None)


def _drain(
    inbox: "queue.Queue[tuple[float, dict[str, Any]] | None]", received_at: list[float], block: bool
) -> Iterator[dict[str, Any]]:
    """The messages waiting, each noting in `received_at` when it came (`block`: every one until
    the socket closes)."""
    while True:
        try:
            item = inbox.get(block=block)
        except queue.Empty:
            return
        if item is None:
            if not block:
                inbox.put(None)  # the close stays visible to the blocking drain after `end`
            return
        received, message = item
        if message.get("type") == "error":
            raise StreamRefusedError(f"{message['error']['type']}: {message['error']['message']}")
        received_at.append(received)
        yield message
