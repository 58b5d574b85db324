"""The human review queue: list what waits, listen, correct, accept. Bearer token required."""

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving.deps import Admin, Service
from serving.http_errors import BadRequestError, ConflictError, NotFoundError
from serving.lifecycle.review import ReviewError, ReviewQueue
from serving.recording import draft_of
from serving.routes.common import Limit, duration
from serving.routes.monitoring import span_seconds
from serving.state import ServiceState

router = APIRouter(prefix="/v1/review", tags=["review"])
page = APIRouter()
PAGE = Path(__file__).resolve().parents[1] / "static" / "review.html"


@page.get("/review", include_in_schema=False)
async def review_page() -> FileResponse:
    """The reviewers' page: the queue, each clip to listen to, a transcript to correct, accept."""
    return FileResponse(PAGE, media_type="text/html")


def _queue(service: ServiceState) -> ReviewQueue:
    if service.review is None:
        raise NotFoundError("this server has no review queue")
    return service.review


@router.get("", summary="Queued requests waiting for a person, oldest first")
async def pending(service: Service, reviewer: Admin, limit: Limit = 50) -> dict[str, Any]:
    queue = _queue(service)
    await run_in_threadpool(queue.expire_missing_audio)
    items = await run_in_threadpool(queue.items, "pending", limit)
    now = service.monitor.now() if service.monitor else None
    return {"items": [asdict(i) | {"audio_url": f"/v1/review/{i.id}/audio"} for i in items], "now": now}


@router.get(
    "/stats", summary="Human workload: the share of voice searches sent to people, queue and wait times"
)
async def workload(
    request: Request, service: Service, reviewer: Admin, window: Annotated[str, duration("1h")] = "1h"
) -> dict[str, Any]:
    span_s = span_seconds(window, "window")
    now = draft_of(request).at
    events = await run_in_threadpool(service.store.events, now - span_s)
    voice = [e for e in events if e.kind == "voice_search" and e.status_code < 400]
    to_people = sum(1 for e in voice if e.status_code == 202)
    stats = await run_in_threadpool(_queue(service).workload, now - span_s, now)
    share = to_people / len(voice) if voice else None
    return {"window_s": span_s, "voice_searches": len(voice), "sent_to_people": to_people,
            "share_to_people": share, "automation": service.settings.automation} | stats  # fmt: skip


ItemId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a review item's id")]
"""Bounded to the store's integers: a larger id was a 500 (found by schemathesis), now a 422."""


@router.get("/{item_id:int}/audio", summary="The queued request's audio")
async def audio(item_id: ItemId, service: Service, reviewer: Admin) -> FileResponse:
    item = await _get(service, item_id)
    path = Path(item.audio_path)
    if not path.is_file():
        raise NotFoundError(f"the audio of review item {item_id} has expired")
    return FileResponse(path, media_type="application/octet-stream")


class Review(BaseModel):
    transcript: str = Field(min_length=0, max_length=500, description="what was said (corrected)")
    item_id: str | None = Field(None, max_length=200, description="the catalog item the user wanted")


@router.post(
    "/{item_id:int}", summary="Accept a review: it becomes a strong label and the audio leaves the queue"
)
async def accept(
    item_id: ItemId, body: Review, request: Request, service: Service, reviewer: Admin
) -> dict[str, Any]:
    queue = _queue(service)
    if body.item_id is not None and body.item_id not in {entry.id for entry in service.index.pack.catalog}:
        raise BadRequestError(f"no catalog item {body.item_id!r} in the domain {service.domain!r}")
    at = draft_of(request).at  # the request's event time (a replay's, when trusted)
    try:
        done = await run_in_threadpool(queue.resolve, item_id, reviewer, body.transcript, body.item_id, at)
    except ReviewError as e:
        raise (NotFoundError if "no review item" in str(e) else ConflictError)(str(e)) from e
    return asdict(done)


async def _get(service: ServiceState, item_id: int) -> Any:
    try:
        return await run_in_threadpool(_queue(service).get, item_id)
    except ReviewError as e:
        raise NotFoundError(str(e)) from e
