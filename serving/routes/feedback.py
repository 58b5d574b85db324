"""Feedback on a search: a clicked hit, or a corrected transcript (labels for retraining)."""

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from serving import schemas
from serving.deps import Service
from serving.http_errors import BadRequestError, NotFoundError
from serving.recording import draft_of

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback", response_model=schemas.FeedbackResponse, responses={404: {"model": schemas.ErrorResponse}}
)
async def feedback(
    body: schemas.FeedbackRequest, request: Request, service: Service
) -> schemas.FeedbackResponse:
    event = draft_of(request)
    event.kind, event.session_id, event.target_request_id = "feedback", body.session_id, body.request_id
    event.clicked_id, event.corrected_text = body.item_id, body.corrected_text
    if body.kind == "click" and not body.item_id:
        raise BadRequestError("a click needs item_id")
    if body.kind == "correction" and not body.corrected_text:
        raise BadRequestError("a correction needs corrected_text")
    target = await run_in_threadpool(service.store.get, body.request_id)
    if target is None:
        raise NotFoundError(f"no request {body.request_id!r} to give feedback on")
    event.session_id = body.session_id or target.session_id
    return schemas.FeedbackResponse(request_id=event.request_id)
