"""`voice-search monitor report`: what the monitors saw over a period, from the event store alone.

The period ends at the newest event (event time, like the monitors), so a report of a replay or
of last week's store reads the same as one of live traffic.
"""

import html
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from monitoring.alarms import AlarmEngine, AlarmState, Transition
from monitoring.drift import DriftResult
from monitoring.events import EventStore
from monitoring.features import event_features, through, window_metric
from monitoring.monitor import DASHBOARD_METRICS, finite

TIMELINE_STEPS = 288
"""Evaluations of the rules across the period (every 5 minutes of a day), for the alarm timeline."""


@dataclass
class Report:
    start: float
    end: float
    events: int
    by_kind: dict[str, int]
    by_outcome: dict[str, int]
    metrics: dict[str, dict[str, float | None]]
    alarms: list[AlarmState]
    transitions: list[Transition]
    drift: list[DriftResult]
    reference: str | None
    generated_at: float = field(default_factory=time.time)


def build_report(
    store: EventStore, engine: AlarmEngine, span_s: float, generated_at: float | None = None
) -> Report:
    latest = store.latest_at()
    end = time.time() if latest is None else latest
    start = end - span_s
    # Only what the period and its first alarm windows need is read, not the whole store.
    history = store.events(since=start - engine.longest_window_s)
    # (start, end]: `span_s` of events ending with the newest, as the alarms' windows end just past it.
    events = [e for e in history if e.created_at > start]
    metrics: dict[str, dict[str, float | None]] = {}
    for name in DASHBOARD_METRICS:
        value = window_metric(name, events, span_s, engine.context)
        metrics[name] = {"value": finite(value.value), "samples": float(value.samples)}
    step = max(span_s / TIMELINE_STEPS, 10.0)
    t = start + step
    while t < end:
        engine.evaluate(history, t)
        t += step
    final = engine.evaluate(history, through(end))
    drift = engine.drift_table(event_features(events))
    return Report(
        start=start,
        end=end,
        events=len(events),
        by_kind=dict(Counter(e.kind for e in events)),
        by_outcome=dict(Counter(e.outcome for e in events)),
        metrics=metrics,
        alarms=final.states,
        transitions=list(engine.history),
        drift=drift,
        reference=engine.reference.source if engine.reference else None,
        generated_at=time.time() if generated_at is None else generated_at,
    )


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC"


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}"


def _tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's content as (title, header, rows), shared by the text and HTML renderings."""
    firing = [s for s in report.alarms if s.state == "firing"]
    return [
        (
            "Traffic",
            ["what", "count"],
            [["events", str(report.events)]]
            + [[f"kind={k}", str(v)] for k, v in sorted(report.by_kind.items())]
            + [[f"outcome={k}", str(v)] for k, v in sorted(report.by_outcome.items())],
        ),
        (
            "Metrics over the period",
            ["metric", "value", "samples"],
            [[k, _number(v["value"]), _number(v["samples"])] for k, v in report.metrics.items()],
        ),
        (
            f"Alarms at the end ({len(firing)} firing)",
            ["rule", "state", "severity", "value", "threshold", "samples"],
            [
                [
                    s.rule,
                    s.state,
                    s.severity,
                    _number(s.value),
                    f"{s.comparator} {s.threshold:g}",
                    str(s.samples),
                ]
                for s in report.alarms
            ],
        ),
        (
            "Alarm transitions",
            ["time", "rule", "change", "value", "threshold"],
            [
                [
                    _when(t.at),
                    t.rule,
                    "fired" if t.firing else "resolved",
                    _number(t.value),
                    f"{t.threshold:g}",
                ]
                for t in report.transitions
            ],
        ),
        (
            f"Drift against the reference ({report.reference or 'none'})",
            ["feature", "test", "statistic", "threshold", "drifted", "n"],
            [
                [
                    d.feature,
                    d.test,
                    _number(d.statistic),
                    f"{d.direction} {d.threshold:g}",
                    "yes" if d.drifted else "no" if d.judged else "not enough data",
                    f"{d.current_n} (of {d.min_samples})" if not d.judged else str(d.current_n),
                ]
                for d in report.drift
            ],
        ),
    ]


def render_text(report: Report) -> str:
    lines = [f"voice-search monitoring report: {_when(report.start)} to {_when(report.end)}", ""]
    for title, header, rows in _tables(report):
        lines.append(f"## {title}")
        if not rows:
            lines += ["(none)", ""]
            continue
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        lines.append("")
    return "\n".join(lines)


def render_html(report: Report) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>voice-search monitoring report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.firing{background:#fdd}",
        "</style></head><body>",
        f"<h1>voice-search monitoring report</h1><p>{_when(report.start)} to {_when(report.end)}</p>",
    ]
    for title, header, rows in _tables(report):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            css = " class='firing'" if "firing" in row or "fired" in row else ""
            parts.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)
