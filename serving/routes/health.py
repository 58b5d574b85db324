"""Liveness, readiness and version."""

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving import __version__, schemas
from serving.state import ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=schemas.Health)
async def healthz() -> schemas.Health:
    """The process is up (it answers even while the model loads)."""
    return schemas.Health(status="ok")


@router.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
async def readyz(request: Request) -> JSONResponse:
    """Ready for traffic: model, index and event store loaded."""
    service: ServiceState | None = getattr(request.app.state, "service", None)
    ready = bool(service and service.ready)
    return JSONResponse({"status": "ready" if ready else "loading"}, status_code=200 if ready else 503)


@router.get("/version", response_model=schemas.VersionInfo)
async def version(request: Request) -> schemas.VersionInfo:
    service: ServiceState = request.app.state.service
    return schemas.VersionInfo(
        service=__version__,
        model_version=service.model_version,
        slot=service.settings.slot,
        domain=service.domain,
        bias_decoding=service.settings.bias_decoding,
        replica=os.getpid(),
        leader=service.leads,
    )
