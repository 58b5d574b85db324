"""`WS /v1/search/stream`: voice search while the user speaks (protocol: `serving.streaming`).

A stream is a search like any other: the final goes through `search_by_voice` (the upload's path:
the session's model, canary routing, the catalog, the degree of automation), the shadow hears the
final audio, and the stream is one event in the store, written whatever happened to it.
"""

import asyncio
import hmac
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from asr.errors import ASRError
from asr.pipeline import Transcript
from serving.http_errors import OverloadedError, ServiceError, error_info
from serving.recording import EventDraft, note_audio, write_event
from serving.routes.search import hits_of, search_by_voice, shadow_job
from serving.state import ServiceState
from serving.streaming import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SERVER_ERROR,
    CLOSE_TRY_LATER,
    CLOSE_UNSUPPORTED,
    SUBPROTOCOL,
    Endpointer,
    StreamError,
    Utterance,
    offered_token,
    parse_text_frame,
    stable_prefix,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["search"])
ROUTE = "/v1/search/stream"
CLIENT_GONE = 499
"""The status a stream's event records when the client vanished before the final (nginx's code)."""
MIN_PARTIAL_S = 0.3
"""Audio a stream needs before its first partial (and the VAD's first speech in it)."""


@router.websocket("/search/stream")
async def search_stream(websocket: WebSocket) -> None:
    service: ServiceState = websocket.app.state.service
    # A browser that offered subprotocols fails the handshake unless one of them is chosen.
    chosen = SUBPROTOCOL if SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None
    await websocket.accept(subprotocol=chosen)
    await Stream(websocket, service).run()


