"""Request-scoped dependencies: the service state, and audio read from a request within limits."""

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from monitoring.events import EventStore
from monitoring.monitor import Monitor
from serving.batching import MicroBatcher
from serving.errors import (
    BadRequestError,
    BodyTooLargeError,
    ConflictError,
    ForbiddenError,
    UnauthorizedError,
    UnsupportedMediaError,
)
from serving.lifecycle.audit import AuditLog
from serving.lifecycle.review import ReviewQueue

if TYPE_CHECKING:
    from serving.lifecycle.canary import CanaryController
    from serving.lifecycle.triggers import RetrainWorker
from serving.lifecycle.rollout import ModelSlot, RolloutPlan, ShadowRunner, routes_to_challenger
from serving.search import CatalogIndex
from serving.settings import Settings

AUDIO_FIELDS = ("file", "audio")
"""Multipart fields that may carry the audio: `file` (OpenAI's name) or `audio`."""
RAW_TYPES = ("audio/", "application/octet-stream")
"""Content types accepted as a raw audio body; the decoder still checks the bytes themselves."""


@dataclass
class ServiceState:
    """What the routes need, built once per process in the app's `lifespan`."""

    settings: Settings
    batcher: MicroBatcher
    index: CatalogIndex
    store: EventStore
    model_version: str
    domain: str
    monitor: Monitor | None = None
    """None when monitoring is switched off."""
    faults: "Faults" = field(default_factory=lambda: Faults())
    ready: bool = False
    challenger: ModelSlot | None = None
    """A second model beside the champion (`batcher`), for shadow or canary."""
    rollout: RolloutPlan = field(default_factory=RolloutPlan)
    shadow: ShadowRunner | None = None
    audit: AuditLog | None = None
    review: ReviewQueue | None = None
    canary: "CanaryController | None" = None
    retrain: "RetrainWorker | None" = None
    """Starts retraining when its triggers fire (when `retrain_auto`)."""
    """Judges the canary's gates and ramps or rolls back (started with the app)."""
    load_challenger: Callable[[Path, int | None], ModelSlot] | None = None
    """Loads a model folder as a challenger with the champion's decoding (blocking)."""
    champion_registry_version: int | None = None
    """The registered version the champion was loaded from, when known."""
    champion_dir: Path | None = None
    """The folder the champion was loaded from."""
    leads: bool = True
    """Whether this process judges alarms, the canary and retraining: always alone on SQLite; on a
    shared store, only the replica holding the leader lock (`monitoring.postgres.AdvisoryLeader`)."""
    _shadow_task: "asyncio.Task[None] | None" = None
    _shadow_worker_of: ShadowRunner | None = None

    def set_rollout(self, plan: RolloutPlan) -> None:
        """Switch the rollout plan at run time: shadow's worker starts or stops with it."""
        if plan.mode != "off" and self.challenger is None:
            raise ConflictError(
                f"rollout mode {plan.mode!r} needs a challenger; none is loaded"
                " (VOICE_SEARCH_CHALLENGER_DIR, or POST /v1/admin/challenger)"
            )
        self.rollout = plan
        if plan.mode == "shadow" and self.shadow is None and self.challenger is not None:
            self.shadow = ShadowRunner(
                self.challenger, self.batcher.busy, self.store, self.settings.shadow_max_queue
            )
        if plan.mode != "shadow":
            self.shadow = None
        self.start_shadow()

    def versions(self) -> dict[str, str | None]:
        """The champion's and the challenger's model versions, as audit entries record them."""
        return {
            "champion": self.model_version,
            "challenger": self.challenger.model_version if self.challenger else None,
        }

    def swap_champion(self) -> str:
        """Blue-green: the challenger becomes the champion and the champion the standby, in one
        step on the event loop (no request sees half a swap). Returns the new champion's version."""
        if self.challenger is None:
            raise ConflictError("nothing to swap with: no challenger is loaded")
        if self.challenger.failed_gates is not None:
            raise ConflictError(
                f"{self.challenger.model_version} failed its canary gates ({self.challenger.failed_gates}) "
                "and never serves as the champion: load another challenger (POST /v1/admin/challenger)"
            )
        old = ModelSlot(
            self.challenger.name,
            self.batcher,
            self.model_version,
            self.champion_registry_version,
            self.champion_dir,
        )
        self.batcher, self.model_version = self.challenger.batcher, self.challenger.model_version
        self.champion_registry_version = self.challenger.registry_version
        self.champion_dir = self.challenger.model_dir
        self.challenger = old
        self.shadow = None  # its runner fed the old challenger
        self.rollout = RolloutPlan("off")
        self.start_shadow()
        return self.model_version

    def start_shadow(self) -> None:
        """Run the current shadow runner's worker (stopping a previous one); on the event loop."""
        if self._shadow_task is not None and self._shadow_worker_of is self.shadow:
            return
        if self._shadow_task is not None:
            self._shadow_task.cancel()
            self._shadow_task = None
        self._shadow_worker_of = self.shadow
        if self.shadow is not None:
            self._shadow_task = asyncio.get_running_loop().create_task(self.shadow.run(), name="shadow")

    async def stop_shadow(self) -> None:
        if self._shadow_task is not None:
            self._shadow_task.cancel()
            await asyncio.gather(self._shadow_task, return_exceptions=True)
            self._shadow_task = None

    def slot_for(self, session_id: str | None) -> ModelSlot:
        """The model that answers this session: the challenger for canary sessions, else the champion."""
        if self.challenger is not None and session_id and routes_to_challenger(self.rollout, session_id):
            return self.challenger
        return ModelSlot(self.settings.slot, self.batcher, self.model_version)


@dataclass
class Faults:
    """Faults injected on purpose (alarm drills, `POST /v1/admin/faults`); none by default."""

    asr_delay_s: float = 0.0
    """Added to every model call: a slow model."""


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
