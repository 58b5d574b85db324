"""The FastAPI application: `create_app(settings)`, with everything heavy loaded in `lifespan`.

Every request under /v1/ becomes one event in the store, whatever happens to it: the recording
middleware gives it a request id, the route fills in what it learned (transcript, hits, input
statistics, timings), the error handlers fill in the error, and the middleware writes the row
after the response is built. Errors become responses in `serving.http_errors` only.
"""

import asyncio
import importlib.util
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from asr.audio import AudioLimits
from asr.corpus.domain import DomainPack
from asr.decoding import BeamOptions
from asr.errors import AudioError
from asr.pipeline import Pipeline, PipelineOptions, Transcript, build_pipeline
from asr.spotting import SpotOptions
from asr.text import vocabulary_words
from monitoring.alarms import AlarmEngine, default_notifiers, load_rules
from monitoring.canary_gates import GatePolicy, RampPolicy
from monitoring.drift import ReferenceProfile
from monitoring.events import EventStore, EventStoreError, purge_audio
from monitoring.metrics import ServiceMetrics
from monitoring.monitor import Monitor, MonitorOptions
from serving import __version__, streaming
from serving.batching import MicroBatcher, TranscribeMany
from serving.headers import EVENT_TIME_HEADER, REQUEST_ID_HEADER
from serving.http_errors import BadRequestError, BodyTooLargeError, error_response, install_error_handlers
from serving.lifecycle.audit import AuditLog
from serving.lifecycle.canary import CanaryController
from serving.lifecycle.deployment import Follower
from serving.lifecycle.registry import registered_version
from serving.lifecycle.review import ReviewQueue
from serving.lifecycle.rollout import CHALLENGER_SLOT, ModelSlot, RolloutPlan
from serving.lifecycle.triggers import RetrainWorker
from serving.recording import EventDraft, draft_of, write_event
from serving.routes import admin, feedback, health, monitoring, review, rollout, search, stream, transcribe
from serving.routes.common import CLIENT_ERRORS
from serving.search import CatalogIndex, SearchOptions
from serving.settings import Settings
from serving.state import Faults, ServiceState

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


ROUTERS = (
    search.router,
    stream.router,
    transcribe.router,
    feedback.router,
    health.router,
    monitoring.router,
    rollout.router,
    admin.router,
    review.router,
    review.page,
)
ROUTE_PATHS = tuple(getattr(route, "path", "") for router in ROUTERS for route in router.routes)
"""The service's paths (metrics label any other path "other")."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(_load, settings, ROUTE_PATHS)
        app.state.service = state
        state.batcher.start()
        if state.challenger is not None:
            state.challenger.batcher.start()
        tasks = [asyncio.create_task(_purge_expired_audio(state), name="audio-retention")]
        state.set_rollout(state.rollout)  # the configured plan: checked, and shadow's worker started
        state.canary = CanaryController.for_service(state, _ramp(settings))
        tasks.append(asyncio.create_task(state.canary.run(settings.canary_step_s), name="canary"))
        if settings.event_store_url:
            tasks += _follow_the_cluster(state, settings.event_store_url)
        if state.monitor is not None:
            tasks.append(asyncio.create_task(_evaluate_alarms(state), name="alarms"))
        if settings.retrain_auto:
            state.retrain = RetrainWorker(state)
            tasks.append(asyncio.create_task(state.retrain.run(), name="retrain-trigger"))
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            for task in tasks:
                task.cancel()
            # Let a running alarm evaluation finish before the store it reads is closed.
            await asyncio.gather(*tasks, return_exceptions=True)
            if state.retrain is not None:
                state.retrain.stop()
            await state.stop_shadow()
            await state.batcher.stop()
            if state.challenger is not None:
                await state.challenger.batcher.stop()
            if state.audit is not None:
                state.audit.close()
            if state.review is not None:
                state.review.close()
            state.store.close()

    app = FastAPI(
        title="voice-search",
        version=__version__,
        description="Offline voice search: speak a query, get catalog results. Every request is recorded."
        "\n\n## Streaming voice search (WebSocket, not listed below)\n\n" + (streaming.__doc__ or ""),
        lifespan=lifespan,
        responses=CLIENT_ERRORS,
        docs_url=None,  # served below from the swagger-ui-py package, not a CDN
    )
    app.middleware("http")(_record_events)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    _self_hosted_docs(app)

    @app.get("/", include_in_schema=False)
    async def demo_page() -> FileResponse:
        """The demo page (one self-contained file), served by a route so unknown paths stay 404s."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app


