"""Labels from production on a real SQLite event store with kept audio: strengths, one label per
clip, the exported manifest (audio copied, data-checked), and the command."""

import json
import shutil
from pathlib import Path

import pytest

from asr.audio import load_audio
from monitoring.events import Event, Hit, SQLiteEventStore
from serving.cli import main
from serving.lifecycle.labels import export_labels, production_labels, strongest_per_clip
from tests.signals import SAMPLES_DIR

NOW = 1_795_000_000.0


def voice(rid: str, session: str, at: float, audio: Path, hits: tuple[Hit, ...] = ()) -> Event:
    return Event(request_id=rid, created_at=at, kind="voice_search", route="/v1/search", status_code=200,
                 outcome="ok", session_id=session, transcript="garbled", hits=hits, audio_path=str(audio),
                 content_type="audio/flac", model_version="m@1")  # fmt: skip


def feedback(rid: str, target: str, at: float, **fields: str) -> Event:
    return Event(request_id=rid, created_at=at, kind="feedback", route="/v1/feedback", status_code=200,
                 outcome="ok", target_request_id=target, **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> SQLiteEventStore:
    kept = tmp_path / "kept"
    kept.mkdir()
    clips: dict[str, Path] = {}
    for name in ("a", "b", "c", "d"):
        source = SAMPLES_DIR / ("arctic_a0031.flac" if name != "d" else "speech_commands_yes_022cd682.flac")
        clips[name] = Path(shutil.copy(source, kept / f"{name}.audio"))
    paris = (Hit("paris", "Paris", 0.9), Hit("london", "London", 0.5))
    typed = Event(
        request_id="t", created_at=NOW + 10, kind="text_search", route="/v1/search/text",
        status_code=200, outcome="ok", session_id="s4", query_text="yes please",
    )  # fmt: skip
    events = [
        voice("a", "s1", NOW, clips["a"]),
        feedback("fa", "a", NOW + 5, corrected_text="Weather in Paris"),  # strong
        voice("b", "s2", NOW, clips["b"], paris),
        feedback("fb", "b", NOW + 3, clicked_id="paris"),  # weak: the title
        voice("c", "s3", NOW, clips["c"]),  # same audio as a and b: one clip
        voice("d", "s4", NOW, clips["d"]),
        typed,  # weak: typed after d
        feedback("bad", "missing", NOW + 1, corrected_text="nothing"),  # unknown target: no label
    ]
    db = SQLiteEventStore(tmp_path / "events.sqlite3")
    for event in events:
        db.record(event)
    return db


def test_labels_and_their_strengths(store: SQLiteEventStore) -> None:
    labels = production_labels(store.events(), redo_window_s=30)
    by_source = {(label.request_id, label.source): (label.text, label.strength) for label in labels}
    assert by_source == {
        ("a", "correction"): ("Weather in Paris", "strong"),
        ("b", "click"): ("Paris", "weak"),
        ("d", "typed"): ("yes please", "weak"),
    }
    weak = strongest_per_clip(labels, "weak")
    assert [(x.request_id, x.source) for x in weak] == [
        ("a", "correction"),
        ("d", "typed"),
    ]  # a and b: one clip
    assert [x.request_id for x in strongest_per_clip(labels, "strong")] == ["a"]


def test_export_writes_a_checked_manifest_with_the_audio(store: SQLiteEventStore, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    report = export_labels(store, out, since_s=10 * 365 * 86_400, min_strength="weak", redo_window_s=30)
    assert report.labels == 2 and report.by_source == {"typed": 1, "correction": 1}
    assert report.check.errors == []
    rows = [json.loads(line) for line in report.manifest.read_text().splitlines()]
    assert {r["text"] for r in rows} == {"weather in paris", "yes please"}  # normalized, as training wants
    for row in rows:
        assert load_audio(out / row["audio"]).duration_s > 0.5
        assert row["strength"] in ("weak", "strong") and row["request_id"]


def test_labels_export_command(
    store: SQLiteEventStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "events.sqlite3"
    code = main(["labels", "export", "--db", str(db), "--out", str(tmp_path / "x"), "--since", "3650d"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["labels"] == 1 and printed["by_source"] == {"correction": 1}  # strong only, by default
    assert main(["labels", "export", "--db", str(db), "--out", str(tmp_path / "y"), "--since", "soon"]) == 2


def test_an_export_reads_only_the_store_it_names(
    store: SQLiteEventStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another deployment's accepted reviews (the default state folder of a used checkout) stay out."""
    elsewhere = tmp_path / "other-deployment"
    (elsewhere / "labels").mkdir(parents=True)
    clip = shutil.copy(SAMPLES_DIR / "fsdd_7_george_0.flac", elsewhere / "seven.flac")
    row = {"request_id": "r1", "audio": str(clip), "text": "seven", "labelled_at": NOW, "session_id": "x"}
    (elsewhere / "labels" / "reviews.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv("VOICE_SEARCH_DB_PATH", str(elsewhere / "events.sqlite3"))
    db = tmp_path / "events.sqlite3"
    assert main(["labels", "export", "--db", str(db), "--out", str(tmp_path / "x"), "--since", "3650d"]) == 0
    assert json.loads(capsys.readouterr().out)["by_source"] == {"correction": 1}  # no "review"
    # Its own reviews, beside the store it names, do count.
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "reviews.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["labels", "export", "--db", str(db), "--out", str(tmp_path / "y"), "--since", "3650d"]) == 0
    assert json.loads(capsys.readouterr().out)["by_source"] == {"correction": 1, "review": 1}


def test_an_export_without_kept_audio_says_why_it_is_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = SQLiteEventStore(tmp_path / "events.sqlite3")
    unkept = Event(request_id="a", created_at=NOW, kind="voice_search", route="/v1/search", status_code=200,
                   outcome="ok", session_id="s1", transcript="garbled")  # fmt: skip
    db.record(unkept)
    db.record(feedback("fa", "a", NOW + 5, corrected_text="Weather in Paris"))
    db.close()
    out = tmp_path / "x"
    code = main(
        ["labels", "export", "--db", str(tmp_path / "events.sqlite3"), "--out", str(out), "--since", "3650d"]
    )
    printed = capsys.readouterr()
    assert code == 0 and json.loads(printed.out)["labels"] == 0
    assert "none of the 1 voice searches" in printed.err and "VOICE_SEARCH_RETAIN_AUDIO=true" in printed.err
