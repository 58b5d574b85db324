"""OpenAPI descriptions shared by the audio routes."""

from typing import Any

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
