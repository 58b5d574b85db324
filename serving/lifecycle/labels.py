"""Labels from production: what users told us about the audio they sent, with its strength.

A voice search whose audio was kept (`VOICE_SEARCH_RETAIN_AUDIO=true`) can earn a label:
- **strong**: a correction of its transcript (`POST /v1/feedback` kind `correction`), or a review;
- **weak**: a click on one of its hits (the clicked item's title), or a typed query that followed
  it in the same session within the redo window (the user gave up on voice and typed it).
Each clip keeps its strongest label (the latest among equals); the same audio sent twice is one
clip. `export_labels` writes them as a manifest in the shared format, with the audio copied
beside it, and runs the data check on it.
"""

import hashlib
import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asr.corpus.check import CheckReport, check_labels
from asr.text import normalize_text
from monitoring.events import Event, EventStore
from monitoring.sessions import session_signals

Strength = Literal["weak", "strong"]
STRENGTHS: tuple[Strength, ...] = ("weak", "strong")
SUFFIXES = {"audio/flac": ".flac", "audio/x-flac": ".flac", "audio/wav": ".wav", "audio/x-wav": ".wav",
            "audio/ogg": ".ogg", "audio/opus": ".opus", "audio/mpeg": ".mp3"}  # fmt: skip


@dataclass(frozen=True)
class Label:
    request_id: str
    """The voice search whose audio this labels."""
    audio_path: Path
    text: str
    strength: Strength
    source: "Source"
    created_at: float
    session_id: str | None = None
    model_version: str | None = None
    content_type: str | None = None


def production_labels(events: Sequence[Event], redo_window_s: float) -> list[Label]:
    """Every label the events give to voice searches whose audio is still kept."""
    searches = {
        e.request_id: e
        for e in events
        if e.kind == "voice_search" and e.audio_path and e.status_code < 400 and Path(e.audio_path).is_file()
    }
    labels: list[Label] = []
    for event in events:
        target = searches.get(event.target_request_id or "")
        if event.kind != "feedback" or event.status_code >= 400 or target is None:
            continue
        if event.corrected_text:
            labels.append(_label(target, event.corrected_text, "strong", "correction", event.created_at))
        elif event.clicked_id:
            title = next((h.title for h in target.hits if h.id == event.clicked_id), None)
            if title:
                labels.append(_label(target, title, "weak", "click", event.created_at))
    by_id = {e.request_id: e for e in events}
    for voice_id, typed_id in session_signals(events, redo_window_s).typed_after:
        if voice_id in searches:
            typed = by_id[typed_id]
            labels.append(
                _label(searches[voice_id], typed.query_text or "", "weak", "typed", typed.created_at)
            )
    return [label for label in labels if normalize_text(label.text)]


Source = Literal["correction", "review", "click", "typed"]


def _label(search: Event, text: str, strength: Strength, source: Source, at: float) -> Label:
    return Label(
        search.request_id, Path(str(search.audio_path)), text, strength, source, at,
        search.session_id, search.model_version, search.content_type,
    )  # fmt: skip


def strongest_per_clip(labels: Iterable[Label], min_strength: Strength) -> list[Label]:
    """One label per clip (by audio content): the strongest, the latest among equals."""
    floor = STRENGTHS.index(min_strength)
    best: dict[str, Label] = {}
    for label in sorted(labels, key=lambda x: (STRENGTHS.index(x.strength), x.created_at)):
        if STRENGTHS.index(label.strength) >= floor:
            best[_content(label.audio_path)] = label
    return sorted(best.values(), key=lambda x: x.created_at)


def _content(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LabelExport:
    manifest: Path
    labels: int
    by_source: dict[str, int]
    check: CheckReport
    voice_searches: int = 0
    """Voice searches in the window, and how many of them still have their audio: a label needs it."""
    kept_audio: int = 0


def reviewed_labels(reviews: Path, since: float) -> list[Label]:
    """The review queue's accepted reviews (`serving.lifecycle.review`), strong labels."""
    if not reviews.is_file():
        return []
    labels = []
    for line in reviews.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["labelled_at"] >= since and Path(row["audio"]).is_file():
            labels.append(Label(
                row["request_id"], Path(row["audio"]), row["text"], "strong", "review", row["labelled_at"],
                row.get("session_id"), row.get("model_version"),
            ))  # fmt: skip
    return [label for label in labels if normalize_text(label.text)]


def export_labels(
    store: EventStore,
    out_dir: Path,
    since_s: float,
    min_strength: Strength,
    redo_window_s: float,
    reviews: Path | None = None,
) -> LabelExport:
    """Write `out_dir/manifest.jsonl` and `out_dir/audio/` from the last `since_s` of events (and
    of accepted reviews, when `reviews` names their file)."""
    since = time.time() - since_s
    events = store.events(since=since)
    found = production_labels(events, redo_window_s) + (reviewed_labels(reviews, since) if reviews else [])
    chosen = strongest_per_clip(found, min_strength)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for label in chosen:
        name = f"audio/{label.request_id}{SUFFIXES.get(label.content_type or '', '.audio')}"
        shutil.copy(label.audio_path, out_dir / name)
        rows.append({
            "audio": name, "text": normalize_text(label.text), "strength": label.strength,
            "label_source": label.source, "request_id": label.request_id, "session_id": label.session_id,
            "model_version": label.model_version, "labelled_at": label.created_at,
        })  # fmt: skip
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    by_source: dict[str, int] = {}
    for label in chosen:
        by_source[label.source] = by_source.get(label.source, 0) + 1
    check = check_labels(manifest) if rows else CheckReport(rows=0)
    searches = [e for e in events if e.kind == "voice_search"]
    kept = sum(1 for e in searches if e.audio_path and Path(e.audio_path).is_file())
    return LabelExport(manifest, len(rows), by_source, check, len(searches), kept)
