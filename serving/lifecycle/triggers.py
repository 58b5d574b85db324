"""Automatic retraining: when an output or drift alarm has fired long enough, or enough new
strong labels have come in, the server starts `voice-search retrain` in a background process.

The decision (`decide`) is a pure function of the alarm states, the count of new strong labels,
the last start and the runs still going: a cooldown keeps a lasting alarm from starting run after
run, and a cap bounds the runs at once. The worker checks on its own task, never in a request,
and runs the retrain as a separate, low-priority process that inherits the server's settings and
hands its challenger back through the admin API (so every step of it is audited like an
operator's). With `retrain_deploy=canary` the worker then moves a challenger that has been in
shadow for `retrain_shadow_s` on to the automatic canary, whose controller ramps or rolls back.
Times are event time, the monitors' clock, so replays faster than real time work.
"""

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from monitoring.alarms import parse_duration
from serving.lifecycle.audit import AuditEntry
from serving.lifecycle.labels import production_labels, reviewed_labels
from serving.lifecycle.retrain import REPORT
from serving.lifecycle.review import REVIEW_LABELS
from serving.lifecycle.rollout import RolloutPlan
from serving.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from serving.lifecycle.service import SteeredService

logger = logging.getLogger(__name__)

ACTOR = "automation"


@dataclass(frozen=True)
class TriggerPolicy:
    alarms: tuple[str, ...]
    """Alarm rules whose firing means the model no longer fits its traffic."""
    alarm_for_s: float
    new_labels: int
    """This many new strong labels start a run on their own; 0 never."""
    cooldown_s: float
    max_running: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> "TriggerPolicy":
        alarms = tuple(a.strip() for a in settings.retrain_on_alarms.split(",") if a.strip())
        s = settings
        return cls(
            alarms, s.retrain_alarm_for_s, s.retrain_new_labels, s.retrain_cooldown_s, s.retrain_max_running
        )


def decide(
    policy: TriggerPolicy,
    now: float,
    firing_since: Mapping[str, float],
    new_strong_labels: int,
    last_started: float | None,
    running: int,
) -> str | None:
    """Why a retrain should start now, or None. `firing_since`: firing rules -> since when."""
    if running >= policy.max_running:
        return None
    if last_started is not None and now - last_started < policy.cooldown_s:
        return None
    for rule in policy.alarms:
        since = firing_since.get(rule)
        if since is not None and now - since >= policy.alarm_for_s:
            return f"alarm {rule} firing for {now - since:.0f} s"
    if policy.new_labels and new_strong_labels >= policy.new_labels:
        return f"{new_strong_labels} new strong labels"
    return None


@dataclass
class Run:
    reason: str
    started_at: float
    """Event time."""
    out_dir: Path
    process: subprocess.Popen[bytes]
    returncode: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    finished_at: float | None = None
    """Event time the worker saw the run end."""
    canary_started: bool = False

    def public(self) -> dict[str, Any]:
        return {"reason": self.reason, "started_at": self.started_at, "out_dir": str(self.out_dir),
                "pid": self.process.pid, "returncode": self.returncode, "result": self.result}  # fmt: skip


