"""The rollout's state: which models serve, how the challenger is tried, and what shadow saw."""

import time
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from monitoring.canary_gates import slot_window
from monitoring.shadow import compare_shadow
from serving.deps import Service
from serving.routes.common import duration
from serving.routes.monitoring import span_seconds

router = APIRouter(prefix="/v1", tags=["rollout"])
HISTORY = 20
"""Audit entries shown with the state: what was done and why (details stay behind the admin token)."""


@router.get("/rollout", summary="Champion and challenger, the rollout mode, and the shadow comparison")
async def rollout(service: Service, window: Annotated[str, duration("10m")] = "10m") -> dict[str, Any]:
    """`window` (e.g. 10m, 1h) bounds the shadow comparison, ending now."""
    span_s = span_seconds(window, "window")
    events = await run_in_threadpool(service.store.events, time.time() - span_s)
    history = await run_in_threadpool(service.audit.entries, HISTORY) if service.audit else []
    challenger = service.challenger
    slots = [service.settings.slot] + ([challenger.name] if challenger else [])
    redo_s = service.settings.redo_window_s
    return {
        "mode": service.rollout.mode,
        "canary_share": service.rollout.canary_share,
        "champion": {"slot": service.settings.slot, "model_version": service.model_version},
        "challenger": {"slot": challenger.name, "model_version": challenger.model_version}
        if challenger
        else None,
        "shadow": asdict(service.shadow.stats) | {"queued": service.shadow.depth()}
        if service.shadow
        else None,
        "comparison": asdict(compare_shadow(events)),
        "auto": service.rollout.auto,
        "gates": [asdict(r) for r in service.canary.last_results] if service.canary else [],
        "window_s": span_s,
        "slots": [slot_window(events, slot, redo_s).summary() for slot in slots],
        "history": [{"at": e.at, "actor": e.actor, "action": e.action, "reason": e.reason} for e in history],
    }


@router.get("/retrain", summary="Automatic retraining: its triggers, last check and the runs it started")
async def retrain_state(service: Service) -> dict[str, Any]:
    if service.retrain is None:
        return {"enabled": False, "runs": []}
    return service.retrain.snapshot()
