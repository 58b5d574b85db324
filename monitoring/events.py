"""The event store: one row per API request, good or bad, for monitoring and retraining.

Every request the service answers becomes an `Event` (ids, session, time, model version and slot,
input statistics, transcript, hits, per-stage latency, outcome). What users did next (redo,
switch to typing, clicks) is read from these events by `monitoring.sessions`.

SQLite is the default backend (WAL, so readers never block the writer; the schema is versioned and
upgraded by numbered migrations). PostgreSQL (`monitoring.postgres`) is the shared store of
several replicas, with the same queries and migrations; callers depend on the `EventStore`
protocol, and the settings (`Settings.open_event_store`) pick the backend from a URL, so this
module never imports PostgreSQL's. Event times are the request's own
timestamps (seconds since the epoch), never the reader's clock, so a replay can run faster than
real time.
"""

import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

Kind = Literal[
    "voice_search", "text_search", "transcribe", "feedback", "openai_transcription", "shadow", "other"
]
"""`shadow`: a challenger's transcript of a voice search's audio, off the critical path (its
`target_request_id` is the search the champion answered)."""
Outcome = Literal["ok", "null_transcript", "no_result", "client_error", "server_error"]


class EventStoreError(Exception):
    """The store could not record or read events (disk full, file locked or corrupt)."""


@dataclass(frozen=True)
class Hit:
    """One search result as recorded: catalog id, title and score in [0, 1]."""

    id: str
    title: str
    score: float


@dataclass(frozen=True)
class Event:
    """One request. Audio fields are None for requests without (usable) audio.

    `timings_s` maps pipeline stage (decode, preprocess, vad, asr, decoding, search) to seconds;
    `latency_s` is the whole request as the server saw it.
    """

    request_id: str
    created_at: float
    kind: Kind
    route: str
    status_code: int
    outcome: Outcome
    session_id: str | None = None
    user_id: str | None = None
    model_version: str | None = None
    slot: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    transcript: str | None = None
    confidence: float | None = None
    query_text: str | None = None
    hits: tuple[Hit, ...] = ()
    latency_s: float | None = None
    timings_s: Mapping[str, float] = field(default_factory=dict)
    audio_bytes: int | None = None
    content_type: str | None = None
    duration_s: float | None = None
    sample_rate_hz: int | None = None
    rms_dbfs: float | None = None
    peak_dbfs: float | None = None
    clipping_ratio: float | None = None
    leading_silence_ms: float | None = None
    trailing_silence_ms: float | None = None
    speech_ratio: float | None = None
    is_all_zero: bool | None = None
    target_request_id: str | None = None
    """For feedback: the search the user reacted to."""
    clicked_id: str | None = None
    corrected_text: str | None = None
    audio_path: str | None = None
    """Where the request's audio is kept, when retention is on (personal data: see `purge_audio`)."""


class EventStore(Protocol):
    """Where events go. Safe to call from several threads; `record` raises `EventStoreError` when
    the event cannot be written."""

    def record(self, event: Event) -> None: ...

    def get(self, request_id: str) -> Event | None: ...

    def events(
        self, since: float | None = None, until: float | None = None, session_id: str | None = None
    ) -> list[Event]: ...

    def count(self) -> int: ...

    def latest_at(self) -> float | None: ...

    def with_audio_before(self, cutoff: float) -> list[tuple[str, str]]: ...

    def forget_audio(self, request_ids: Sequence[str]) -> None: ...

    def shared_state(self, key: str) -> dict[str, Any] | None: ...

    def put_shared_state(self, key: str, value: Mapping[str, Any], at: float) -> None: ...

    def close(self) -> None: ...


_COLUMNS = tuple(f.name for f in fields(Event))
_JSON_COLUMNS = {"hits", "timings_s"}

