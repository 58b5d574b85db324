"""Voice search (audio in, catalog hits out) and typed search in the same session."""

import time
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response
from starlette.concurrency import run_in_threadpool

from asr.pipeline import Transcript
from serving import schemas
from serving.deps import Service, read_audio_request
from serving.lifecycle.review import routes_to_people
from serving.lifecycle.rollout import ShadowJob
from serving.recording import EventDraft, draft_of, note_audio
from serving.routes.common import ERRORS, audio_body
from serving.search import SearchResult
from serving.state import ServiceState

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
    event = draft_of(request)
    event.kind = "voice_search"
    upload = await read_audio_request(request, service.settings.max_upload_bytes)
    event.session_id, event.user_id = upload.text("session_id", required=True), upload.text("user_id")
    await note_audio(event, upload.audio, upload.content_type, service.settings.retained_audio_dir)
    answer = await search_by_voice(event, service, upload.audio)
    if answer.sent_for_review:
        response.status_code = 202  # accepted: a person answers (the model's attempt is kept for them)
    if service.shadow is not None:  # runs after the response is sent
        background.add_task(service.shadow.offer, shadow_job(event, upload.audio))
    return answer


async def search_by_voice(event: EventDraft, service: ServiceState, audio: bytes) -> schemas.SearchResponse:
    """A voice search once its audio is in: the session's model, the catalog, then the degree of
    automation. The upload route and the stream's final both answer with it."""
    slot = service.slot_for(event.session_id)
    event.slot = slot.name
    event.transcript = transcript = await slot.batcher.submit(audio)
    if not transcript.no_speech:
        await _search(event, service, transcript)
    answer = _response(event, service)
    automation = service.settings.automation
    threshold = service.settings.review_confidence_threshold
    if service.review is not None and routes_to_people(
        automation, transcript.confidence, transcript.no_speech, threshold
    ):
        review_id = await run_in_threadpool(
            service.review.add,
            event.request_id,
            event.session_id,
            event.audio_path or "",
            transcript.text,
            transcript.confidence,
            [h.model_dump() for h in answer.hits],
            event.at,
            slot.model_version,
        )
        hidden: dict[str, Any] = {"transcript": None, "query": "", "hits": [], "confidence": None}
        return answer.model_copy(
            update=hidden | {"automation": automation, "sent_for_review": True, "review_id": review_id}
        )
    return answer.model_copy(update={"automation": automation, "needs_confirmation": automation == "assist"})


def shadow_job(event: EventDraft, audio: bytes) -> ShadowJob:
    """The shadow's copy of a voice search: its audio, after the answer."""
    return ShadowJob(audio, event.request_id, event.session_id or "", event.at)


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
    event = draft_of(request)
    event.kind, event.session_id, event.user_id, event.query_text = (
        "text_search", body.session_id, body.user_id, body.query
    )  # fmt: skip
    await _search(event, service, body.query)
    return _response(event, service)


async def _search(event: EventDraft, service: ServiceState, query: str | Transcript) -> None:
    """Typed text by its words; a transcript by the catalog names spotted in its audio, if any."""
    started = time.perf_counter()
    if isinstance(query, Transcript):
        event.searched = await run_in_threadpool(service.index.search_spoken, query.text, query.spots)
    else:
        event.searched = await run_in_threadpool(service.index.search, query)
    event.search_s = time.perf_counter() - started


def hits_of(result: SearchResult | None) -> list[schemas.Hit]:
    """A search's hits as the API shows them (the final's and the stream's partials alike)."""
    return [
        schemas.Hit(
            id=h.entry.id, title=h.entry.title, score=h.score, matched=h.matched, fields=dict(h.entry.fields)
        )
        for h in (result.hits if result else ())
    ]


def _response(event: EventDraft, service: ServiceState) -> schemas.SearchResponse:
    result, transcript = event.searched, event.transcript
    hits = hits_of(result)
    stats = transcript.stats if transcript else None
    return schemas.SearchResponse(
        request_id=event.request_id,
        session_id=event.session_id or "",
        query=result.query if result else "",
        transcript=transcript.text if transcript else None,
        confidence=round(transcript.confidence, 4) if transcript else None,
        hits=hits,
        no_result=not hits,
        null_transcript=bool(transcript and transcript.no_speech),
        model_version=transcript.model_version if transcript else service.model_version,
        slot=event.slot or service.settings.slot,
        timings_ms=event.timings_ms(),
        input=schemas.InputStats.from_stats(stats) if stats else None,
    )
