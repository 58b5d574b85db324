"""Voice search (audio in, catalog hits out) and typed search in the same session."""

import time
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response
from starlette.concurrency import run_in_threadpool

from asr.pipeline import Transcript
from monitoring.events import Hit
from serving import schemas
from serving.deps import Service, ServiceState, read_audio_request
from serving.lifecycle.review import routes_to_people
from serving.lifecycle.rollout import ShadowJob
from serving.recording import event_of, note_audio, note_transcript, timings_ms
from serving.routes.common import ERRORS, audio_body
from serving.search import SearchHit, SearchResult

router = APIRouter(prefix="/v1", tags=["search"])


@router.post(
    "/search",
    response_model=schemas.SearchResponse,
    responses=ERRORS,
    openapi_extra=audio_body("session_id", "user_id"),
    summary="Search the catalog by voice",
    description="Audio as multipart (`file` or `audio` field, with `session_id` and optional `user_id` "
    "fields) or as the raw body with its audio content type (`session_id` and `user_id` in the query).",
)
async def voice_search(
    request: Request, response: Response, service: Service, background: BackgroundTasks
) -> schemas.SearchResponse:
    event = event_of(request)
    event["kind"] = "voice_search"
    upload = await read_audio_request(request, service.settings.max_upload_bytes)
    session_id = upload.text("session_id", required=True)
    event.update(session_id=session_id, user_id=upload.text("user_id"))
    await note_audio(request, upload, service)
    slot = service.slot_for(session_id)
    event["slot"] = slot.name
    transcript = await slot.batcher.submit(upload.audio)
    note_transcript(request, transcript)
    result = await _search(request, service, transcript) if not transcript.no_speech else None
    if service.shadow is not None:  # runs after the response is sent
        job = ShadowJob(upload.audio, request.state.request_id, session_id, request.state.started_at)
        background.add_task(service.shadow.offer, job)
    answer = _response(request, service, result, transcript)
    automation = service.settings.automation
    threshold = service.settings.review_confidence_threshold
    if service.review is not None and routes_to_people(
        automation, transcript.confidence, transcript.no_speech, threshold
    ):
        review_id = await run_in_threadpool(
            service.review.add,
            request.state.request_id,
            session_id,
            str(event.get("audio_path", "")),
            transcript.text,
            transcript.confidence,
            [h.model_dump() for h in answer.hits],
            request.state.started_at,
            slot.model_version,
        )
        response.status_code = 202  # accepted: a person answers (the model's attempt is kept for them)
        hidden: dict[str, Any] = {"transcript": None, "query": "", "hits": [], "confidence": None}
        return answer.model_copy(
            update=hidden | {"automation": automation, "sent_for_review": True, "review_id": review_id}
        )
    return answer.model_copy(update={"automation": automation, "needs_confirmation": automation == "assist"})


@router.post(
    "/search/text",
    response_model=schemas.SearchResponse,
    responses=ERRORS,
    summary="Search the catalog by typed text",
    description="A typed query in a voice session (switch to typing, when it follows a voice search).",
)
async def text_search(
    body: schemas.TextSearchRequest, request: Request, service: Service
) -> schemas.SearchResponse:
    event_of(request).update(
        kind="text_search", session_id=body.session_id, user_id=body.user_id, query_text=body.query
    )
    result = await _search(request, service, body.query)
    return _response(request, service, result, None)


async def _search(request: Request, service: ServiceState, query: str | Transcript) -> SearchResult:
    """Typed text by its words; a transcript by the catalog names spotted in its audio, if any."""
    started = time.perf_counter()
    if isinstance(query, Transcript):
        result = await run_in_threadpool(service.index.search_spoken, query.text, query.spots)
    else:
        result = await run_in_threadpool(service.index.search, query)
    event = event_of(request)
    event.setdefault("timings_s", {})["search"] = time.perf_counter() - started
    event["hits"] = tuple(_recorded(h) for h in result.hits)
    if not result.found and event.get("outcome", "ok") == "ok":
        event["outcome"] = "no_result"
    return result


def _recorded(hit: SearchHit) -> Hit:
    return Hit(hit.entry.id, hit.entry.title, hit.score)


def _response(
    request: Request, service: ServiceState, result: SearchResult | None, transcript: Transcript | None
) -> schemas.SearchResponse:
    event = event_of(request)
    hits = [
        schemas.Hit(
            id=h.entry.id, title=h.entry.title, score=h.score, matched=h.matched, fields=dict(h.entry.fields)
        )
        for h in (result.hits if result else ())
    ]
    stats = transcript.stats if transcript else None
    return schemas.SearchResponse(
        request_id=request.state.request_id,
        session_id=event["session_id"],
        query=result.query if result else "",
        transcript=transcript.text if transcript else None,
        confidence=round(transcript.confidence, 4) if transcript else None,
        hits=hits,
        no_result=not hits,
        null_transcript=bool(transcript and transcript.no_speech),
        model_version=transcript.model_version if transcript else service.model_version,
        slot=event.get("slot", service.settings.slot),
        timings_ms=timings_ms(request),
        input=schemas.InputStats.from_stats(stats) if stats else None,
    )
