"""A challenger beside the champion: shadow mode and a sticky canary.

- **shadow**: every voice search is answered by the champion; after the answer, its audio is
  offered to the challenger on a bounded queue that drops work rather than wait, and that only
  feeds the challenger once the champion has been idle (no batch running, none waiting) for
  `quiet_s`: on two cores any challenger inference that overlaps a champion batch slows it, so
  on a busy server shadow work is dropped (and counted) rather than done. The challenger's
  transcript, confidence and latency are recorded as a `shadow` event that points at the
  champion's request (`target_request_id`).
- **canary**: a share of sessions is answered by the challenger, chosen by a hash of the session
  id, so a session stays on one model.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.errors import AudioError
from asr.pipeline import Transcript
from monitoring.events import Event, EventStore, EventStoreError
from serving.batching import MicroBatcher
from serving.http_errors import OverloadedError
from serving.settings import ROLLOUT_MODES, Mode

logger = logging.getLogger(__name__)

CHAMPION_SLOT, CHALLENGER_SLOT = "champion", "challenger"
IDLE_POLL_S = 0.005
"""How often a waiting shadow job checks whether the champion has gone idle."""
QUIET_S = 0.05
"""How long the champion must have been idle before the challenger starts a clip: longer than the
gap between one request's answer and the next one's arrival under steady load."""


@dataclass(frozen=True)
class RolloutPlan:
    mode: Mode = "off"
    canary_share: float = 0.0
    """Share of sessions the challenger answers in canary mode, 0 to 1."""
    auto: bool = False
    """The canary controller ramps the share while the gates hold and rolls back when one fails."""

    def __post_init__(self) -> None:
        if self.mode not in ROLLOUT_MODES:
            raise ValueError(f"rollout mode must be one of {ROLLOUT_MODES}, not {self.mode!r}")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"the canary share must be between 0 and 1, not {self.canary_share}")


def session_bucket(session_id: str) -> float:
    """A session's place in [0, 1): the same on every replica and every run."""
    digest = hashlib.sha256(session_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def routes_to_challenger(plan: RolloutPlan, session_id: str) -> bool:
    return plan.mode == "canary" and session_bucket(session_id) < plan.canary_share


@dataclass
class ModelSlot:
    """One loaded model behind its own micro-batcher."""

    name: str
    batcher: MicroBatcher
    model_version: str
    registry_version: int | None = None
    """The registered version it was loaded from, if any: a promotion moves the registry's aliases."""
    model_dir: Path | None = None
    """The folder it was loaded from: what replicas compare to follow one another."""
    failed_gates: str | None = None
    """Why its canary was rolled back, if it was: such a model never answers as the champion."""


@dataclass(frozen=True)
class ShadowJob:
    audio: bytes
    request_id: str
    session_id: str | None
    created_at: float


@dataclass
class ShadowStats:
    offered: int = 0
    dropped: int = 0
    recorded: int = 0
    failed: int = 0


@dataclass
class ShadowRunner:
    """The shadow queue and its worker (see the module docstring)."""

    challenger: ModelSlot
    champion_busy: Callable[[], bool]
    store: EventStore
    max_queue: int = 8
    quiet_s: float = QUIET_S
    stats: ShadowStats = field(default_factory=ShadowStats)

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=self.max_queue)

    def offer(self, job: ShadowJob) -> bool:
        """Queue a clip for the challenger; False (and counted) when the queue is full."""
        self.stats.offered += 1
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        return True

    def depth(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            job = await self._queue.get()
            await self._champion_quiet()
            await self._shadow(job)

    async def _champion_quiet(self) -> None:
        """Return once the champion has been idle for `quiet_s` (users first)."""
        loop = asyncio.get_running_loop()
        quiet_since: float | None = None
        while True:
            if self.champion_busy():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= self.quiet_s:
                return
            await asyncio.sleep(IDLE_POLL_S)

    async def _shadow(self, job: ShadowJob) -> None:
        started = time.perf_counter()
        try:
            transcript: Transcript | None = await self.challenger.batcher.submit(job.audio)
            error = None
        except (AudioError, OverloadedError) as e:
            transcript, error = None, e
        event = _shadow_event(job, self.challenger, transcript, error, time.perf_counter() - started)
        try:
            await asyncio.to_thread(self.store.record, event)
        except EventStoreError:
            logger.exception("could not record the shadow event of %s", job.request_id)
            self.stats.failed += 1
            return
        self.stats.recorded += 1


def _shadow_event(
    job: ShadowJob, slot: ModelSlot, transcript: Transcript | None, error: Exception | None, latency_s: float
) -> Event:
    common: dict[str, Any] = {
        "request_id": f"{job.request_id}-shadow",
        "created_at": job.created_at,
        "kind": "shadow",
        "route": "/v1/search",
        "session_id": job.session_id,
        "model_version": slot.model_version,
        "slot": slot.name,
        "latency_s": latency_s,
        "target_request_id": job.request_id,
    }
    if transcript is None:
        status = 503 if isinstance(error, OverloadedError) else 422
        return Event(
            **common, status_code=status, outcome="server_error", error_type=type(error).__name__,
            error_message=str(error),
        )  # fmt: skip
    return Event(
        **common, status_code=200, outcome="null_transcript" if transcript.no_speech else "ok",
        transcript=transcript.text, confidence=transcript.confidence, timings_s=dict(transcript.timings_s),
    )  # fmt: skip
