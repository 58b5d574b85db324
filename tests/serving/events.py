"""Read a running server's event store directly, read-only: what tests assert about recording."""

import sqlite3
from typing import Any

from serving.local_server import Server


def rows(server: Server, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        return db.execute(sql, params).fetchall()


def event(server: Server, request_id: str) -> dict[str, Any]:
    """The event row of one request, as a dict; fails the test when there is none."""
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM events WHERE request_id = ?", (request_id,)).fetchone()
    assert found is not None, f"no event recorded for {request_id}"
    return dict(found)
