"""PostgreSQL as the event store of several replicas, and the advisory lock that elects one leader.

The queries and migrations are `monitoring.events`'s, run through a psycopg 3 connection pool.
Two dialect differences are bridged here rather than forked: placeholders (`?` becomes `%s`) and
REAL, which PostgreSQL reads as a 4-byte float (too coarse for epoch seconds) and is created here
as double precision. The schema version lives in a one-row `schema_version` table, and replicas
that start together migrate one at a time under a transaction-scoped advisory lock.

Errors map to `EventStoreError`, as SQLite's do: while the database is down or restarting, a
request that cannot be recorded gets a clean 503, and the pool replaces broken connections (each
is checked when taken), so the service recovers by itself once the server is back.
"""

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from monitoring.events import MIGRATIONS, EventStoreError, SQLEventStore, sql_statements

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 7_100_001
"""Advisory lock key held while migrating (any constant unique to this project's database)."""
LEADER_LOCK = 7_100_002
"""Advisory lock key whose holder is the leader: it judges alarms, the canary and retraining."""
POOL_SIZE = 10
"""Connections per replica: the request threads that record and the monitors that read at once."""
WAIT_S = 2.0
"""How long a request waits for a connection before it is answered 503: long enough for a busy
pool, short enough that a client is not left hanging while the database is down."""
CONNECT_TIMEOUT_S = 2


class PostgresEventStore(SQLEventStore):
    """An `EventStore` in a PostgreSQL database, shared by every replica that names its URL."""

    def __init__(self, url: str, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=WAIT_S,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            name="events",
        )
        with _pg_errors(f"open the event store at {redacted(url)}"):
            self._pool.open(wait=True, timeout=10.0)
            self.migrate()

    @property
    def schema_version(self) -> int:
        with _pg_errors("read the schema version"), self._pool.connection() as conn:
            found = conn.execute("SELECT version FROM schema_version").fetchone()
        return 0 if found is None else int(found[0])

    def migrate(self) -> None:
        """Apply the migrations this database has not seen yet, in one transaction."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            found = conn.execute("SELECT version FROM schema_version").fetchone()
            if found is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            current = 0 if found is None else int(found[0])
            for number in range(current, len(MIGRATIONS)):
                for statement in sql_statements(MIGRATIONS[number]):
                    conn.execute(postgres_dialect(statement))
            if current < len(MIGRATIONS):
                conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))
                logger.info("event store migrated from schema %d to %d", current, len(MIGRATIONS))

    def _rows(self, action: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with _pg_errors(action), self._pool.connection() as conn:
            return conn.execute(postgres_dialect(sql), params).fetchall()

    def _write_many(self, action: str, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with _pg_errors(action), self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(postgres_dialect(sql), rows)

    def close(self) -> None:
        self._pool.close()


class AdvisoryLeader:
    """Leader election through a session-level advisory lock on a connection of its own.

    The lock is held as long as that connection lives: when the leader's process dies (even by
    kill -9) its socket closes, PostgreSQL releases the lock, and the next replica to ask takes
    it. A database restart drops it too; every replica then asks again.
    """

    def __init__(self, url: str, key: int = LEADER_LOCK) -> None:
        self.url, self.key = url, key
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    def is_leader(self) -> bool:
        """Whether this process leads now (blocking: call it off the event loop)."""
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            if self._held:
                self._conn.execute("SELECT 1")  # still connected, so still holding the lock
            else:
                found = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                self._held = bool(found and found[0])
                if self._held:
                    logger.info("this replica now leads (advisory lock %d)", self.key)
        except psycopg.Error as e:
            if self._held:
                logger.warning("leadership lost: %s", e)
            self.close()
        return self._held

    def close(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def postgres_dialect(sql: str) -> str:
    """The shared SQL as PostgreSQL reads it: `%s` placeholders, and double precision for REAL."""
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql).replace("?", "%s")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@contextmanager
def _pg_errors(action: str) -> Iterator[None]:
    try:
        yield
    except PoolTimeout as e:
        raise EventStoreError(f"could not {action}: no database connection within {WAIT_S:g} s ({e})") from e
    except psycopg.Error as e:
        raise EventStoreError(f"could not {action}: {e}") from e
