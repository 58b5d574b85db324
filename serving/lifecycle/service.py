"""What the lifecycle's controllers (canary, deployment follower, retraining triggers, registry
sync) read and steer of the running service. `serving.state.ServiceState` is the one
implementation; the controllers depend on this shape, not on it, so the service's state may hold
them without an import circle."""

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from monitoring.events import EventStore
from monitoring.monitor import Monitor
from serving.lifecycle.audit import AuditLog
from serving.lifecycle.rollout import ModelSlot, RolloutPlan
from serving.settings import Settings


class SteeredService(Protocol):
    settings: Settings
    store: EventStore
    monitor: Monitor | None
    audit: AuditLog | None
    challenger: ModelSlot | None
    rollout: RolloutPlan
    leads: bool
    """Whether this replica judges alarms, the canary and retraining."""
    champion_dir: Path | None
    champion_registry_version: int | None
    load_challenger: Callable[[Path, int | None], ModelSlot] | None

    def set_rollout(self, plan: RolloutPlan) -> None: ...

    def swap_champion(self) -> str: ...

    def versions(self) -> dict[str, str | None]: ...
