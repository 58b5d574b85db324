"""Alarm rules from YAML, their evaluation over event windows, and notifiers.

A rule compares either a window metric (`metric: null_transcript_ratio`, see
`features.WINDOW_METRICS`) or a drift statistic (`drift: rms_dbfs` with `test: psi`, see
`drift.STAT_TESTS`) over a trailing window of event time with a threshold:

```yaml
rules:
  - name: volume_drift
    drift: rms_dbfs
    test: psi
    window: 2m
    comparator: ">"
    threshold: 0.5
    severity: warning
    min_samples: 60
```

A window with fewer than `min_samples` events is not judged (state `insufficient_data`): a
threshold on three requests is noise. Adapting a threshold is an edit of the file, not of code.
"""

import bisect
import json
import logging
import math
import re
import threading
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from monitoring.drift import STAT_TESTS, DriftResult, ReferenceProfile, detect, drift_table
from monitoring.events import Event
from monitoring.features import (
    CATEGORICAL_FEATURES,
    FEATURES,
    WINDOW_METRICS,
    WindowContext,
    WindowValue,
    event_features,
    window_metric,
    words,
)

logger = logging.getLogger(__name__)

Comparator = Literal[">", ">=", "<", "<="]
Severity = Literal["info", "warning", "critical"]
State = Literal["ok", "firing", "insufficient_data"]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
"""What `parse_duration` reads; the API declares its duration parameters with it."""
_DURATION = re.compile(DURATION_PATTERN)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float) -> float:
    """Seconds from "90", "90s", "2m", "1h", "1d" or a number."""
    if isinstance(text, int | float):
        return float(text)
    found = _DURATION.match(str(text))
    if not found:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 2m, 1h, 1d)")
    return float(found.group(1)) * _UNIT_S[found.group(2) or "s"]


@dataclass(frozen=True)
class Rule:
    """One alarm: `metric` or `drift` (a feature, compared with `test`) over `window_s` of event time."""

    name: str
    window_s: float
    threshold: float
    comparator: Comparator = ">"
    severity: Severity = "warning"
    min_samples: int = 1
    metric: str | None = None
    drift: str | None = None
    test: str | None = None
    description: str = ""
    per_slot: bool = False
    """Also judged on each slot's voice searches (and their sessions) while more than one slot
    answers, as `name[slot]`: a canary's challenger gets its own alarm."""

    def __post_init__(self) -> None:
        if (self.metric is None) == (self.drift is None):
            raise ValueError(f"rule {self.name!r}: give exactly one of 'metric' or 'drift'")
        if self.per_slot and self.metric is None:
            raise ValueError(f"rule {self.name!r}: per_slot applies to metric rules only")
        if self.metric is not None and self.metric not in WINDOW_METRICS:
            raise ValueError(
                f"rule {self.name!r}: unknown metric {self.metric!r}; known: {', '.join(WINDOW_METRICS)}"
            )
        if self.drift is not None:
            if self.drift not in FEATURES:
                raise ValueError(
                    f"rule {self.name!r}: unknown feature {self.drift!r}; known: {', '.join(FEATURES)}"
                )
            if self.test not in STAT_TESTS:
                raise ValueError(f"rule {self.name!r}: 'test' must be one of {', '.join(STAT_TESTS)}")
            spec = STAT_TESTS[self.test]
            categorical = self.drift in CATEGORICAL_FEATURES
            if (spec.kind == "categorical" and not categorical) or (
                categorical and self.test not in ("psi", "chi_square")
            ):
                raise ValueError(f"rule {self.name!r}: test {self.test} does not apply to {self.drift}")
            if self.comparator[0] != spec.direction:
                # A p-value drifts when it is small, a distance when it is large: ">" on chi_square
                # would fire on every window that does NOT drift.
                raise ValueError(
                    f"rule {self.name!r}: {self.test} drifts when {spec.direction} the threshold"
                )
        if self.comparator not in _COMPARE:
            raise ValueError(f"rule {self.name!r}: comparator must be one of {', '.join(_COMPARE)}")
        if self.severity not in ("info", "warning", "critical"):
            raise ValueError(f"rule {self.name!r}: severity must be info, warning or critical")
        if not math.isfinite(self.threshold):
            raise ValueError(f"rule {self.name!r}: the threshold must be a finite number")
        if self.window_s <= 0 or self.min_samples < 1:
            raise ValueError(f"rule {self.name!r}: window must be positive and min_samples >= 1")

    @property
    def subject(self) -> str:
        """What the rule watches: a metric name, or `drift:<feature>:<test>`."""
        return self.metric if self.metric else f"drift:{self.drift}:{self.test}"

    def breached_by(self, value: float) -> bool:
        """Whether a window's value passes the threshold (fires, given enough samples)."""
        return _COMPARE[self.comparator](value, self.threshold)


