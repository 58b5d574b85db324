"""OpenAPI declarations shared by the routes: the audio routes' errors, and typed parameters whose
bounds the document states, so a client (or a fuzzer) reads from it what the server accepts."""

from typing import Annotated, Any

from fastapi import Query

from monitoring.alarms import DURATION_PATTERN
from serving.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in {
        400: "empty audio",
        404: "unknown request id",
        413: "upload larger than the limit",
        415: "not audio, or an unsupported format",
        422: "corrupt, truncated or too long audio; a missing or invalid field",
        503: "overloaded: retry after the Retry-After header's seconds",
    }.items()
}

BINARY = {"type": "string", "format": "binary"}


def audio_body(*fields: str) -> dict[str, Any]:
    """The request body of a route that reads audio itself: multipart, or raw audio bytes."""
    properties: dict[str, Any] = {"file": BINARY} | {name: {"type": "string"} for name in fields}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": ["file"]}
                },
                "audio/*": {"schema": BINARY},
            },
        }
    }


def duration(example: str) -> Any:
    """A duration query parameter (30s, 10m, 1h, 1d); `span_seconds` still bounds its value."""
    return Query(pattern=DURATION_PATTERN, description=f"a duration, e.g. {example}; at most 7d")


Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, 1 to 1000")]

CLIENT_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "a client error, always in this shape"},
    503: {"model": ErrorResponse, "description": "overloaded, or the event store is unavailable: retry"},
}
"""Every route's errors, declared once on the app (routes declare their own causes beside)."""
