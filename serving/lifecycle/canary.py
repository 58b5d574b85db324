"""The canary controller: ramp a challenger while its gates hold, roll it back when one fails.

Every `step_s` it compares the challenger's window of voice searches with the champion's
(`monitoring.canary_gates`). A failed gate switches the rollout off at once (the champion answers every
session again), writes the gate values to the audit log and sends an alarm to the webhook. When
every gate has passed for `hold_s` at the current share, the share moves to the next step of the
ramp; after the last step held, the challenger is promoted: it becomes the champion, and the old
champion stays loaded beside it as the standby (a blue-green pair), so a rollback is instant.
Time is the monitors' clock (event time in a replay), so a replay ramps as production would.

A canary judges only its own evidence: the voice searches of the challenger version it loaded,
since its own start (a previous challenger's events in the same slot do not count). At the last
step the champion answers no session, so its live window empties; the gates then compare the
challenger with the champion's window from the first step, when it answered nearly everyone
(`reference`), which is what completes a ramp. A rolled-back challenger is marked as failed, here
and in the registry, so that no swap or rollback can make it the champion.
"""

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from monitoring.alarms import Notifier, Transition, default_notifiers
from monitoring.canary_gates import GateResult, RampPolicy, SlotWindow, judge_canary, slot_window
from monitoring.events import Event, EventStoreError
from serving.lifecycle.audit import AuditEntry
from serving.lifecycle.registry import mark_failed, sync_registry
from serving.lifecycle.rollout import RolloutPlan
from serving.lifecycle.service import SteeredService

logger = logging.getLogger(__name__)

AUTOMATION = "automation"


@dataclass
class CanaryController:
    service: SteeredService
    policy: RampPolicy = field(default_factory=RampPolicy)
    notifiers: list[Notifier] = field(default_factory=list)
    passing_since: float | None = None
    last_results: list[GateResult] = field(default_factory=list)
    started_at: float | None = None
    """When this canary (of `version`) began: the challenger's events before it are not its own."""
    version: str | None = None
    reference: SlotWindow | None = None
    """The champion's full window at the first advance: the last step's comparison."""

    @classmethod
    def for_service(cls, service: SteeredService, policy: RampPolicy) -> "CanaryController":
        return cls(service, policy, default_notifiers(service.settings.alert_webhook_url))

    def now(self) -> float:
        return self.service.monitor.now() if self.service.monitor is not None else time.time()

    def active(self) -> bool:
        plan = self.service.rollout
        return plan.mode == "canary" and plan.auto and self.service.challenger is not None

    def window(self, at: float) -> list[Event]:
        """The events the gates judge at `at` (blocking: call it off the event loop)."""
        return self.service.store.events(since=at - self.policy.window_s, until=at + 1e-6)

    def step(self, at: float, events: Sequence[Event]) -> str | None:
        """Judge the gates once; returns "rollback", "advance", "promote" or None. On the event
        loop: a rollout change starts or stops the shadow worker there."""
        service = self.service
        plan = service.rollout
        if not self.active() or service.challenger is None:
            self.passing_since = self.started_at = self.version = self.reference = None
            return None
        if self.version != service.challenger.model_version or self.started_at is None:
            if not events:
                # No clock yet: a replay's event time begins with its first event, and a start
                # taken from the wall clock before it would put every replayed search before it.
                return None
            self.version, self.started_at, self.reference = service.challenger.model_version, at, None
            self.passing_since = None
        redo_s = service.settings.redo_window_s
        champion = slot_window(events, service.settings.slot, redo_s)
        if champion.voice_searches < self.policy.gates.min_samples and self.reference is not None:
            champion = self.reference
        challenger = slot_window(self._own(events), service.challenger.name, redo_s)
        self.last_results = results = judge_canary(champion, challenger, self.policy.gates)
        failed = [r for r in results if r.passed is False]
        if failed:
            self._rollback(at, results, failed)
            return "rollback"
        if not all(r.passed for r in results):
            return None  # undecided: wait for samples
        if self.passing_since is None:
            self.passing_since = at
        if at - self.passing_since < self.policy.hold_s:
            return None
        later = [s for s in self.policy.steps if s > plan.canary_share]
        self.passing_since = None
        if self.reference is None and champion.voice_searches >= self.policy.gates.min_samples:
            # Kept from the first step, when the champion still answered nearly everyone: at 100%
            # the challenger answers everyone, and its latency must be compared under that load,
            # not with a champion's window at half the load (a healthy copy failed its p95 gate so).
            self.reference = champion
        if later:
            self._set(
                RolloutPlan("canary", later[0], auto=True),
                "advance",
                f"gates held {self.policy.hold_s:.0f} s",
                results,
            )
            return "advance"
        self._promote(results)
        return "promote"

    def _own(self, events: Sequence[Event]) -> list[Event]:
        """`events` without the challenger slot's searches that are not this canary's: another
        version's, or from before it began."""
        slot = self.service.challenger.name if self.service.challenger else None
        start = self.started_at if self.started_at is not None else -float("inf")
        return [
            e for e in events
            if e.slot != slot or (e.model_version == self.version and e.created_at >= start)
        ]  # fmt: skip

    def _rollback(self, at: float, results: list[GateResult], failed: list[GateResult]) -> None:
        reason = "gate failed: " + ", ".join(f"{r.name} {r.challenger} vs {r.champion}" for r in failed)
        challenger = self.service.challenger
        if challenger is not None:
            challenger.failed_gates = reason
            if challenger.registry_version is not None:
                asyncio.get_running_loop().run_in_executor(
                    None, mark_failed, self.service, challenger.registry_version, reason
                )
        self._set(RolloutPlan("off"), "rollback", reason, results)
        first = failed[0]
        alarm = Transition(
            rule="canary_rollback", severity="critical", firing=True, at=at,
            value=first.challenger, threshold=first.champion or 0.0,
            subject=f"{self.service.challenger.model_version if self.service.challenger else '?'}: {reason}",
        )  # fmt: skip
        for notifier in self.notifiers:
            notifier.notify(alarm)

    async def run(self, step_s: float) -> None:
        """Judge every `step_s` seconds while a canary ramps by itself."""
        while True:
            await asyncio.sleep(step_s)
            if not self.active() or not self.service.leads:
                self.passing_since = None
                continue
            at = self.now()
            try:
                events = await asyncio.to_thread(self.window, at)
            except EventStoreError:
                logger.exception("canary: cannot read the event store; judging again in %s s", step_s)
                continue
            self.step(at, events)

    def _promote(self, results: list[GateResult]) -> None:
        promoted = self.service.swap_champion()
        self._set(RolloutPlan("off"), "promote", f"{promoted} held every step of the ramp", results)
        # The registry follows off the event loop; the service has switched already.
        asyncio.get_running_loop().run_in_executor(None, sync_registry, self.service)

    def _set(self, plan: RolloutPlan, action: str, reason: str, results: list[GateResult]) -> None:
        before = self.service.rollout
        self.service.set_rollout(plan)
        details: dict[str, Any] = {
            "before": asdict(before),
            "after": asdict(plan),
            "gates": [asdict(r) for r in results],
        } | self.service.versions()
        logger.warning("canary %s: %s", action, reason)
        if self.service.audit is not None:
            self.service.audit.record(AuditEntry(AUTOMATION, action, reason, details))
