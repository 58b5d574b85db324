"""Rollout control for operators: change the plan, read the audit log. Bearer token required."""

from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving.deps import Admin, Service
from serving.http_errors import BadRequestError, ConflictError, NotFoundError
from serving.lifecycle.audit import AuditEntry
from serving.lifecycle.registry import FAILED_GATES, RegistryError, open_server_registry, sync_registry
from serving.lifecycle.rollout import ModelSlot, RolloutPlan
from serving.routes.common import Limit
from serving.state import ServiceState

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class RolloutChange(BaseModel):
    mode: str = Field(description="off, shadow or canary")
    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    auto: bool = Field(False, description="canary only: ramp while the gates hold, roll back when one fails")
    reason: str = Field(min_length=1, max_length=500, description="why: kept in the audit log")


@router.post("/rollout", summary="Change the rollout plan (audited)")
async def change_rollout(body: RolloutChange, service: Service, actor: Admin) -> dict[str, Any]:
    before = service.rollout
    try:
        plan = RolloutPlan(body.mode, body.canary_share, body.auto)  # type: ignore[arg-type]
    except ValueError as e:
        raise BadRequestError(str(e)) from e
    service.set_rollout(plan)
    details: dict[str, Any] = {
        "before": asdict(before),
        "after": asdict(plan),
    } | service.versions()
    return await _audited(service, AuditEntry(actor, "rollout", body.reason, details))


class Reason(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class ChallengerLoad(BaseModel):
    version: str | None = Field(None, description="a registered version number or alias (challenger, ...)")
    model_dir: str | None = Field(None, description="or a model folder on the server")
    reason: str = Field(min_length=1, max_length=500)


@router.post("/challenger", summary="Load a challenger beside the champion (rollout must be off; audited)")
async def load_challenger(body: ChallengerLoad, service: Service, actor: Admin) -> dict[str, Any]:
    if (body.version is None) == (body.model_dir is None):
        raise BadRequestError("give exactly one of 'version' (from the registry) and 'model_dir'")
    if service.rollout.mode != "off":
        raise ConflictError(
            f"switch the rollout off before replacing the challenger (it is {service.rollout.mode})"
        )
    before = service.challenger.model_version if service.challenger else None
    slot = await run_in_threadpool(_load, service, body)
    old, service.challenger = service.challenger, slot
    slot.batcher.start()
    if old is not None:
        await old.batcher.stop()
    details = {"before": before, "after": slot.model_version, "registry_version": slot.registry_version}
    return await _audited(service, AuditEntry(actor, "load_challenger", body.reason, details))


def _load(service: ServiceState, body: ChallengerLoad) -> ModelSlot:
    assert service.load_challenger is not None  # checked by the route
    if body.model_dir is not None:
        folder = Path(body.model_dir)
        if not (folder / "config.json").is_file():
            raise BadRequestError(f"not a model folder on this server: {folder}")
        return service.load_challenger(folder, None)
    registry = open_server_registry(service.settings)
    try:
        version = registry.get(str(body.version))
    except RegistryError as e:
        raise NotFoundError(str(e)) from e
    if version.tags.get(FAILED_GATES):
        raise ConflictError(
            f"version {version.version} ({version.model_version}) failed its canary gates "
            f"({version.tags[FAILED_GATES]}); register a new version to try again"
        )
    try:
        folder = registry.model_dir(version.version)
    except RegistryError as e:
        raise NotFoundError(str(e)) from e
    return service.load_challenger(folder, version.version)


@router.post("/swap", summary="Blue-green: the standby (challenger) and the champion change places (audited)")
async def swap(body: Reason, service: Service, actor: Admin) -> dict[str, Any]:
    before = service.versions()
    service.swap_champion()
    await run_in_threadpool(sync_registry, service)
    after = service.versions()
    return await _audited(service, AuditEntry(actor, "swap", body.reason, {"before": before, "after": after}))


async def _audited(service: ServiceState, entry: AuditEntry) -> dict[str, Any]:
    if service.audit is not None:
        entry = await run_in_threadpool(service.audit.record, entry)
    return asdict(entry)


@router.get("/audit", summary="The newest audit entries, newest first")
async def audit(service: Service, actor: Admin, limit: Limit = 100) -> dict[str, Any]:
    entries = await run_in_threadpool(service.audit.entries, limit) if service.audit else []
    return {"entries": [asdict(e) for e in entries]}