MIGRATIONS: tuple[str, ...] = (
    # 1: the events table, indexed for time windows and session sequences.
    """
    CREATE TABLE events (
        request_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        route TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        session_id TEXT,
        user_id TEXT,
        model_version TEXT,
        slot TEXT,
        error_type TEXT,
        error_message TEXT,
        transcript TEXT,
        confidence REAL,
        query_text TEXT,
        hits TEXT NOT NULL DEFAULT '[]',
        latency_s REAL,
        timings_s TEXT NOT NULL DEFAULT '{}',
        audio_bytes INTEGER,
        content_type TEXT,
        duration_s REAL,
        sample_rate_hz INTEGER,
        rms_dbfs REAL,
        peak_dbfs REAL,
        clipping_ratio REAL,
        leading_silence_ms REAL,
        trailing_silence_ms REAL,
        speech_ratio REAL,
        is_all_zero INTEGER,
        target_request_id TEXT,
        clicked_id TEXT,
        corrected_text TEXT
    );
    CREATE INDEX events_created_at ON events (created_at);
    CREATE INDEX events_session ON events (session_id, created_at);
    """,
    # 2: retained audio (off by default; recordings are personal data).
    "ALTER TABLE events ADD COLUMN audio_path TEXT;",
    # 3: documents every replica shares (the rollout's desired state).
    """
    CREATE TABLE shared_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)
"""Schema migrations, applied in order, in the SQL both backends speak (PostgreSQL reads REAL as
double precision: see `monitoring.postgres`). SQLite's `PRAGMA user_version` records how many
have run; PostgreSQL's `schema_version` table does."""


class SQLEventStore(ABC):
    """The queries every SQL backend shares, written once (with `?` placeholders); a backend
    supplies how to run them, how to migrate, and which of its errors mean the store failed."""

    @property
    @abstractmethod
    def schema_version(self) -> int:
        """How many of `MIGRATIONS` this store has run."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _rows(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; its rows. Raises `EventStoreError`."""

    @abstractmethod
    def _write_many(self, action: str, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row, all in one transaction. Raises `EventStoreError`."""

    def record(self, event: Event) -> None:
        row = _to_row(event)
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self._write_many(
            f"record event {event.request_id}",
            f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({placeholders})",
            [[row[c] for c in _COLUMNS]],
        )

    def get(self, request_id: str) -> Event | None:
        found = self._rows(
            f"read event {request_id}",
            f"SELECT {', '.join(_COLUMNS)} FROM events WHERE request_id = ?",
            (request_id,),
        )
        return _from_row(found[0]) if found else None

    def events(
        self, since: float | None = None, until: float | None = None, session_id: str | None = None
    ) -> list[Event]:
        """Events in time order, optionally within [since, until) and one session."""
        where: list[str] = ["1=1"]
        params: list[float | str] = []
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if until is not None:
            where.append("created_at < ?")
            params.append(until)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        query = f"SELECT {', '.join(_COLUMNS)} FROM events WHERE {' AND '.join(where)} ORDER BY created_at"
        return [_from_row(r) for r in self._rows("read events", query, params)]

    def latest_at(self) -> float | None:
        """The newest event's time (None for an empty store): where reports end, without reading rows."""
        found = self._rows("find the newest event", "SELECT MAX(created_at) FROM events")[0][0]
        return None if found is None else float(found)

    def count(self) -> int:
        return int(self._rows("count events", "SELECT COUNT(*) FROM events")[0][0])

    def forget_audio(self, request_ids: Sequence[str]) -> None:
        """Clear the audio path of these events (their files are gone)."""
        self._write_many(
            "forget retained audio",
            "UPDATE events SET audio_path = NULL WHERE request_id = ?",
            [(r,) for r in request_ids],
        )

    def with_audio_before(self, cutoff: float) -> list[tuple[str, str]]:
        """(request_id, audio_path) of events older than `cutoff` that still hold audio."""
        rows = self._rows(
            "find retained audio",
            "SELECT request_id, audio_path FROM events WHERE audio_path IS NOT NULL AND created_at < ?",
            (cutoff,),
        )
        return [(str(a), str(b)) for a, b in rows]

    def shared_state(self, key: str) -> dict[str, Any] | None:
        """A small JSON document every replica reads (the rollout's desired state), or None."""
        found = self._rows(
            f"read the shared state {key!r}", "SELECT value FROM shared_state WHERE key = ?", (key,)
        )
        return None if not found else dict(json.loads(found[0][0]))

    def put_shared_state(self, key: str, value: Mapping[str, Any], at: float) -> None:
        """Replace the document `key` (the last writer wins)."""
        self._write_many(
            f"write the shared state {key!r}",
            "INSERT INTO shared_state (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [(key, json.dumps(dict(value), sort_keys=True), at)],
        )


WAL_SWITCH_TIMEOUT_S = 10.0


def connect_wal(path: Path, busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    """A connection to the SQLite file `path` in WAL mode, in autocommit (explicit transactions),
    usable from any thread (the caller serializes with its own lock).

    Processes that open a new file at the same moment (replicas starting together, a retrain
    beside the server) all ask to switch it to WAL. The switch needs the exclusive lock, and a
    connection that already reads the file and wants that lock gets SQLITE_BUSY at once instead of
    waiting in the busy handler (SQLite's deadlock avoidance), so the switch is retried here."""
    db = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.02)
        else:
            return db


class SQLiteEventStore(SQLEventStore):
    """An `EventStore` in one SQLite file (WAL). One connection, serialized by a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with _store_errors(f"open the event store {self.path}"):
            self._db = connect_wal(self.path)
            # NORMAL is durable against application crashes in WAL mode; only an OS crash can lose
            # the last transactions, and it costs far less per request than FULL.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self.migrate()

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> None:
        """Apply the migrations this file has not seen yet, each in one transaction."""
        with self._lock:
            while self.schema_version < len(MIGRATIONS):
                with self._transaction():
                    # Read again under the write lock: another process may have just migrated.
                    number = self.schema_version
                    if number >= len(MIGRATIONS):
                        break
                    for statement in sql_statements(MIGRATIONS[number]):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number + 1}")
                logger.info("event store %s migrated to schema %d", self.path, number + 1)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _rows(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, _store_errors(action):
            return list(self._db.execute(sql, params).fetchall())

    def _write_many(self, action: str, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock, _store_errors(action):
            if len(rows) == 1:
                self._db.execute(sql, rows[0])
                return
            with self._transaction():
                self._db.executemany(sql, rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextmanager
def _store_errors(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise EventStoreError(f"could not {action}: {e}") from e


def sql_statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _to_row(event: Event) -> dict[str, Any]:
    row = asdict(event)
    row["hits"] = json.dumps([asdict(h) for h in event.hits])
    row["timings_s"] = json.dumps(dict(event.timings_s))
    row["is_all_zero"] = None if event.is_all_zero is None else int(event.is_all_zero)
    return row


def _from_row(values: Sequence[Any]) -> Event:
    row = dict(zip(_COLUMNS, values, strict=True))
    row["hits"] = tuple(Hit(**h) for h in json.loads(row["hits"]))
    row["timings_s"] = json.loads(row["timings_s"])
    row["is_all_zero"] = None if row["is_all_zero"] is None else bool(row["is_all_zero"])
    return Event(**row)


def purge_audio(store: EventStore, retention_s: float, now: float | None = None) -> int:
    """Delete retained recordings older than `retention_s`; returns how many were removed."""
    cutoff = (time.time() if now is None else now) - retention_s
    expired = store.with_audio_before(cutoff)
    for _, path in expired:
        Path(path).unlink(missing_ok=True)
    store.forget_audio([request_id for request_id, _ in expired])
    return len(expired)
