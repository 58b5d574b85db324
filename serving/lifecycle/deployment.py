"""One rollout for every replica: the desired state in the shared store, and each replica following it.

With several replicas on one PostgreSQL store, an admin call or the canary controller changes the
rollout on the one replica it reaches. Each replica then compares, every `SYNC_S`:

- its own state with the state it last agreed on: a difference is a change made here, and is
  published as the next revision (the last writer wins when two replicas change it at once);
- the store's revision with the one it last agreed on: a newer one was made elsewhere, and this
  replica reconciles to it (loads the challenger, swaps champion and standby, sets mode and share).

So every replica routes a session the same way (`session_bucket` is the same everywhere) within a
second of a change. A replica that starts, or restarts, adopts the stored state before it serves a
canary; the first replica of a new store publishes its own configuration.
"""

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from monitoring.events import EventStoreError
from serving.lifecycle.rollout import RolloutPlan
from serving.lifecycle.service import SteeredService

logger = logging.getLogger(__name__)

KEY = "rollout"
SYNC_S = 0.5
"""How often a replica compares its state with the store's: the lag of a change across replicas."""


@dataclass(frozen=True)
class DesiredState:
    """What every replica should serve. Models are named by folder, as every replica sees them."""

    champion_dir: str | None
    challenger_dir: str | None
    mode: str = "off"
    canary_share: float = 0.0
    auto: bool = False
    champion_registry_version: int | None = None
    challenger_registry_version: int | None = None

    @classmethod
    def of(cls, service: SteeredService) -> "DesiredState":
        challenger = service.challenger
        return cls(
            champion_dir=str(service.champion_dir) if service.champion_dir else None,
            challenger_dir=str(challenger.model_dir) if challenger and challenger.model_dir else None,
            mode=service.rollout.mode,
            canary_share=service.rollout.canary_share,
            auto=service.rollout.auto,
            champion_registry_version=service.champion_registry_version,
            challenger_registry_version=challenger.registry_version if challenger else None,
        )

    @property
    def plan(self) -> RolloutPlan:
        return RolloutPlan(self.mode, self.canary_share, self.auto)  # type: ignore[arg-type]


@dataclass
class Follower:
    """Keeps this replica and the shared desired state in agreement (see the module's docstring)."""

    service: SteeredService
    agreed: DesiredState | None = None
    revision: int = 0

    def stored(self) -> tuple[int, DesiredState | None]:
        document = self.service.store.shared_state(KEY)
        if document is None:
            return 0, None
        revision = int(document.pop("revision"))
        return revision, DesiredState(**document)

    def publish(self, state: DesiredState, after: int) -> None:
        self.revision = after + 1
        self.service.store.put_shared_state(KEY, asdict(state) | {"revision": self.revision}, at=time.time())
        self.agreed = state
        logger.info("published rollout revision %d: %s", self.revision, state)

    async def sync(self) -> None:
        """One comparison: publish a local change, or follow a newer stored revision."""
        local = DesiredState.of(self.service)
        revision, stored = await run_in_threadpool(self.stored)
        if self.agreed is not None and local != self.agreed:
            await run_in_threadpool(self.publish, local, max(revision, self.revision))
        elif stored is None:
            await run_in_threadpool(self.publish, local, 0)
        elif revision != self.revision:
            await self.follow(stored)
            self.agreed, self.revision = DesiredState.of(self.service), revision

    async def follow(self, target: DesiredState) -> None:
        """Make this replica serve `target`: the challenger, champion and standby, then the plan."""
        service = self.service
        local = DesiredState.of(service)
        if target.champion_dir != local.champion_dir and target.champion_dir == local.challenger_dir:
            service.swap_champion()  # blue-green elsewhere: the standby here is the new champion
            local = DesiredState.of(service)
        elif target.champion_dir != local.champion_dir:
            logger.error(
                "the service's champion is %s, which this replica has not loaded (it serves %s): "
                "restart it with VOICE_SEARCH_MODEL_DIR=%s",
                target.champion_dir,
                local.champion_dir,
                target.champion_dir,
            )
        if target.challenger_dir and target.challenger_dir != local.challenger_dir:
            await self.load_challenger(Path(target.challenger_dir), target.challenger_registry_version)
        service.set_rollout(target.plan if service.challenger else RolloutPlan("off"))
        logger.info("following the service's rollout: %s", target)

    async def load_challenger(self, folder: Path, registry_version: int | None) -> None:
        if self.service.load_challenger is None:
            return
        slot = await run_in_threadpool(self.service.load_challenger, folder, registry_version)
        old, self.service.challenger = self.service.challenger, slot
        self.service.set_rollout(RolloutPlan("off"))  # the old plan referred to the old challenger
        slot.batcher.start()
        if old is not None:
            await old.batcher.stop()

    async def run(self, every_s: float = SYNC_S) -> None:
        while True:
            try:
                await self.sync()
            except EventStoreError as e:
                logger.warning("cannot reach the shared rollout state (%s); retrying", e)
            except Exception:
                logger.exception("following the shared rollout state failed; retrying")
            await asyncio.sleep(every_s)
