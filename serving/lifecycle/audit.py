"""The audit log of deployment decisions: who, when, what, why, and the numbers at that moment.

A SQLite file of its own beside the event store (`audit.sqlite3`): events are the users'
traffic, this is the operators' (and the automation's) actions. Rows are only ever added.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.events import connect_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    """Who: the operator's name as given, or `automation` for the controller."""
    action: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    """Before and after, and the gate values at that moment."""
    at: float = field(default_factory=time.time)
    id: int | None = None


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect_wal(path)
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def record(self, entry: AuditEntry) -> AuditEntry:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO audit (at, actor, action, reason, details) VALUES (?, ?, ?, ?, ?)",
                (entry.at, entry.actor, entry.action, entry.reason, json.dumps(entry.details, default=str)),
            )
        return AuditEntry(entry.actor, entry.action, entry.reason, entry.details, entry.at, cursor.lastrowid)

    def entries(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, actor, action, reason, details FROM audit ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [AuditEntry(r[2], r[3], r[4], json.loads(r[5]), r[1], r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
