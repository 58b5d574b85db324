"""What a simulation run shows: windows of what users met, the service's reactions on the same
axis, a summary (time to detect, time to recover, users affected), a PNG, an HTML page and JSON.

Every figure comes from the simulator's own log of requests (it knows what each user wanted) and
from the server (alarm transitions, the audit log of retrains, shadow, canary steps, promotions
and rollbacks, and its event store for events == requests).
"""

import html
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.simulation.runner import Request, Run
from serving.simulation.scenarios import Change

SERIES = ("search_success", "null_transcripts", "redo", "switch_to_typing", "latency_p95_s")
TITLES = {
    "search_success": "search success (top hit is what the user wanted)",
    "null_transcripts": "null transcripts",
    "redo": "redo (voice search again)",
    "switch_to_typing": "switch to typing",
    "latency_p95_s": "p95 latency (s)",
}
RECOVERY_MARGIN = 0.02
"""Recovered: success on the new items within this of the old items' success before the shock."""


@dataclass(frozen=True)
class Window:
    t_s: float
    """Traffic seconds from the start to the window's start."""
    voice_searches: int
    search_success: float | None
    success_new: float | None
    success_old: float | None
    null_transcripts: float | None
    redo: float | None
    switch_to_typing: float | None
    latency_p95_s: float | None


@dataclass(frozen=True)
class Marker:
    t_s: float
    kind: str
    """alarm, resolved, retrain, rollout, rollback, promote, pause, operator, change."""
    label: str


@dataclass
class Summary:
    requests: int
    events: int | None
    """Events the server stored for them (shadow transcripts aside); must equal `requests`."""
    shock_s: float | None
    time_to_detect_s: float | None
    detected_by: str | None
    false_alarms: list[str]
    success_before: float | None
    """Success on the old items before the first change."""
    success_new_best: float | None
    time_to_recover_s: float | None
    users_affected: float | None
    """Share of sessions after the change with a failed voice search (bad deploy: that met the
    degraded challenger)."""
    retrains: int
    rollbacks: int
    promotions: int
    paused_wall_s: float
    share_to_people: float | None = None
    """Voice searches sent to a person (202) instead of answered by the model."""
    reviewed: int = 0
    queue_time_p50_s: float | None = None
    queue_time_p95_s: float | None = None
    """Traffic seconds from a request sent to people to its accepted review."""
    notes: list[str] = field(default_factory=list)


