"""Rollout control for operators: change the plan, read the audit log. Bearer token required."""

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from serving.deps import Admin, Service
from serving.errors import BadRequestError
from serving.lifecycle.audit import AuditEntry
from serving.lifecycle.rollout import RolloutPlan

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
        "champion": service.model_version,
        "challenger": service.challenger.model_version if service.challenger else None,
    }
    entry = AuditEntry(actor, "rollout", body.reason, details)
    if service.audit is not None:
        entry = await run_in_threadpool(service.audit.record, entry)
    return asdict(entry)


class Reason(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


@router.post("/swap", summary="Blue-green: the standby (challenger) and the champion change places (audited)")
async def swap(body: Reason, service: Service, actor: Admin) -> dict[str, Any]:
    before = {
        "champion": service.model_version,
        "challenger": service.challenger.model_version if service.challenger else None,
    }
    service.swap_champion()
    after = {
        "champion": service.model_version,
        "challenger": service.challenger.model_version if service.challenger else None,
    }
    entry = AuditEntry(actor, "swap", body.reason, {"before": before, "after": after})
    if service.audit is not None:
        entry = await run_in_threadpool(service.audit.record, entry)
    return asdict(entry)


@router.get("/audit", summary="The newest audit entries, newest first")
async def audit(service: Service, actor: Admin, limit: int = 100) -> dict[str, Any]:
    entries = (
        await run_in_threadpool(service.audit.record if False else service.audit.entries, limit)
        if service.audit
        else []
    )
    return {"entries": [asdict(e) for e in entries]}