def load_rules(path: Path) -> list[Rule]:
    """Rules from a YAML file; raises ValueError naming the file and the bad rule."""
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read alarm rules {path}: {e}") from e
    if not isinstance(body, dict) or not isinstance(body.get("rules"), list):
        raise ValueError(f"{path}: expected a mapping with a 'rules' list")  # noqa: TRY004 (a config error)
    rules = []
    for raw in body["rules"]:
        if not isinstance(raw, dict) or "name" not in raw:
            raise ValueError(f"{path}: every rule needs a name, got {raw!r}")
        values = dict(raw)
        try:
            values["window_s"] = parse_duration(values.pop("window"))
            # YAML reads "1e-3" as a string: thresholds and counts are coerced, not trusted.
            values["threshold"] = float(values["threshold"])
            values["min_samples"] = int(values.get("min_samples", 1))
            if "drift" in values and "comparator" not in values and values.get("test") in STAT_TESTS:
                values["comparator"] = STAT_TESTS[values["test"]].direction
            rules.append(Rule(**values))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: rule {raw.get('name')!r}: {e}") from e
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: rule names must be unique")
    return rules


@dataclass(frozen=True)
class AlarmState:
    rule: str
    state: State
    severity: Severity
    value: float | None
    threshold: float
    comparator: Comparator
    samples: int
    window_s: float
    evaluated_at: float
    """Event time of the evaluation."""
    since: float
    """Event time the rule entered this state."""
    subject: str
    description: str = ""


@dataclass(frozen=True)
class Transition:
    """An alarm that started or stopped firing, at an event time."""

    rule: str
    severity: Severity
    firing: bool
    at: float
    value: float | None
    threshold: float
    subject: str


class Notifier(Protocol):
    def notify(self, transition: Transition) -> None: ...


class LogNotifier:
    def notify(self, transition: Transition) -> None:
        verb = "FIRING" if transition.firing else "resolved"
        logger.warning(
            "alarm %s %s (%s): %s = %s, threshold %s",
            transition.rule,
            verb,
            transition.severity,
            transition.subject,
            transition.value,
            transition.threshold,
        )