class Stream:
    """One streaming voice search, from the accepted socket to the recorded event."""

    def __init__(self, websocket: WebSocket, service: ServiceState) -> None:
        self.ws, self.service, self.settings = websocket, service, service.settings
        now = time.time()
        self.event = EventDraft(uuid.uuid4().hex, now, now, kind="voice_search")
        self.utterance = Utterance(max_s=self.settings.api_max_clip_s)
        self.endpointer = Endpointer(self.settings.stream_endpoint_ms)
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.settings.stream_send_queue)
        self.partials: list[str] = []
        self.arrived = asyncio.Event()
        """Set by each audio frame: the partials' loop wakes on it."""
        self.recognizing: asyncio.Future[Transcript] | None = None
        """The partial's recognition in flight: the final waits for it, so that a stream never
        holds more than one place in the recognizer's queue."""
        self.first_audio_at: float | None = None
        self.gone = False
        """The client vanished while a message was being sent to it."""

    async def run(self) -> None:
        started, status = time.perf_counter(), 200
        admitted = False
        try:
            self._admit()
            admitted = True
            self.service.open_streams += 1
            self._count_open(+1)
            status = await self._converse()
        except StreamError as e:
            status = e.status
            await self._fail(e.kind, str(e), e.code)
        except WebSocketDisconnect:
            status, self.event.error_type = CLIENT_GONE, "client_disconnected"
            self.event.error_message = "the client closed the stream before the final"
        except (ServiceError, ASRError) as e:
            info = error_info(e)
            status = info.status
            code = CLOSE_TRY_LATER if isinstance(e, OverloadedError) else CLOSE_UNSUPPORTED
            await self._fail(info.type, str(e), code if status < 500 else CLOSE_SERVER_ERROR)
        except Exception as e:
            logger.exception("stream %s failed", self.event.request_id)
            status = 500
            await self._fail(
                "internal_error",
                "the server failed to handle this stream; it has been logged",
                CLOSE_SERVER_ERROR,
            )
            self.event.error_message = f"{type(e).__name__}: {e}"
        finally:
            if admitted:
                self.service.open_streams -= 1
                self._count_open(-1)
        latency_s = time.perf_counter() - started
        event = self.event.finish(ROUTE, status, latency_s, self.settings.slot, self.service.model_version)
        await write_event(event, self.service.store, self.service.monitor)

    def _admit(self) -> None:
        """Refuse what the stream may not do before it listens: origin, session, capacity."""
        params = self.ws.query_params
        self.event.session_id, self.event.user_id = params.get("session_id"), params.get("user_id")
        origin = self.ws.headers.get("origin")
        if origin and not self._trusted(
            origin, offered_token(self.ws.headers, self.ws.scope.get("subprotocols", []))
        ):
            raise StreamError(
                "forbidden",
                f"pages from {origin} may not open streams here (VOICE_SEARCH_STREAM_ALLOWED_ORIGINS, "
                f"or the admin token as the subprotocol {SUBPROTOCOL}.bearer.<base64url> or a bearer header)",
                CLOSE_POLICY,
                403,
            )
        if not self.event.session_id or len(self.event.session_id) > 200:
            raise StreamError(
                "invalid_request", "the query needs ?session_id= (1-200 characters)", CLOSE_POLICY
            )
        if self.service.open_streams >= self.settings.stream_max_concurrent:
            raise StreamError(
                "overloaded",
                f"{self.settings.stream_max_concurrent} streams are open: try again shortly",
                CLOSE_TRY_LATER,
                503,
            )

    def _trusted(self, origin: str, token: str) -> bool:
        allowed = {
            o.strip().rstrip("/") for o in self.settings.stream_allowed_origins.split(",") if o.strip()
        }
        own = urlsplit(origin).netloc == self.ws.headers.get("host", "")
        expected = self.settings.admin_token
        # Bytes: `compare_digest` refuses str with non-ASCII characters, which any client may send.
        return (
            own
            or origin.rstrip("/") in allowed
            or bool(expected and hmac.compare_digest(token.encode(), expected.encode()))
        )

    async def _converse(self) -> int:
        """Listen until `end` or the endpoint, answering partials; then the final. Its status."""
        sender = asyncio.create_task(self._send_all(), name="stream-send")
        listening = {
            asyncio.create_task(self._receive(), name="stream-receive"),
            asyncio.create_task(self._partials(), name="stream-partials"),
        }
        try:
            done, _ = await asyncio.wait(listening, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a client's error or disconnect ends the stream here
            for task in listening:
                task.cancel()
            await asyncio.gather(*listening, return_exceptions=True)
            if self.recognizing is not None:
                await asyncio.gather(self.recognizing, return_exceptions=True)
            status = await self._final()  # returns once the final has been sent
        finally:
            for task in (*listening, sender):
                task.cancel()
            await asyncio.gather(*listening, sender, return_exceptions=True)
        await self.ws.close(CLOSE_NORMAL)
        return status

    async def _receive(self) -> None:
        """Take frames until the client's `end`."""
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self.settings.stream_idle_timeout_s)
            except TimeoutError as e:
                idle = self.settings.stream_idle_timeout_s
                raise StreamError("timeout", f"nothing received for {idle:g} s", CLOSE_POLICY, 408) from e
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                self.first_audio_at = self.first_audio_at or time.perf_counter()
                self.utterance.add(message["bytes"])
                self.arrived.set()
                continue
            control = parse_text_frame(message.get("text") or "")
            if control.get("event") == "end":
                return
            self.utterance.set_rate(control.get("sample_rate"))

    async def _partials(self) -> None:
        """On new audio, the endpoint check, then a partial once speech has been heard: the first
        as soon as `MIN_PARTIAL_S` of audio is in, the next ones at most every `stream_partial_ms`
        (from the start of one to the start of the next). Returns at the endpoint."""
        period_s = self.settings.stream_partial_ms / 1000
        last = -period_s
        while True:
            await self.arrived.wait()
            if self.utterance.duration_s < MIN_PARTIAL_S:
                self.arrived.clear()
                continue
            await asyncio.sleep(max(0.0, last + period_s - time.perf_counter()))
            self.arrived.clear()  # what came during the wait is heard now
            last = time.perf_counter()
            if await run_in_threadpool(self.endpointer.ended, self.utterance):
                return
            if self.endpointer.speech_began:
                await self._partial()

    async def _partial(self) -> None:
        """A partial is a courtesy: skipped while the recognizer has a batch waiting, so that
        partials never lengthen its queue past one batch (finals and uploads keep the rest)."""
        batcher = self.service.slot_for(self.event.session_id).batcher
        if batcher.depth() >= batcher.max_batch:
            return
        audio = self.utterance.wav(self.settings.stream_left_context_s)
        self.recognizing = asyncio.ensure_future(batcher.submit(audio))
        # Its error is handled below, or nobody's once the client has gone: never "unretrieved".
        self.recognizing.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            transcript = await asyncio.shield(self.recognizing)
        except (OverloadedError, ASRError):
            return
        result = await run_in_threadpool(self.service.index.search_spoken, transcript.text, transcript.spots)
        self.partials.append(transcript.text)
        hits = [h.model_dump(include={"id", "title", "score", "matched"}) for h in hits_of(result)]
        self._post({"type": "partial", "transcript": transcript.text, "hits": hits,
                    "stable": stable_prefix(self.partials)})  # fmt: skip
        if len(self.partials) == 1 and self.first_audio_at is not None:
            self._observe("stream_first_partial", time.perf_counter() - self.first_audio_at)

    async def _final(self) -> int:
        ended = time.perf_counter()
        audio = self.utterance.wav()
        await note_audio(self.event, audio, "audio/wav", self.settings.retained_audio_dir)
        answer = await search_by_voice(self.event, self.service, audio)
        await self._deliver({"type": "final", **answer.model_dump()})
        if self.gone:
            raise WebSocketDisconnect(1006)  # the final never reached the client: not a success
        self._observe("stream_final", time.perf_counter() - ended)
        if self.service.shadow is not None:
            self.service.shadow.offer(shadow_job(self.event, audio))
        return 202 if answer.sent_for_review else 200

    async def _deliver(self, message: dict[str, Any]) -> None:
        """Queue `message` after the partials and wait until it is sent. A client that takes
        nothing for `stream_idle_timeout_s` (its socket open, its buffers full) counts as gone,
        so that it cannot hold a stream's place for ever."""
        await self.outbox.put(message)
        try:
            await asyncio.wait_for(self.outbox.join(), self.settings.stream_idle_timeout_s)
        except TimeoutError:
            self.gone = True

    def _post(self, message: dict[str, Any]) -> None:
        """Queue a partial for a slow client: when the queue is full, the oldest one goes."""
        if self.outbox.full():
            self.outbox.get_nowait()
            self.outbox.task_done()
        self.outbox.put_nowait(message)

    async def _send_all(self) -> None:
        """Send what is queued, in order. A client that has gone is noted, and the queue still
        drains, so that nothing waits on it."""
        while True:
            message = await self.outbox.get()
            try:
                if not self.gone:
                    await self.ws.send_json(message)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.gone = True
            finally:
                self.outbox.task_done()

    async def _fail(self, kind: str, message: str, code: int) -> None:
        """The error frame, then the close; nothing when the client has gone already."""
        self.event.error_type, self.event.error_message = kind, message
        error = {"type": kind, "message": message, "request_id": self.event.request_id}
        try:
            await self.ws.send_json({"type": "error", "error": error})
            await self.ws.close(code, reason=kind)
        except (WebSocketDisconnect, RuntimeError):
            pass

    def _count_open(self, change: int) -> None:
        if self.service.monitor is not None:
            self.service.monitor.metrics.streams_open.inc(change)

    def _observe(self, metric: str, seconds: float) -> None:
        if self.service.monitor is not None:
            getattr(self.service.monitor.metrics, metric).observe(seconds)