class RetrainWorker:
    """Checks the trigger every `retrain_check_s` and keeps track of the runs it started."""

    def __init__(self, service: "SteeredService") -> None:
        self.service = service
        self.settings = service.settings
        self.policy = TriggerPolicy.from_settings(service.settings)
        self.runs: list[Run] = []
        self.last_check: dict[str, Any] = {}

    def now(self) -> float:
        return self.service.monitor.now() if self.service.monitor is not None else time.time()

    @property
    def running(self) -> list[Run]:
        return [r for r in self.runs if r.returncode is None]

    def firing_since(self) -> dict[str, float]:
        if self.service.monitor is None:
            return {}
        states = list(self.service.monitor.engine.states.values())
        return {s.rule: s.since for s in states if s.state == "firing"}

    def new_strong_labels(self) -> int:
        """Strong labels (corrections, reviews) on kept audio since the last run started, within the
        span a retrain exports (older ones would not train, and need not be read every check)."""
        since = self.now() - parse_duration(self.settings.retrain_since)
        if self.runs:
            since = max(since, self.runs[-1].started_at)
        events = self.service.store.events(since=since)
        corrections = [
            x for x in production_labels(events, self.settings.redo_window_s) if x.strength == "strong"
        ]
        return len(corrections) + len(reviewed_labels(self.settings.labels_dir / REVIEW_LABELS, since))

    def check(self) -> Run | None:
        """Collect finished runs, then start one if the policy says so (blocking: off the loop)."""
        for run in self.running:
            if run.process.poll() is not None:
                self._finished(run)
        now = self.now()
        labels = self.new_strong_labels() if self.policy.new_labels else 0
        last = self.runs[-1].started_at if self.runs else None
        reason = decide(self.policy, now, self.firing_since(), labels, last, len(self.running))
        self.last_check = {"at": now, "new_strong_labels": labels, "decision": reason}
        return self._start(reason, now) if reason else None

    def _start(self, reason: str, now: float) -> Run:
        out = self.settings.db_path.parent / "retrain" / time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
        out.mkdir(parents=True, exist_ok=True)
        # The worker itself moves a shadowed challenger on to the canary, in event time.
        deploy = "shadow" if self.settings.retrain_deploy == "canary" else self.settings.retrain_deploy
        command = [
            sys.executable, "-m", "serving.cli", "retrain", "--out", str(out),
            "--since", self.settings.retrain_since, "--steps", str(self.settings.retrain_steps),
            "--actor", ACTOR, "--trigger", reason,
            "--max-rtf-ratio", str(self.settings.retrain_max_rtf_ratio),
            "--deploy", deploy, "--server", self.settings.server_url,
        ]  # fmt: skip
        with (out / "retrain.log").open("wb") as log:
            process = subprocess.Popen(
                ["nice", "-n", "10", *command], cwd=REPO_ROOT, env=self.settings.to_env(),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        run = Run(reason, now, out, process)
        self.runs.append(run)
        self._audit("retrain_started", reason, {"out_dir": str(out), "pid": process.pid, "command": command})
        logger.warning("retraining started (%s): %s", reason, out)
        return run

    def to_canary(self, now: float) -> None:
        """A retrained challenger that has shadowed long enough enters the automatic canary (on the
        event loop: the rollout switch stops shadow's worker there)."""
        if self.settings.retrain_deploy != "canary" or not self.runs:
            return
        run = self.runs[-1]
        registered = run.result.get("registered")
        challenger = self.service.challenger
        if run.canary_started or run.finished_at is None or not registered or challenger is None:
            return
        if challenger.registry_version != registered["version"] or self.service.rollout.mode != "shadow":
            run.canary_started = True  # someone changed the plan meanwhile: leave it to them
            return
        if now - run.finished_at >= self.settings.retrain_shadow_s:
            run.canary_started = True
            share = self.settings.ramp_steps[0]
            self.service.set_rollout(RolloutPlan("canary", share, auto=True))
            details = {"version": registered["version"], "canary_share": share} | self.service.versions()
            self._audit(
                "rollout",
                f"retrained v{registered['version']} shadowed {now - run.finished_at:.0f} s: canary",
                details,
            )

    def _finished(self, run: Run) -> None:
        run.returncode = run.process.returncode
        run.finished_at = self.now()
        report = run.out_dir / REPORT
        if report.is_file():
            found = json.loads(report.read_text(encoding="utf-8"))
            decision = found.get("decision") or {}
            run.result = {"registered": found.get("registered"), "passed": decision.get("passed"),
                          "reasons": decision.get("reasons", [])}  # fmt: skip
        self._audit("retrain_finished", run.reason, {"returncode": run.returncode, **run.result,
                                                      "out_dir": str(run.out_dir)})  # fmt: skip

    def _audit(self, action: str, reason: str, details: dict[str, Any]) -> None:
        if self.service.audit is not None:
            self.service.audit.record(AuditEntry(ACTOR, action, reason, details))

    async def run(self) -> None:
        while True:
            try:
                if self.service.leads:  # one replica retrains for the service
                    await run_in_threadpool(self.check)
                    self.to_canary(self.now())
            except Exception:
                logger.exception("the retrain trigger check failed; will retry")
            await asyncio.sleep(self.settings.retrain_check_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.retrain_auto,
            "policy": asdict(self.policy),
            "last_check": self.last_check,
            "runs": [r.public() for r in self.runs[-20:]],
        }

    def stop(self) -> None:
        """On shutdown: a run still going is left to finish on its own (it only needs the registry)."""
        for run in self.running:
            logger.warning("retrain %s (pid %d) still running at shutdown", run.out_dir, run.process.pid)
