"""The event of one request, as its route learns it: a typed draft that the recording middleware
(`serving.app`) opens when the request arrives and turns into the stored `Event` when the answer
is ready, whatever happened in between (the error handlers note the error on it)."""

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from asr.pipeline import STAGES, Transcript
from monitoring.events import Event, EventStore, EventStoreError, Hit, Kind, Outcome
from monitoring.monitor import Monitor
from serving.search import SearchResult

logger = logging.getLogger(__name__)


@dataclass
class EventDraft:
    """What a route noted on its request so far. The route fills it in order, in one place;
    the middleware adds what only it knows (route, status, latency) in `finish`."""

    request_id: str
    received_at: float
    """The server's clock when the request arrived: its timings count from here."""
    at: float
    """The event's time: `received_at`, or a replay's traffic time (`X-Event-Time`, when trusted)."""
    kind: Kind = "other"
    session_id: str | None = None
    user_id: str | None = None
    slot: str | None = None
    audio_bytes: int | None = None
    content_type: str | None = None
    audio_path: str | None = None
    """Where the audio is kept, when retention is on."""
    transcript: Transcript | None = None
    query_text: str | None = None
    searched: SearchResult | None = None
    search_s: float = 0.0
    target_request_id: str | None = None
    clicked_id: str | None = None
    corrected_text: str | None = None
    error_type: str | None = None
    error_message: str | None = None

    def timings_ms(self) -> dict[str, float]:
        """Per-stage milliseconds noted so far, plus the total since the request arrived."""
        stages = self._timings_s()
        out = {stage: round(1000 * stages[stage], 2) for stage in (*STAGES, "search") if stage in stages}
        out["total"] = round(1000 * (time.time() - self.received_at), 2)
        return out

    def _timings_s(self) -> dict[str, float]:
        stages = dict(self.transcript.timings_s) if self.transcript else {}
        if self.searched is not None:
            stages["search"] = self.search_s
        return stages

    def _outcome(self) -> Outcome:
        if self.transcript is not None and self.transcript.no_speech:
            return "null_transcript"
        return "no_result" if self.searched is not None and not self.searched.found else "ok"

    def finish(
        self, route: str, status: int, latency_s: float, slot: str | None, version: str | None
    ) -> Event:
        """The stored event. `slot` and `version` are the serving slot's, for requests that
        noted none (a typed search, a failure before the model answered)."""
        outcome: Outcome = (
            "server_error" if status >= 500 else "client_error" if status >= 400 else self._outcome()
        )
        heard = transcript_fields(self.transcript) if self.transcript else {}
        heard.pop("outcome", None)
        return Event(
            **heard
            | dict(
                request_id=self.request_id,
                created_at=self.at,
                kind=self.kind,
                route=route,
                status_code=status,
                outcome=outcome,
                session_id=self.session_id,
                user_id=self.user_id,
                slot=self.slot or slot,
                model_version=heard.get("model_version", version),
                error_type=self.error_type,
                error_message=self.error_message,
                query_text=self.query_text,
                hits=tuple(Hit(h.entry.id, h.entry.title, h.score) for h in self.searched.hits)
                if self.searched
                else (),
                latency_s=latency_s,
                timings_s=self._timings_s(),
                audio_bytes=self.audio_bytes,
                content_type=self.content_type,
                audio_path=self.audio_path,
                target_request_id=self.target_request_id,
                clicked_id=self.clicked_id,
                corrected_text=self.corrected_text,
            )
        )


def draft_of(request: Request) -> EventDraft:
    """This request's draft (opened by the recording middleware)."""
    draft: EventDraft = request.state.event
    return draft


def draft_if_any(request: Request) -> EventDraft | None:
    """The draft, or None for a request the middleware never saw (an error raised before it)."""
    draft: EventDraft | None = getattr(request.state, "event", None)
    return draft


async def note_audio(draft: EventDraft, audio: bytes, content_type: str, keep_in: Path | None) -> None:
    """Note the upload's size and type, and keep the audio itself in `keep_in` (retention on)."""
    draft.audio_bytes, draft.content_type = len(audio), content_type
    if keep_in is not None and audio:
        path = keep_in / f"{draft.request_id}.audio"
        await run_in_threadpool(_write, path, audio)
        draft.audio_path = str(path)


async def write_event(event: Event, store: EventStore, monitor: Monitor | None) -> bool:
    """Store the event and count it in the metrics; whether it was written (a failure is logged
    and counted, never raised). The HTTP middleware and the stream's final both end here."""
    try:
        await run_in_threadpool(store.record, event)
    except EventStoreError:
        logger.exception("could not record event %s", event.request_id)
        if monitor is not None:
            monitor.metrics.event_store_errors.inc()
        return False
    if monitor is not None:
        monitor.on_event(event)
    return True


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def transcript_fields(transcript: Transcript) -> dict[str, Any]:
    """The event fields a transcript fills in (the service's events and the reference profile)."""
    return dict(
        transcript=transcript.text,
        confidence=round(transcript.confidence, 4),
        model_version=transcript.model_version,
        **asdict(transcript.stats),  # the event's input columns are named after ClipStats' fields
        sample_rate_hz=transcript.source_sample_rate_hz,
        timings_s=dict(transcript.timings_s),
        outcome="null_transcript" if transcript.no_speech else "ok",
    )
