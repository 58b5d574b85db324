"""The SQLite event store: schema migrations, round trips, session signals and audio retention."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from monitoring.events import (
    MIGRATIONS,
    Event,
    EventStoreError,
    Hit,
    SQLiteEventStore,
    purge_audio,
    session_signals,
)


def make(
    request_id: str, at: float, kind: str = "voice_search", session: str = "s", **fields: object
) -> Event:
    return Event(
        request_id=request_id,
        created_at=at,
        kind=kind,  # type: ignore[arg-type]
        route="/v1/x",
        status_code=200,
        outcome="ok",
        session_id=session,
        **fields,  # type: ignore[arg-type]
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    event = make(
        "r1",
        100.0,
        hits=(Hit("city:1", "Paris", 0.93),),
        timings_s={"asr": 0.02, "search": 0.001},
        transcript="weather in paris",
        confidence=0.8,
        is_all_zero=False,
        duration_s=2.5,
        sample_rate_hz=8000,
    )
    store.record(event)
    assert store.get("r1") == event
    assert store.get("missing") is None
    assert store.count() == 1
    store.close()


def test_a_new_file_is_migrated_to_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    with sqlite3.connect(tmp_path / "events.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_old_file_is_upgraded_without_losing_rows(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with sqlite3.connect(path) as db:  # a file written by schema version 1
        db.executescript(MIGRATIONS[0])
        db.execute(
            "INSERT INTO events (request_id, created_at, kind, route, status_code, outcome) "
            "VALUES ('old', 1.0, 'voice_search', '/v1/search', 200, 'ok')"
        )
        db.execute("PRAGMA user_version = 1")
    store = SQLiteEventStore(path)
    assert store.schema_version == len(MIGRATIONS)
    old = store.get("old")
    assert old is not None and old.audio_path is None and old.hits == ()
    store.close()


def test_events_filter_by_time_window_and_session(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "e.sqlite3")
    for i, session in enumerate(["a", "b", "a", "b"]):
        store.record(make(f"r{i}", 10.0 * i, session=session))
    assert [e.request_id for e in store.events(since=10, until=30)] == ["r1", "r2"]
    assert [e.request_id for e in store.events(session_id="a")] == ["r0", "r2"]
    store.close()


def test_a_duplicate_request_id_is_refused_not_overwritten(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "e.sqlite3")
    store.record(make("r", 1.0, transcript="first"))
    with pytest.raises(EventStoreError, match="UNIQUE"):
        store.record(make("r", 2.0, transcript="second"))
    assert store.get("r").transcript == "first"  # type: ignore[union-attr]
    store.close()


def test_redo_needs_a_second_voice_search_within_the_window_and_no_click() -> None:
    events = [
        make("v1", 0.0),
        make("v2", 10.0),  # v1 redone
        make("v3", 100.0),  # too late to count v2 as redone (window 30 s)
        make("c", 101.0, kind="feedback", target_request_id="v3", clicked_id="city:1"),
        make("v4", 105.0),  # v3 was clicked first: not a redo
        make("other", 106.0, session="elsewhere"),  # another session never counts
    ]
    signals = session_signals(events, redo_window_s=30)
    assert signals.redo == ("v1",)
    assert signals.clicked == ("v3",)
    assert signals.voice_searches == 5
    assert signals.redo_ratio == pytest.approx(1 / 5)


def test_a_typed_search_after_a_voice_search_is_a_switch_to_typing() -> None:
    events = [
        make("v1", 0.0),
        make("t1", 5.0, kind="text_search"),
        make("v2", 50.0),
        make("t2", 200.0, kind="text_search"),
    ]
    signals = session_signals(events, redo_window_s=30)
    assert signals.switch_to_typing == ("v1",)
    assert signals.redo == ()
    assert signals.switch_to_typing_ratio == pytest.approx(0.5)


def test_client_errors_are_not_searches_for_the_signals() -> None:
    failed = Event("bad", 1.0, "voice_search", "/v1/search", 415, "client_error", session_id="s")
    signals = session_signals([make("v1", 0.0), failed], redo_window_s=30)
    assert signals.redo == () and signals.voice_searches == 1


def test_purge_deletes_recordings_past_retention_and_keeps_the_events(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "e.sqlite3")
    old, new = tmp_path / "old.audio", tmp_path / "new.audio"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    store.record(make("old", 1_000.0, audio_path=str(old)))
    store.record(make("new", 9_000.0, audio_path=str(new)))
    assert purge_audio(store, retention_s=5_000, now=10_000.0) == 1
    assert not old.exists() and new.exists()
    assert store.get("old").audio_path is None  # type: ignore[union-attr]
    assert store.get("new").audio_path == str(new)  # type: ignore[union-attr]
    assert store.count() == 2
    store.close()


def test_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: SQLiteEventStore(path), range(4)))
    assert all(s.schema_version == len(MIGRATIONS) for s in stores)
    stores[0].record(make("r", 1.0))
    assert stores[3].get("r") is not None
    for store in stores:
        store.close()
