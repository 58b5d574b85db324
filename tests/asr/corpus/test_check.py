import json
import shutil
from pathlib import Path

import pytest

from asr.corpus.check import check_labels, check_manifest
from tests.signals import SAMPLES_DIR


def manifest(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    for row in rows:
        if not (tmp_path / row["audio"]).exists():
            shutil.copy(SAMPLES_DIR / "arctic_a0031.flac", tmp_path / row["audio"])
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_clean_manifest_passes(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        [
            {"audio": "a.flac", "text": "weather in paris"},
            {"audio": "b.flac", "text": "", "label": "_silence_"},
        ],
    )
    report = check_manifest(path)
    assert report.ok and report.rows == 2
    assert report.distributions["duration_s"].p50 == pytest.approx(1.742, abs=0.01)
    assert set(report.distributions) >= {"leading_silence_ms", "trailing_silence_ms", "rms_dbfs"}


def test_each_label_problem_is_named_with_its_line(tmp_path: Path) -> None:
    rows = [
        {"audio": "a.flac", "text": "weather in 東京"},
        {"audio": "b.flac", "text": "route 66"},
        {"audio": "c.flac", "text": "  ,  "},
        {"audio": "a.flac", "text": "weather in paris"},
        {"audio": "d.flac", "text": "don't stop"},
        {"audio": "e.flac", "text": "dont stop"},
    ]
    report = check_labels(manifest(tmp_path, rows))
    kinds = {(f.line, f.kind) for f in report.errors}
    assert kinds == {
        (1, "out-of-vocabulary"),
        (2, "unspelled-digits"),
        (3, "empty-reference"),
        (4, "duplicate"),
    }
    assert report.spelling_variants == {"dont": ["don't", "dont"]}
    assert not report.ok


def test_unreadable_audio_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_text("not audio")
    path = manifest(tmp_path, [{"audio": "bad.wav", "text": "yes"}, {"audio": "ok.flac", "text": "yes"}])
    report = check_manifest(path)
    assert [f.kind for f in report.errors] == ["unreadable-audio"]
    assert report.distributions["duration_s"].count == 1


def test_audio_sample_limits_the_clips_measured(tmp_path: Path) -> None:
    rows = [{"audio": f"{i}.flac", "text": "yes"} for i in range(5)]
    assert check_manifest(manifest(tmp_path, rows), audio_sample=2).distributions["duration_s"].count == 2
