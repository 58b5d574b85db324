"""The service's state: what the routes and the lifecycle controllers share, built once per
process in the app's `lifespan` (`serving.app`)."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from monitoring.events import EventStore
from monitoring.monitor import Monitor
from serving.batching import MicroBatcher
from serving.http_errors import ConflictError
from serving.lifecycle.audit import AuditLog
from serving.lifecycle.review import ReviewQueue
from serving.lifecycle.rollout import ModelSlot, RolloutPlan, ShadowRunner, routes_to_challenger
from serving.search import CatalogIndex
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.lifecycle.canary import CanaryController
    from serving.lifecycle.triggers import RetrainWorker


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
    open_streams: int = 0
    """Streaming voice searches open now (`stream_max_concurrent` bounds them)."""
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
