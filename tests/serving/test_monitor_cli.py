"""`voice-search monitor report` and `baseline` from the command line, on a real SQLite event store."""

import re
from pathlib import Path

import pytest

from monitoring.events import Event, SQLiteEventStore
from monitoring.postgres import PostgresEventStore
from serving.cli import main

T0 = 1_800_000_000.0


def _voice(n: int, at: float, rms: float, outcome: str = "ok") -> Event:
    return Event(
        request_id=f"r{n}",
        created_at=at,
        kind="voice_search",
        route="/v1/search",
        status_code=200,
        outcome=outcome,  # type: ignore[arg-type]
        session_id=f"s{n}",
        transcript="weather in paris",
        confidence=0.8,
        latency_s=0.08,
        timings_s={"asr": 0.03},
        duration_s=2.0,
        sample_rate_hz=16000,
        rms_dbfs=rms,
        peak_dbfs=rms + 12,
        clipping_ratio=0.0,
        leading_silence_ms=200.0,
        trailing_silence_ms=200.0,
        speech_ratio=0.7,
        is_all_zero=False,
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path)
    for n in range(200):
        store.record(_voice(n, T0 + n, rms=-25.0 if n < 100 else -45.0))
    store.record(
        Event(
            "bad",
            T0 + 50.5,
            "voice_search",
            "/v1/search",
            415,
            "client_error",
            error_type="undecodable_audio",
        )
    )
    store.close()
    return path


def test_report_as_text_and_html(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "report", "--since", "1h", "--db", str(store_path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^events +201$", text, re.M)
    assert re.search(r"^outcome=client_error +1$", text, re.M)
    assert "## Alarms at the end" in text and "volume_drift" in text
    assert "## Drift against the reference" in text and "rms_dbfs" in text

    html_path = tmp_path / "report.html"
    assert (
        main(
            [
                "monitor",
                "report",
                "--since",
                "1d",
                "--db",
                str(store_path),
                "--format",
                "html",
                "--output",
                str(html_path),
            ]
        )
        == 0
    )
    page = html_path.read_text()
    assert page.startswith("<!doctype html>") and "<table>" in page and "rms_dbfs" in page


def test_report_refuses_bad_input_without_touching_the_file(
    tmp_path: Path, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["monitor", "report", "--since", "soon", "--db", str(store_path)]) == 2
    assert "not a duration" in capsys.readouterr().err
    assert main(["monitor", "report", "--db", str(tmp_path / "missing.sqlite3")]) == 2
    assert "no event store" in capsys.readouterr().err
    garbage = tmp_path / "not-a-db.sqlite3"
    garbage.write_bytes(b"this is not sqlite" * 100)
    assert main(["monitor", "report", "--db", str(garbage)]) == 2
    assert "could not open the event store" in capsys.readouterr().err
    assert garbage.read_bytes() == b"this is not sqlite" * 100


def test_baseline_refuses_a_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["monitor", "baseline", "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "p.json")]
    )
    assert code == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_report_reads_the_shared_postgres_store_named_by_the_setting(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PostgresEventStore(postgres_url)
    for n in range(30):
        store.record(_voice(n, T0 + n, rms=-25.0))
    store.close()
    monkeypatch.setenv("VOICE_SEARCH_EVENT_STORE_URL", postgres_url)
    assert main(["monitor", "report", "--since", "1h"]) == 0
    assert re.search(r"^events +30$", capsys.readouterr().out, re.M)
    # A server that is not there: a one-line error and a usage exit, not a traceback.
    monkeypatch.setenv("VOICE_SEARCH_EVENT_STORE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["monitor", "report", "--since", "1h"]) == 2
    assert "could not open the event store" in capsys.readouterr().err
