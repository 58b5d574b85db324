"""Request-scoped dependencies: the service state, the admin's token, and audio read from a
request within limits (FastAPI's `Depends`, as in the full-stack FastAPI template)."""

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serving.http_errors import (
    BadRequestError,
    BodyTooLargeError,
    ForbiddenError,
    UnauthorizedError,
    UnsupportedMediaError,
)
from serving.state import ServiceState

AUDIO_FIELDS = ("file", "audio")
"""Multipart fields that may carry the audio: `file` (OpenAI's name) or `audio`."""
RAW_TYPES = ("audio/", "application/octet-stream")
"""Content types accepted as a raw audio body; the decoder still checks the bytes themselves."""


def get_service(request: Request) -> ServiceState:
    service: ServiceState = request.app.state.service
    return service


Service = Annotated[ServiceState, Depends(get_service)]


def require_admin(request: Request) -> str:
    """The bearer token of an admin route, compared in constant time. With no token configured
    the admin routes are disabled (403), never open. Returns the actor (`X-Actor`, else admin)."""
    service = get_service(request)
    expected = service.settings.admin_token
    if not expected:
        raise ForbiddenError("admin routes are disabled on this server: set VOICE_SEARCH_ADMIN_TOKEN")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise UnauthorizedError("this route needs 'Authorization: Bearer <the admin token>'")
    return request.headers.get("x-actor", "admin")[:100]


Admin = Annotated[str, Depends(require_admin)]


@dataclass(frozen=True)
class AudioRequest:
    """Audio from a multipart upload (`file` or `audio` field) or a raw body, plus the text fields
    (multipart fields, else the query string)."""

    audio: bytes
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)

    def text(self, name: str, required: bool = False, max_length: int = 200) -> str | None:
        value = self.fields.get(name) or None
        if value is None and required:
            raise BadRequestError(f"the field {name!r} is required")
        if value is not None and len(value) > max_length:
            raise BadRequestError(f"the field {name!r} is longer than {max_length} characters")
        return value


async def read_audio_request(request: Request, max_bytes: int) -> AudioRequest:
    """Read the body, refusing it (413) as soon as it passes `max_bytes`, before it is all read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLargeError(f"the request body is {declared} bytes; the limit is {max_bytes}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLargeError(f"the request body is over the limit of {max_bytes} bytes")
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return await _from_multipart(request, bytes(body))
    if content_type and not content_type.startswith(RAW_TYPES):
        raise UnsupportedMediaError(
            f"content type {content_type!r} is not audio: send multipart/form-data with a 'file' field, "
            "or the raw audio with an audio/* content type"
        )
    return AudioRequest(bytes(body), content_type or "application/octet-stream", dict(request.query_params))


async def _from_multipart(request: Request, body: bytes) -> AudioRequest:
    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=2, max_fields=20).parse()  # type: ignore[arg-type]
    except MultiPartException as e:
        raise BadRequestError(f"malformed multipart body: {e.message}") from e
    fields = dict(request.query_params)
    audio: UploadFile | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in AUDIO_FIELDS:
                    audio = value
            else:
                fields[key] = value
        if audio is None:
            raise BadRequestError(f"the multipart body has no audio file field ({' or '.join(AUDIO_FIELDS)})")
        data = await audio.read()
    finally:
        await form.close()
    return AudioRequest(data, audio.content_type or "application/octet-stream", fields)