DOCS_ASSETS = "/docs-assets"


def _self_hosted_docs(app: FastAPI) -> None:
    """`/docs` from swagger-ui's dist in the swagger-ui-py package: the page works offline
    (FastAPI's default loads swagger-ui from a CDN, and the page stays blank without one)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    # Only the package's files: importing it would load its handlers for other frameworks.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing: run `make install`")
    assets = Path(next(iter(spec.submodule_search_locations))) / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory serving.app:create_app_from_env` (configures logging too)."""
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return create_app(settings)


def _load(settings: Settings, routes: Sequence[str] = ()) -> ServiceState:
    started = time.perf_counter()
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)
    pack = DomainPack.load(settings.domain_dir)
    decoding = _decoding(settings, pack)
    pipeline = build_pipeline(settings.model_dir, device=settings.device, **decoding)
    store = settings.open_event_store()
    faults = Faults()
    batcher = _batcher(settings, pipeline, faults)
    search = SearchOptions(
        limit=settings.search_limit, min_score=settings.search_min_score, min_match=settings.search_min_match
    )
    index = CatalogIndex(pack, search)
    version = pipeline.recognizer.version
    monitor = _monitor(settings, store, batcher, routes, version) if settings.monitoring else None
    load_s = time.perf_counter() - started
    if monitor is not None:
        monitor.metrics.model_load.labels(version).set(load_s)
        monitor.metrics.model_info.labels(version, settings.slot).set(1)
    logger.info("loaded %s in %.1f s", version, load_s)
    rollout = RolloutPlan(settings.rollout_mode, settings.canary_share, settings.canary_auto)  # type: ignore[arg-type]

    def load_challenger(model_dir: Path, registry_version: int | None = None) -> ModelSlot:
        return _challenger(settings, decoding, model_dir, registry_version)

    challenger = load_challenger(Path(settings.challenger_dir)) if settings.challenger_dir else None
    state = ServiceState(settings, batcher, index, store, version, pack.name, monitor, faults)
    state.challenger, state.rollout = challenger, rollout
    state.audit = AuditLog(settings.audit_path)
    state.review = ReviewQueue(settings.review_path, settings.labels_dir)
    state.load_challenger = load_challenger
    state.champion_registry_version = registered_version(settings, version)
    state.champion_dir = Path(settings.model_dir)
    return state


def _ramp(settings: Settings) -> RampPolicy:
    gates = GatePolicy(min_samples=settings.canary_min_samples)
    return RampPolicy(settings.ramp_steps, settings.canary_hold_s, settings.canary_window_s, gates)


class _Decoding(TypedDict):
    beam: BeamOptions | None
    spotting: SpotOptions | None
    options: PipelineOptions


def _decoding(settings: Settings, pack: DomainPack) -> _Decoding:
    """How every model this process serves decodes: catalog-biased beam search and name spotting
    as configured, within the API's limits."""
    return _Decoding(
        beam=pack.bias(settings.beam_size, settings.hotword_weight) if settings.bias_decoding else None,
        spotting=settings.spotting(pack),
        options=PipelineOptions(
            limits=AudioLimits(max_clip_s=settings.api_max_clip_s), batch_size=settings.micro_batch_size
        ),
    )


def _challenger(
    settings: Settings, decoding: _Decoding, model_dir: Path, registry_version: int | None = None
) -> ModelSlot:
    """A second model, with the same decoding and limits as the champion, on its own batcher."""
    pipeline = build_pipeline(model_dir, device=settings.device, **decoding)
    batcher = _batcher(settings, pipeline)
    logger.info("loaded the challenger %s", pipeline.recognizer.version)
    return ModelSlot(CHALLENGER_SLOT, batcher, pipeline.recognizer.version, registry_version, model_dir)


