"""Monitoring endpoints: Prometheus /metrics, alarm states, dashboard data and page, fault drills."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from monitoring.alarms import parse_duration
from monitoring.metrics import CONTENT_TYPE
from monitoring.monitor import Monitor, finite
from serving import schemas
from serving.deps import Service
from serving.http_errors import BadRequestError, NotFoundError
from serving.routes.common import duration
from serving.state import ServiceState

router = APIRouter(tags=["monitoring"])

DASHBOARD = Path(__file__).resolve().parents[1] / "static" / "dashboard.html"


def _monitor(service: ServiceState) -> Monitor:
    if service.monitor is None:
        raise NotFoundError("monitoring is switched off on this server (VOICE_SEARCH_MONITORING=false)")
    return service.monitor


MAX_SPAN_S = 7 * 86_400.0
"""Longest dashboard span or drift window: reading more events than this per request would make
the monitors' readers compete with the request path for the event store."""


def span_seconds(text: str, name: str) -> float:
    """A duration parameter (10m, 1h) as seconds within (0, 7 days], or a 400."""
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise BadRequestError(f"{name}: {e}") from None
    if not 0 < seconds <= MAX_SPAN_S:
        raise BadRequestError(f"{name} must be positive and at most 7d")
    return seconds


@router.get("/metrics", include_in_schema=False)
async def metrics(service: Service) -> Response:
    """Prometheus text exposition."""
    return Response(_monitor(service).metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/v1/alerts", summary="Alarm states and their recent transitions")
async def alerts(service: Service) -> dict[str, Any]:
    monitor = _monitor(service)
    return {
        "now": finite(monitor.now()),
        "evaluated_at": monitor.last_evaluated_at,
    } | monitor.engine.snapshot()


@router.get("/v1/monitoring/series", summary="Time series of every alarm rule and dashboard metric")
async def series(
    service: Service,
    span: Annotated[str, duration("30m, 6h")] = "30m",
    points: Annotated[int, Query(ge=2, le=500)] = 60,
) -> dict[str, Any]:
    monitor = _monitor(service)
    return await run_in_threadpool(monitor.series, span_seconds(span, "span"), points)


@router.get("/v1/monitoring/drift", summary="Every profiled feature of a recent window against the reference")
async def drift(service: Service, window: Annotated[str, duration("5m")] = "5m") -> dict[str, Any]:
    monitor = _monitor(service)
    table = await run_in_threadpool(monitor.drift, span_seconds(window, "window"))
    reference = monitor.reference
    return {
        "window": window,
        # The file the service loaded, and what it was measured on (a fresh clone has the
        # former, not necessarily the latter's corpus).
        "reference": str(service.settings.reference_profile) if reference else None,
        "reference_source": reference.source if reference else None,
        "reference_model_version": reference.model_version if reference else None,
        "model_version": service.model_version,
        "features": table,
    }


@router.post("/v1/admin/faults", summary="Inject faults for alarm drills (only with fault_injection on)")
async def faults(body: schemas.Faults, service: Service) -> schemas.Faults:
    if not service.settings.fault_injection:
        raise NotFoundError("fault injection is disabled (VOICE_SEARCH_FAULT_INJECTION=false)")
    service.faults.asr_delay_s = body.asr_delay_ms / 1000
    return body


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(DASHBOARD, media_type="text/html")
