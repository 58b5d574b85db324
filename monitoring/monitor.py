"""The monitor of one service process: metrics per event, alarms per step of event time, dashboard data.

The service calls `on_event` for every recorded event (cheap: counters and one dict lookup) and
`evaluate` from a background task when `due`. The monitor's clock is event time: the newest
event's timestamp, so a replay at 10x real time is judged as if it were real traffic.
"""

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from monitoring.alarms import AlarmEngine, Evaluation, Rule, WindowedEvents, rule_value
from monitoring.drift import ReferenceProfile
from monitoring.events import Event, EventStore
from monitoring.features import event_features, through, window_metric
from monitoring.metrics import ServiceMetrics
from monitoring.sessions import SessionTracker

DASHBOARD_METRICS = (
    "requests_per_second",
    "latency_p95_seconds",
    "asr_p95_seconds",
    "client_error_ratio",
    "server_error_ratio",
    "empty_audio_ratio",
    "null_transcript_ratio",
    "no_result_ratio",
    "redo_ratio",
    "switch_to_typing_ratio",
    "click_ratio",
    "mean_confidence",
    "typed_oov_ratio",
)
"""Window metrics charted on the dashboard even when no rule watches them."""


@dataclass(frozen=True)
class MonitorOptions:
    step_s: float = 10.0
    """Event time between two evaluations of the rules."""
    redo_window_s: float = 30.0
    use_event_clock: bool = False
    """Judge windows ending at the newest event's time (replays) instead of the wall clock."""


class Monitor:
    def __init__(
        self,
        store: EventStore,
        metrics: ServiceMetrics,
        engine: AlarmEngine,
        options: MonitorOptions | None = None,
    ) -> None:
        self.store, self.metrics, self.engine = store, metrics, engine
        self.options = options or MonitorOptions()
        self.tracker = SessionTracker(self.options.redo_window_s)
        self.latest_event_at = -math.inf
        self.last_evaluated_at: float | None = None
        self._lock = threading.Lock()

    @property
    def rules(self) -> list[Rule]:
        return self.engine.rules

    @property
    def reference(self) -> ReferenceProfile | None:
        return self.engine.reference

    def on_event(self, event: Event) -> None:
        with self._lock:
            signals = self.tracker.observe(event)
            self.latest_event_at = max(self.latest_event_at, event.created_at)
        self.metrics.observe(event, signals)

    def now(self) -> float:
        if self.options.use_event_clock:
            return self.latest_event_at if self.latest_event_at > -math.inf else time.time()
        return time.time()

    def due(self) -> bool:
        """Time for the next evaluation. With the event clock, time only moves with traffic (and
        never backwards: one replay per server process, in increasing time)."""
        if self.options.use_event_clock and self.latest_event_at == -math.inf:
            return False  # no event time yet: nothing to judge
        return self.last_evaluated_at is None or self.now() - self.last_evaluated_at >= self.options.step_s

    def evaluate(self, now: float | None = None) -> Evaluation:
        """Judge every rule at `now` (default: the monitor's clock) and publish the verdicts."""
        at = self.now() if now is None else now
        # Just past `at`, so the newest event (at exactly `at`) is inside its windows.
        end = through(at)
        events = self.store.events(since=end - self.engine.longest_window_s, until=end)
        evaluation = self.engine.evaluate(events, end)
        self.last_evaluated_at = at
        # NaN, not the last good value, when a window has nothing to measure: a chart must not
        # show a stale number as if it were current.
        for state in evaluation.states:
            self.metrics.alert_firing.labels(state.rule, state.severity).set(state.state == "firing")
            self.metrics.alarm_value.labels(state.rule).set(math.nan if state.value is None else state.value)
        for result in evaluation.drift:
            self.metrics.drift_score.labels(result.feature, result.test).set(result.statistic)
        return evaluation

    def series(self, span_s: float, points: int = 60, now: float | None = None) -> dict[str, Any]:
        """Dashboard data: each rule's value (over its own window, as the alarm sees it) and each
        dashboard metric (over one step) at `points` times across the last `span_s`."""
        end = self.now() if now is None else now
        step = span_s / points
        longest = max(self.engine.longest_window_s, step)
        windows = WindowedEvents(self.store.events(since=end - span_s - longest, until=through(end)))
        times = [end - span_s + step * (i + 1) for i in range(points)]
        context = self.engine.context
        charts: list[dict[str, Any]] = []
        for rule in self.rules:
            values = []
            for t in times:
                in_window = windows.between(t - rule.window_s, through(t))
                value, _ = rule_value(rule, in_window, self.reference, context)
                values.append(finite(value.value) if value.samples >= rule.min_samples else None)
            charts.append(
                {
                    "kind": "rule",
                    "name": rule.name,
                    "subject": rule.subject,
                    "window_s": rule.window_s,
                    "threshold": rule.threshold,
                    "comparator": rule.comparator,
                    "severity": rule.severity,
                    "values": values,
                }
            )
        for metric in DASHBOARD_METRICS:
            values = [
                finite(window_metric(metric, windows.between(t - step, through(t)), step, context).value)
                for t in times
            ]
            charts.append(
                {
                    "kind": "metric",
                    "name": metric,
                    "subject": metric,
                    "window_s": step,
                    "threshold": None,
                    "values": values,
                }
            )
        return {"now": end, "step_s": step, "times": times, "charts": charts}

    def drift(self, window_s: float, now: float | None = None) -> list[dict[str, Any]]:
        """Every profiled feature of the last `window_s` against the reference."""
        if self.reference is None:
            return []
        end = self.now() if now is None else now
        events = self.store.events(since=end - window_s, until=through(end))
        return [
            asdict(r) | {"statistic": finite(r.statistic), "judged": r.judged}
            for r in self.engine.drift_table(event_features(events))
        ]


def finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)