def _batcher(settings: Settings, pipeline: Pipeline, faults: Faults | None = None) -> MicroBatcher:
    """The pipeline behind a micro-batcher: its front half on a thread of its own beside the
    model (`prepare_beside_model`), or the whole pipeline on the model's thread."""
    prepare = pipeline.prepare_many if settings.prepare_beside_model else None
    transcribe_many: TranscribeMany = pipeline.recognize_prepared if prepare else pipeline.transcribe_many
    if faults is not None:
        transcribe_many = _with_faults(transcribe_many, faults)
    return MicroBatcher(
        transcribe_many, settings.micro_batch_size, settings.micro_batch_wait_ms, settings.max_queue, prepare
    )


def _with_faults(transcribe_many: TranscribeMany, faults: Faults) -> TranscribeMany:
    def transcribe(clips: Sequence[Any]) -> list[Transcript | AudioError]:
        if faults.asr_delay_s > 0:
            time.sleep(faults.asr_delay_s)
        return transcribe_many(clips)

    return transcribe


def _monitor(
    settings: Settings, store: EventStore, batcher: MicroBatcher, routes: Sequence[str], model_version: str
) -> Monitor:
    rules = load_rules(settings.alarm_rules)
    reference = None
    if settings.reference_profile.is_file():
        reference = ReferenceProfile.load(settings.reference_profile)
    else:
        logger.warning("no reference profile at %s: drift rules will not judge", settings.reference_profile)
    notifiers = default_notifiers(settings.alert_webhook_url)
    if reference is not None and reference.model_version and reference.model_version != model_version:
        logger.warning(
            "the reference profile %s was measured with %s, not the served %s: output drift (confidence, "
            "words) will reflect the model change; rebuild it with `voice-search monitor baseline`",
            settings.reference_profile,
            reference.model_version,
            model_version,
        )
    engine = AlarmEngine(rules, reference, notifiers, settings.redo_window_s, tokenize=vocabulary_words)
    metrics = ServiceMetrics(routes=routes)
    metrics.track_queue(batcher.depth)
    options = MonitorOptions(settings.alarm_step_s, settings.redo_window_s, settings.trust_client_time)
    return Monitor(store, metrics, engine, options)


PURGE_INTERVAL_S = 3600.0
"""How often retained recordings past their retention period are deleted (and once at start-up)."""


async def _purge_expired_audio(state: ServiceState) -> None:
    """Delete recordings older than the retention period, at start-up and then hourly."""
    while True:
        retention_s = state.settings.audio_retention_days * 86_400
        try:
            purged = await run_in_threadpool(purge_audio, state.store, retention_s)
        except (EventStoreError, OSError):
            logger.exception("could not purge expired recordings; will retry")
        else:
            if purged:
                logger.info("deleted %d recordings past their retention period", purged)
        await asyncio.sleep(PURGE_INTERVAL_S)


def _follow_the_cluster(state: ServiceState, url: str) -> list["asyncio.Task[None]"]:
    """On a shared store: the rollout every replica follows, and the election of the one replica
    that judges alarms, the canary and retraining (so the service is judged once, on all traffic)."""
    from monitoring.postgres import AdvisoryLeader  # psycopg (the cluster extra) only where it is used

    state.leads = False
    leader = AdvisoryLeader(url)

    async def elect() -> None:
        try:
            while True:
                state.leads = await run_in_threadpool(leader.is_leader)
                await asyncio.sleep(LEADER_CHECK_S)
        finally:
            leader.close()

    follower = Follower(state)
    return [
        asyncio.create_task(elect(), name="leader-election"),
        asyncio.create_task(follower.run(), name="rollout-follower"),
    ]


LEADER_CHECK_S = 1.0
"""How often a replica asks for the leader lock (and the leader checks it still holds it)."""