class WebhookNotifier:
    """POSTs each transition as JSON to a URL, off the caller's thread; failures are logged, not raised."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url, self.timeout_s = url, timeout_s

    def notify(self, transition: Transition) -> None:
        threading.Thread(target=self._post, args=(transition,), daemon=True, name="alarm-webhook").start()

    def _post(self, transition: Transition) -> None:
        body = json.dumps({"alarm": asdict(transition)}).encode()
        try:
            # Inside the try: a malformed URL raises ValueError here, and must be logged too.
            request = urllib.request.Request(
                self.url, body, {"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=self.timeout_s):
                pass
        except (OSError, ValueError) as e:
            logger.warning("alarm webhook %s failed: %s", self.url, e)


def default_notifiers(webhook_url: str = "") -> list[Notifier]:
    """Every alarm is logged; with a URL it is also POSTed there."""
    notifiers: list[Notifier] = [LogNotifier()]
    if webhook_url:
        notifiers.append(WebhookNotifier(webhook_url))
    return notifiers


@dataclass
class Evaluation:
    """One pass over the rules at one event time."""

    at: float
    states: list[AlarmState]
    drift: list[DriftResult] = field(default_factory=list)


class WindowedEvents:
    """Events in time order with fast [start, end) slicing."""

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = sorted(events, key=lambda e: e.created_at)
        self._times = [e.created_at for e in self.events]

    def between(self, start: float, end: float) -> list[Event]:
        return self.events[bisect.bisect_left(self._times, start) : bisect.bisect_left(self._times, end)]


def rule_value(
    rule: Rule,
    events: Sequence[Event],
    reference: ReferenceProfile | None,
    context: WindowContext,
    features: dict[str, list[float | str]] | None = None,
) -> tuple[WindowValue, DriftResult | None]:
    """What `rule` compares with its threshold, over `events` (already cut to its window)."""
    if rule.metric is not None:
        return window_metric(rule.metric, events, rule.window_s, context), None
    assert rule.drift is not None and rule.test is not None
    current = (features if features is not None else event_features(events)).get(rule.drift, [])
    if reference is None or not reference.features.get(rule.drift):
        return WindowValue(None, len(current)), None
    result = detect(
        rule.drift, reference.features[rule.drift], current, rule.test, rule.threshold, rule.min_samples
    )
    statistic = result.statistic if math.isfinite(result.statistic) else None
    return WindowValue(statistic, len(current)), result


def slot_rule_name(rule: str, slot: str) -> str:
    return f"{rule}[{slot}]"


def by_slot(events: Sequence[Event]) -> dict[str, list[Event]]:
    """Each answering slot's voice searches with the rest of their sessions' events (clicks, typed
    searches), when more than one slot answered in `events`; else nothing to split."""
    slots = sorted({e.slot for e in events if e.kind == "voice_search" and e.slot})
    if len(slots) < 2:
        return {}
    split = {}
    for slot in slots:
        sessions = {
            e.session_id for e in events if e.kind == "voice_search" and e.slot == slot and e.session_id
        }
        split[slot] = [
            e for e in events if (e.slot == slot if e.kind == "voice_search" else e.session_id in sessions)
        ]
    return split


class AlarmEngine:
    """Evaluates rules over windows ending at a given event time and remembers each rule's state."""

    def __init__(
        self,
        rules: Sequence[Rule],
        reference: ReferenceProfile | None = None,
        notifiers: Sequence[Notifier] = (),
        redo_window_s: float = 30.0,
        history: int = 1000,
        tokenize: Callable[[str], list[str]] = words,
    ) -> None:
        """`tokenize` splits text into vocabulary words (default: lower-case word characters);
        give the same normalizer the reference vocabulary was built with."""
        self.rules, self.reference, self.notifiers = list(rules), reference, list(notifiers)
        vocabulary = reference.vocabulary if reference else frozenset()
        self.context = WindowContext(vocabulary, redo_window_s, tokenize)
        self.states: dict[str, AlarmState] = {}
        self.history: deque[Transition] = deque(maxlen=history)
        self._lock = threading.Lock()

    @property
    def longest_window_s(self) -> float:
        return max((r.window_s for r in self.rules), default=0.0)

    def evaluate(self, events: Sequence[Event], now: float) -> Evaluation:
        """Judge every rule on the window ending at `now` (exclusive of later events)."""
        windows = WindowedEvents(events)
        features_by_window: dict[float, dict[str, list[float | str]]] = {}
        states, drift = [], []
        for rule in self.rules:
            in_window = windows.between(now - rule.window_s, now)
            features = None
            if rule.drift is not None:
                if rule.window_s not in features_by_window:
                    features_by_window[rule.window_s] = event_features(in_window)
                features = features_by_window[rule.window_s]
            try:
                value, result = rule_value(rule, in_window, self.reference, self.context, features)
            except (ArithmeticError, ValueError, TypeError):
                # One broken rule must not silence the others: it is judged on no data, and logged.
                logger.exception("alarm rule %s could not be evaluated", rule.name)
                value, result = WindowValue(None, 0), None
            if result is not None:
                drift.append(result)
            states.append(self._judge(rule, value, now))
            if rule.per_slot:
                for slot, slot_events in by_slot(in_window).items():
                    slot_value, _ = rule_value(rule, slot_events, self.reference, self.context, None)
                    states.append(
                        self._judge(replace(rule, name=slot_rule_name(rule.name, slot)), slot_value, now)
                    )
        self._retire_slots({s.rule for s in states}, now)
        return Evaluation(now, states, drift)

    def _retire_slots(self, judged: set[str], now: float) -> None:
        """A slot that no longer answers (a challenger rolled back or promoted) takes its alarms
        with it; a firing one is resolved, since no later window can judge it."""
        with self._lock:
            gone = [s for name, s in self.states.items() if "[" in name and name not in judged]
            for state in gone:
                del self.states[state.rule]
        for state in gone:
            if state.state == "firing":
                transition = Transition(
                    state.rule, state.severity, False, now, None, state.threshold, state.subject
                )
                self.history.append(transition)
                self._notify(transition)

    def _judge(self, rule: Rule, value: WindowValue, now: float) -> AlarmState:
        if value.value is None or value.samples < rule.min_samples:
            state: State = "insufficient_data"
        else:
            state = "firing" if rule.breached_by(value.value) else "ok"
        with self._lock:
            previous = self.states.get(rule.name)
            if state == "insufficient_data" and previous is not None and previous.state == "firing":
                # No data is not good news: an outage that stops traffic must not "resolve" its alarm.
                state = "firing"
            since = previous.since if previous and previous.state == state else now
            current = AlarmState(
                rule.name,
                state,
                rule.severity,
                value.value,
                rule.threshold,
                rule.comparator,
                value.samples,
                rule.window_s,
                now,
                since,
                rule.subject,
                rule.description,
            )
            self.states[rule.name] = current
            was_firing = bool(previous and previous.state == "firing")
            transition = None
            if was_firing != (state == "firing"):
                transition = Transition(
                    rule.name,
                    rule.severity,
                    state == "firing",
                    now,
                    value.value,
                    rule.threshold,
                    rule.subject,
                )
                self.history.append(transition)
        if transition is not None:
            self._notify(transition)
        return current

    def _notify(self, transition: Transition) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(transition)
            except Exception:
                logger.exception("notifier %r failed", notifier)

    def drift_table(self, current: dict[str, list[float | str]]) -> list[DriftResult]:
        """Every profiled feature against the reference, judged by the test, threshold and sample
        minimum of the rule that watches it (so the table and the alarms agree); a feature no rule
        watches gets its test's defaults and the largest minimum of the drift rules, so a small
        window is "not enough data" in the table as in the alarms."""
        if self.reference is None:
            return []
        watched = {r.drift: r for r in self.rules if r.drift is not None and r.test is not None}
        tests = {f: str(r.test) for f, r in watched.items()}
        floor = max((r.min_samples for r in watched.values()), default=1)
        least = {f: watched[f].min_samples if f in watched else floor for f in self.reference.features}
        return drift_table(
            self.reference, current, tests, {f: r.threshold for f, r in watched.items()}, least
        )

    def snapshot(self) -> dict[str, Any]:
        """Current states and the transition history, JSON-ready."""
        with self._lock:
            return {
                "alerts": [asdict(s) for s in self.states.values()],
                "history": [asdict(t) for t in self.history],
            }
