"""Degrees of automation and the human review queue.

The case study's degrees, per deployment (`VOICE_SEARCH_AUTOMATION`):
- `human_only`: every voice search goes to a person; the model is not shown;
- `shadow`: the same, and the model's transcript is recorded beside the person's answer;
- `assist`: the model answers, and its transcript is a suggestion to confirm or edit;
- `partial`: the model answers when its confidence is at least the threshold, a person otherwise;
- `full`: the model answers.
A request routed to people is queued with its audio (kept under the audio retention settings) and
answered 202 "sent for review". A reviewer listens, corrects the transcript or picks the item, and
accepts: the review becomes a strong label (its audio moves from the retention area to the labels
folder, `labels/reviews.jsonl`), and the queued audio is deleted. Items whose audio has expired
are closed as expired.
"""

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.text import normalize_text
from monitoring.events import connect_wal

REVIEW_LABELS = "reviews.jsonl"

SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    session_id TEXT,
    created_at REAL NOT NULL,
    audio_path TEXT NOT NULL,
    model_transcript TEXT,
    confidence REAL,
    hits TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    reviewer TEXT,
    reviewed_text TEXT,
    reviewed_item TEXT,
    reviewed_at REAL,
    model_version TEXT
);
"""
MODEL_VERSION_COLUMN = "ALTER TABLE reviews ADD COLUMN model_version TEXT"
"""Queues made before reviews recorded which model tried first gain the column (null for old rows)."""


def routes_to_people(level: str, confidence: float, no_speech: bool, threshold: float) -> bool:
    if level in ("human_only", "shadow"):
        return True
    if level == "partial":
        return no_speech or confidence < threshold
    return False


@dataclass(frozen=True)
class ReviewItem:
    id: int
    request_id: str
    session_id: str | None
    created_at: float
    audio_path: str
    model_transcript: str | None
    confidence: float | None
    hits: list[dict[str, Any]]
    status: str
    reviewer: str | None = None
    reviewed_text: str | None = None
    reviewed_item: str | None = None
    reviewed_at: float | None = None
    model_version: str | None = None
    """The model whose attempt the reviewer saw (its label is about that model's audio)."""


class ReviewError(Exception):
    """No such review item, or it is no longer pending."""


class ReviewQueue:
    def __init__(self, path: Path, labels_dir: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.labels_dir = labels_dir
        self._db = connect_wal(path)
        self._db.executescript(SCHEMA)
        if "model_version" not in {row[1] for row in self._db.execute("PRAGMA table_info(reviews)")}:
            self._db.execute(MODEL_VERSION_COLUMN)
        self._lock = threading.Lock()

    def add(
        self,
        request_id: str,
        session_id: str | None,
        audio_path: str,
        model_transcript: str | None,
        confidence: float | None,
        hits: list[dict[str, Any]],
        created_at: float,
        model_version: str | None = None,
    ) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO reviews (request_id, session_id, created_at, audio_path, model_transcript,"
                " confidence, hits, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    session_id,
                    created_at,
                    audio_path,
                    model_transcript,
                    confidence,
                    json.dumps(hits),
                    model_version,
                ),
            )
        return int(cursor.lastrowid or 0)

    def items(self, status: str = "pending", limit: int = 100) -> list[ReviewItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM reviews WHERE status = ? ORDER BY created_at LIMIT ?", (status, limit)
            ).fetchall()
        return [_item(row) for row in rows]

    def get(self, item_id: int) -> ReviewItem:
        with self._lock:
            row = self._db.execute("SELECT * FROM reviews WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise ReviewError(f"no review item {item_id}")
        return _item(row)

    def resolve(
        self, item_id: int, reviewer: str, text: str, item: str | None, now: float | None = None
    ) -> ReviewItem:
        """Accept a review: it becomes a strong label, and the queued audio is deleted. `now`: the
        event time of the review (the request's, in a replay), else the wall clock."""
        current = self.get(item_id)
        if current.status != "pending":
            raise ReviewError(f"review item {item_id} is {current.status}, not pending")
        audio = Path(current.audio_path)
        if not audio.is_file():
            self._set_status(item_id, "expired")
            raise ReviewError(f"the audio of review item {item_id} has expired")
        now = time.time() if now is None else now
        if normalize_text(text):
            self._keep_label(current, audio, text, reviewer, now)
        audio.unlink(missing_ok=True)
        with self._lock:
            self._db.execute(
                "UPDATE reviews SET status='done', reviewer=?, reviewed_text=?, reviewed_item=?,"
                " reviewed_at=? WHERE id=?",
                (reviewer, text, item, now, item_id),
            )
        return self.get(item_id)

    def workload(self, since: float, now: float) -> dict[str, Any]:
        """The people's side of automation since `since`: items queued and reviewed, the queue now,
        and how long reviewed items waited (from the request to the accepted review)."""
        with self._lock:
            queued = self._db.execute(
                "SELECT COUNT(*) FROM reviews WHERE created_at >= ?", (since,)
            ).fetchone()[0]
            pending = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM reviews WHERE status = 'pending'"
            ).fetchone()
            waits = [
                r[0]
                for r in self._db.execute(
                    "SELECT reviewed_at - created_at FROM reviews WHERE status = 'done' AND reviewed_at >= ?",
                    (since,),
                )
            ]
        waits.sort()
        return {
            "queued": queued,
            "reviewed": len(waits),
            "pending": pending[0],
            "oldest_pending_age_s": now - pending[1] if pending[1] is not None else None,
            "queue_time_p50_s": waits[len(waits) // 2] if waits else None,
            "queue_time_p95_s": waits[min(len(waits) - 1, int(0.95 * len(waits)))] if waits else None,
        }

    def expire_missing_audio(self) -> int:
        """Close pending items whose audio the retention purge has deleted."""
        expired = [i.id for i in self.items(limit=100_000) if not Path(i.audio_path).is_file()]
        for item_id in expired:
            self._set_status(item_id, "expired")
        return len(expired)

    def _keep_label(self, item: ReviewItem, audio: Path, text: str, reviewer: str, at: float) -> None:
        (self.labels_dir / "audio").mkdir(parents=True, exist_ok=True)
        kept = self.labels_dir / "audio" / f"{item.request_id}.audio"
        shutil.copy(audio, kept)
        row = {
            "audio": str(kept), "text": text, "strength": "strong", "label_source": "review",
            "request_id": item.request_id, "session_id": item.session_id, "reviewer": reviewer,
            "labelled_at": at, "model_version": item.model_version,
        }  # fmt: skip
        with self._lock, (self.labels_dir / REVIEW_LABELS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _set_status(self, item_id: int, status: str) -> None:
        with self._lock:
            self._db.execute("UPDATE reviews SET status=? WHERE id=?", (status, item_id))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _item(row: tuple[Any, ...]) -> ReviewItem:
    return ReviewItem(
        id=row[0], request_id=row[1], session_id=row[2], created_at=row[3], audio_path=row[4],
        model_transcript=row[5], confidence=row[6], hits=json.loads(row[7]), status=row[8],
        reviewer=row[9], reviewed_text=row[10], reviewed_item=row[11], reviewed_at=row[12],
        model_version=row[13],
    )  # fmt: skip