async def _evaluate_alarms(state: ServiceState) -> None:
    """Judge the alarm rules whenever `alarm_step_s` of event time has passed (checked each second),
    on the leader only."""
    monitor = state.monitor
    assert monitor is not None
    while True:
        if state.leads and monitor.due():
            try:
                await run_in_threadpool(monitor.evaluate)
            except Exception:
                logger.exception("alarm evaluation failed; will retry")
        await asyncio.sleep(1.0)


UNRECORDED = ("/v1/alerts", "/v1/monitoring/", "/v1/admin/", "/v1/rollout", "/v1/retrain", "/v1/review")
"""/v1/ paths that read or steer the monitors: recording them would make the dashboard watch itself."""


async def _record_events(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    now = time.time()
    request.state.event = draft = EventDraft(request_id=uuid.uuid4().hex, received_at=now, at=now)
    started = time.perf_counter()
    service: ServiceState | None = getattr(request.app.state, "service", None)
    recorded = request.url.path.startswith("/v1/") and not request.url.path.startswith(UNRECORDED)
    monitor = service.monitor if service and recorded else None
    if monitor is not None:
        monitor.metrics.in_flight.inc()
    try:
        _take_event_time(request, draft, service)
        response = await _refuse_large_body(request) or await call_next(request)
    except Exception as e:
        if not isinstance(e, BadRequestError):
            logger.exception("unhandled error in %s %s", request.method, request.url.path)
        response = error_response(request, e)
    finally:
        if monitor is not None:
            monitor.metrics.in_flight.dec()
    if recorded and not await _store_event(request, response.status_code, time.perf_counter() - started):
        # An answer whose event was not written is not acknowledged: the client retries, and no
        # request the client saw succeed is missing from the store (the monitors', the labels').
        response = error_response(request, EventStoreError("the request could not be recorded; retry"))
    response.headers[REQUEST_ID_HEADER] = draft.request_id
    return response


EVENT_TIME_RANGE_S = (-400 * 86_400.0, 60.0)
"""How far before and after the server's clock a replayed event time may be (a stamp in
milliseconds, or in the future, would stop the monitors' clock)."""


def _take_event_time(request: Request, draft: EventDraft, service: ServiceState | None) -> None:
    """Replays stamp requests with their traffic time (seconds since the epoch), when allowed."""
    stamp = request.headers.get(EVENT_TIME_HEADER)
    if stamp is None or service is None or not service.settings.trust_client_time:
        return
    try:
        at = float(stamp)
    except ValueError:
        at = math.nan
    earliest, latest = (draft.received_at + d for d in EVENT_TIME_RANGE_S)
    if not earliest <= at <= latest:  # also refuses nan and inf
        raise BadRequestError(
            f"{EVENT_TIME_HEADER} must be seconds since the epoch within 400 days before now, not {stamp!r}"
        )
    draft.at = at


async def _refuse_large_body(request: Request) -> Response | None:
    """A 413 for any route whose declared body is over the limit (audio routes also count bytes
    as they read, for bodies sent without a length)."""
    service: ServiceState | None = getattr(request.app.state, "service", None)
    declared = request.headers.get("content-length", "")
    if service is None or not declared.isdigit() or int(declared) <= service.settings.max_upload_bytes:
        return None
    limit = service.settings.max_upload_bytes
    return error_response(
        request, BodyTooLargeError(f"the request body is {declared} bytes; the limit is {limit}")
    )


async def _store_event(request: Request, status: int, latency_s: float) -> bool:
    """Record the request's event and count it in the metrics; whether the event was written.
    Never raises (failures are logged and counted)."""
    try:
        return await _record(request, status, latency_s)
    except Exception:
        logger.exception("could not record the event of %s", draft_of(request).request_id)
        return False


async def _record(request: Request, status: int, latency_s: float) -> bool:
    service: ServiceState | None = getattr(request.app.state, "service", None)
    event = draft_of(request).finish(
        request.url.path,
        status,
        latency_s,
        service.settings.slot if service else None,
        service.model_version if service else None,
    )
    if service is None:
        # Not started, or shutting down: the answer is an error already, with nothing to record.
        logger.error("no event store to record %s", event.request_id)
        return status >= 500
    return await write_event(event, service.store, service.monitor)