def _mean(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def windows(run: Run) -> list[Window]:
    width = run.scenario.window_s
    # Whole windows only: the sessions still finishing after the scenario's end would make a last,
    # partial window of a few redos (it plotted as search success 0 and redo 1.0).
    count = max(1, int(run.scenario.duration_s // width))
    buckets: list[list[Request]] = [[] for _ in range(count)]
    for r in run.requests:
        index = int((r.at - run.start) // width)
        if 0 <= index < count:
            buckets[index].append(r)
    found = []
    for i, group in enumerate(buckets):
        voice = [r for r in group if r.kind in ("voice", "redo") and r.status == 200]
        first = [r for r in voice if r.kind == "voice"]
        typed = [r for r in group if r.kind == "typed"]
        latencies = [r.latency_s for r in voice if r.latency_s is not None]
        found.append(
            Window(
                t_s=i * width,
                voice_searches=len(voice),
                search_success=_mean([bool(r.success) for r in voice]),
                success_new=_mean([bool(r.success) for r in voice if r.new_item]),
                success_old=_mean([bool(r.success) for r in voice if not r.new_item]),
                null_transcripts=_mean([bool(r.null) for r in voice]),
                redo=len([r for r in voice if r.kind == "redo"]) / len(voice) if voice else None,
                switch_to_typing=len(typed) / len(first) if first else None,
                latency_p95_s=float(np.percentile(latencies, 95)) if latencies else None,
            )
        )
    return [w for w in found if w.voice_searches]


def _event_time(run: Run, wall: float) -> float:
    """The traffic time at a wall-clock moment: that of the last request answered by then."""
    before = [r.at for r in run.requests if r.wall <= wall]
    return (max(before) if before else run.start) - run.start


ACTION_KIND = {
    "retrain_started": "retrain",
    "retrain_finished": "retrain",
    "retrain_registered": "retrain",
    "retrain_rejected": "retrain",
    "load_challenger": "rollout",
    "rollout": "rollout",
    "advance": "rollout",
    "rollback": "rollback",
    "promote": "promote",
    "swap": "promote",
}


def markers(run: Run, transitions: Sequence[dict[str, Any]], audit: Sequence[dict[str, Any]]) -> list[Marker]:
    found = [
        Marker(
            t["at"] - run.start,
            "alarm" if t["firing"] else "resolved",
            f"{t['rule']} {'fires' if t['firing'] else 'resolves'}",
        )
        for t in transitions
        if run.start <= t["at"] <= run.start + run.scenario.duration_s + 600
    ]
    began = min((r.wall for r in run.requests), default=0.0) - 5.0
    for entry in audit:
        kind = ACTION_KIND.get(entry["action"])
        if kind is not None and entry["at"] >= began:
            found.append(
                Marker(_event_time(run, entry["at"]), kind, f"{entry['action']}: {entry['reason']}"[:160])
            )
    found += [
        Marker(p.at - run.start, "pause", f"traffic paused {p.wall_s:.0f} s (wall) while retraining")
        for p in run.pauses
    ]
    found += [Marker(n["at"] - run.start, "operator", n["what"]) for n in run.notes]
    found += [Marker(c.at_s, "change", describe(c)) for c in run.scenario.changes if not c.deploy]
    return sorted(found, key=lambda m: m.t_s)


def _rule(marker: Marker) -> str:
    return marker.label.split(" ")[0]


def describe(change: Change) -> str:
    if change.new_items is not None:
        over = f" over {change.over_s / 60:.0f} min" if change.over_s else ""
        return f"change: {change.new_items:.0%} of sessions ask about new places{over}"
    return f"change: {change.device or 0:.0%} of users on a quiet 8 kHz microphone"


def summarize(run: Run, found: Sequence[Window], marks: Sequence[Marker], events: int | None) -> Summary:
    scenario = run.scenario
    shock = scenario.shock_s
    requests = sum(1 for r in run.requests if r.status)
    alarms = [m for m in marks if m.kind == "alarm"]
    expected = [
        m for m in alarms if shock is not None and m.t_s >= shock and _rule(m) in scenario.expect_alarms
    ]
    false = sorted({_rule(m) for m in alarms if shock is None or m.t_s < shock})
    voice = [r for r in run.requests if r.kind in ("voice", "redo") and r.status == 200]
    to_people = [r for r in run.requests if r.kind in ("voice", "redo") and r.status in (200, 202)]
    waits = sorted(run.queue_times)
    before = _mean(
        [bool(r.success) for r in voice if shock is None or (r.at - run.start < shock and not r.new_item)]
    )
    after = [w for w in found if shock is not None and w.t_s >= shock and w.success_new is not None]
    best = max((w.success_new for w in after if w.success_new is not None), default=None)
    recovered = next(
        (
            w
            for w in after
            # Recovery means something only where users succeeded before the change.
            if before is not None
            and before > RECOVERY_MARGIN
            and w.success_new is not None
            and w.success_new >= before - RECOVERY_MARGIN
        ),
        None,
    )
    deploy = next((c for c in scenario.changes if c.deploy), None)
    since = deploy.at_s if deploy is not None else shock
    sessions: dict[str, list[Request]] = {}
    for r in voice:
        if since is not None and r.at - run.start >= since:
            sessions.setdefault(r.session, []).append(r)
    if deploy is not None:
        affected = _mean([any(r.slot == "challenger" for r in rs) for rs in sessions.values()])
    else:
        affected = _mean([any(not r.success for r in rs) for rs in sessions.values()])
    return Summary(
        requests=requests,
        events=events,
        shock_s=shock,
        time_to_detect_s=expected[0].t_s - shock if expected and shock is not None else None,
        detected_by=_rule(expected[0]) if expected else None,
        false_alarms=false,
        success_before=before,
        success_new_best=best,
        time_to_recover_s=recovered.t_s - shock if recovered and shock is not None else None,
        users_affected=affected,
        retrains=sum(1 for m in marks if m.label.startswith("retrain_started")),
        rollbacks=sum(1 for m in marks if m.kind == "rollback"),
        promotions=sum(1 for m in marks if m.kind == "promote"),
        paused_wall_s=round(sum(p.wall_s for p in run.pauses), 1),
        share_to_people=_mean([r.to_people for r in to_people]),
        reviewed=len(waits),
        queue_time_p50_s=float(np.percentile(waits, 50)) if waits else None,
        queue_time_p95_s=float(np.percentile(waits, 95)) if waits else None,
    )


COLORS = {
    "change": "#ef6c00",
    "alarm": "#c62828",
    "resolved": "#ef9a9a",
    "retrain": "#6a1b9a",
    "rollout": "#2e7d32",
    "rollback": "#000000",
    "promote": "#1565c0",
    "pause": "#9e9e9e",
    "operator": "#ef6c00",
}


def plot_png(run: Run, found: Sequence[Window], marks: Sequence[Marker], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SERIES), 1, figsize=(11, 2.0 * len(SERIES)), sharex=True)
    x = [w.t_s / 60 for w in found]
    for ax, name in zip(axes, SERIES, strict=True):
        values = [getattr(w, name) for w in found]
        ax.plot(x, [np.nan if v is None else v for v in values], marker=".", color="#333")
        if name == "search_success":
            for key, color in (("success_new", "#ef6c00"), ("success_old", "#1565c0")):
                ax.plot(
                    x,
                    [np.nan if getattr(w, key) is None else getattr(w, key) for w in found],
                    color=color,
                    linewidth=1,
                    label="new places" if key == "success_new" else "catalog places",
                )
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel(name.replace("_", " "), fontsize=8)
        for m in marks:
            ax.axvline(m.t_s / 60, color=COLORS[m.kind], linewidth=0.8, alpha=0.7)
    for m in marks:
        if m.kind in ("alarm", "retrain", "rollback", "promote", "operator", "pause", "change"):
            axes[0].annotate(
                m.label[:38],
                (m.t_s / 60, 0.98),  # inside the top axes: a label at 1.0 ran into the title
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=6,
                va="top",
                color=COLORS[m.kind],
                annotation_clip=False,
            )
    axes[-1].set_xlabel("traffic time (minutes)")
    minutes = run.scenario.duration_s / 60
    fig.suptitle(
        f"scenario {run.scenario.name}, {minutes:g} min of traffic: {run.scenario.description}"[:130],
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _svg(name: str, found: Sequence[Window], marks: Sequence[Marker], span_s: float) -> str:
    width, height, pad = 900, 140, 30
    values = [getattr(w, name) for w in found]
    top = max([v for v in values if v is not None] + [1e-9])
    top = 1.0 if name != "latency_p95_s" else top * 1.1

    def px(t: float) -> float:
        return pad + (width - 2 * pad) * t / max(span_s, 1.0)

    def py(v: float) -> float:
        return height - pad + (2 * pad - height) * v / top

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{name}">']
    for m in marks:
        parts.append(
            f'<line x1="{px(m.t_s):.1f}" x2="{px(m.t_s):.1f}" y1="{pad / 2}" y2="{height - pad}" '
            f'stroke="{COLORS[m.kind]}" stroke-width="1.5"><title>{html.escape(m.label)} '
            f"(t={m.t_s / 60:.1f} min)</title></line>"
        )
    points = [(px(w.t_s), py(v), w, v) for w, v in zip(found, values, strict=True) if v is not None]
    parts.append(
        '<polyline fill="none" stroke="#333" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        + '"/>'
    )
    for x, y, w, v in points:
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#333"><title>{w.t_s / 60:.1f} min: '
            f"{v:.3f} ({w.voice_searches} voice searches)</title></circle>"
        )
    parts.append(
        f'<text x="{pad}" y="12" font-size="11">{html.escape(TITLES[name])} (max {top:.2f})</text></svg>'
    )
    return "".join(parts)


def render_html(run: Run, found: Sequence[Window], marks: Sequence[Marker], summary: Summary) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in asdict(summary).items()
    )
    events = "".join(
        f'<tr><td>{m.t_s / 60:.1f}</td><td style="color:{COLORS[m.kind]}">{m.kind}</td>'
        f"<td>{html.escape(m.label)}</td></tr>"
        for m in marks
    )
    charts = "".join(
        f"<figure>{_svg(name, found, marks, run.scenario.duration_s)}</figure>" for name in SERIES
    )
    return (
        "<!doctype html><html lang=en><meta charset=utf-8><title>simulation: "
        f"{html.escape(run.scenario.name)}</title><style>body{{font-family:system-ui,sans-serif;max-width:960px;"
        "margin:1rem auto}}figure{{margin:.5rem 0}}table{{border-collapse:collapse;font-size:.85rem}}"
        "td,th{{border:1px solid #ccd;padding:.2rem .4rem;text-align:left}}</style>"
        f"<h1>scenario {html.escape(run.scenario.name)}</h1><p>{html.escape(run.scenario.description)}</p>"
        f"<p>Hover a point or a line for its value.</p>{charts}<h2>Summary</h2><table>{rows}</table>"
        f"<h2>Timeline</h2><table><tr><th>minute</th><th>kind</th><th>what</th></tr>{events}</table></html>"
    )


def write_outputs(
    run: Run,
    out_dir: Path,
    transitions: Sequence[dict[str, Any]],
    audit: Sequence[dict[str, Any]],
    events: int | None,
    notes: Sequence[str] = (),
) -> Summary:
    from serving.simulation.runner import run_to_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    found = windows(run)
    marks = markers(run, transitions, audit)
    summary = summarize(run, found, marks, events)
    summary.notes += list(notes)
    name = run.scenario.name
    plot_png(run, found, marks, out_dir / f"{name}.png")
    (out_dir / f"{name}.html").write_text(render_html(run, found, marks, summary), encoding="utf-8")
    record = {
        "summary": asdict(summary),
        "windows": [asdict(w) for w in found],
        "markers": [asdict(m) for m in marks],
        "run": run_to_dict(run),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    return summary
