"""The one place that maps errors to HTTP responses.

Every error body has the same shape, which is also the one OpenAI clients parse:

    {"error": {"type": "clip_too_long", "message": "...", "request_id": "..."}}

The `asr` exception tree decides the status: the caller's audio is a 4xx, the service's own
failure a 5xx. Service-level conditions (overload, oversized body, unknown request) have their own
classes here. Routes and the recording middleware record the error type and message on the
request's event through `error_response`.
"""

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from asr.errors import (
    ASRError,
    AudioError,
    ClipTooLongError,
    EmptyAudioError,
    InvalidSamplesError,
    TruncatedAudioError,
    UndecodableAudioError,
    UnsupportedSampleRateError,
)
from monitoring.events import EventStoreError
from serving.recording import draft_if_any

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Raised by routes for conditions that are not about audio content."""


class BodyTooLargeError(ServiceError):
    """The request body is larger than `max_upload_bytes`."""


class OverloadedError(ServiceError):
    """The recognition queue is full; the client should retry later."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFoundError(ServiceError):
    """A request refers to something that does not exist (e.g. feedback on an unknown request)."""


class BadRequestError(ServiceError):
    """A missing or invalid field that request validation could not catch (e.g. in a raw upload)."""


class UnsupportedMediaError(ServiceError):
    """The declared content type is not audio."""


class UnauthorizedError(ServiceError):
    """An admin route without the right bearer token."""


class ForbiddenError(ServiceError):
    """An admin route on a server where admin routes are disabled (no token configured)."""


class ConflictError(ServiceError):
    """A valid request the current state cannot take (e.g. a canary with no challenger loaded)."""


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    type: str
    headers: dict[str, str]


# Order matters: subclasses before their bases.
_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (EmptyAudioError, 400, "empty_audio"),
    (TruncatedAudioError, 422, "truncated_audio"),
    (UndecodableAudioError, 415, "undecodable_audio"),
    (InvalidSamplesError, 422, "invalid_samples"),
    (UnsupportedSampleRateError, 422, "unsupported_sample_rate"),
    (ClipTooLongError, 422, "clip_too_long"),
    (AudioError, 422, "invalid_audio"),
    (BodyTooLargeError, 413, "payload_too_large"),
    (OverloadedError, 503, "overloaded"),
    (NotFoundError, 404, "not_found"),
    (BadRequestError, 422, "invalid_request"),
    (ClientDisconnect, 400, "client_disconnected"),
    (UnsupportedMediaError, 415, "unsupported_media_type"),
    (UnauthorizedError, 401, "unauthorized"),
    (ForbiddenError, 403, "forbidden"),
    (ConflictError, 409, "conflict"),
    (ASRError, 500, "recognition_failed"),
    (EventStoreError, 503, "event_store_unavailable"),
)


def error_info(error: Exception) -> ErrorInfo:
    """Status, error type and extra headers for any exception (unknown ones are a 500)."""
    for cls, status, kind in _STATUS:
        if isinstance(error, cls):
            headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, OverloadedError) else {}
            if isinstance(error, EventStoreError):
                headers = {"Retry-After": "1"}  # a locked or busy database is usually gone in a moment
            if isinstance(error, UnauthorizedError):
                headers = {"WWW-Authenticate": "Bearer"}
            return ErrorInfo(status, kind, headers)
    return ErrorInfo(500, "internal_error", {})


def error_body(kind: str, message: str, request_id: str | None) -> dict[str, dict[str, str | None]]:
    return {"error": {"type": kind, "message": message, "request_id": request_id}}


def json_error(
    request: Request, status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error response, with the error noted on the request's event."""
    draft = draft_if_any(request)
    if draft is not None:
        draft.error_type, draft.error_message = kind, message
    return JSONResponse(
        error_body(kind, message, draft.request_id if draft else None),
        status_code=status,
        headers=headers,
    )


def error_response(request: Request, error: Exception) -> JSONResponse:
    """Any exception as a JSON error. A 500 hides its details from the client; the event keeps them."""
    info = error_info(error)
    message = str(error) or type(error).__name__
    if info.status != 500:
        return json_error(request, info.status, info.type, message, info.headers)
    response = json_error(
        request, 500, info.type, "the server failed to handle this request; it has been logged"
    )
    draft = draft_if_any(request)
    if draft is not None:
        draft.error_message = f"{type(error).__name__}: {message}"
    return response


async def _handle_error(request: Request, error: Exception) -> Response:
    if error_info(error).status == 500:
        draft = draft_if_any(request)
        logger.error("request %s failed: %s", draft.request_id if draft else "?", error)
    return error_response(request, error)


async def _handle_validation(request: Request, error: Exception) -> Response:
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    detail = "; ".join(f"{'.'.join(map(str, p.get('loc', ())))}: {p.get('msg', '')}" for p in problems)
    return json_error(request, 422, "invalid_request", f"invalid request: {detail}")


async def _handle_http(request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, StarletteHTTPException) else 500
    kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = str(error.detail) if isinstance(error, StarletteHTTPException) else str(error)
    headers = dict(error.headers or {}) if isinstance(error, StarletteHTTPException) else None
    return json_error(request, status, kind, detail, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI can raise to one JSON shape."""
    app.add_exception_handler(ServiceError, _handle_error)
    app.add_exception_handler(ASRError, _handle_error)
    app.add_exception_handler(EventStoreError, _handle_error)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
