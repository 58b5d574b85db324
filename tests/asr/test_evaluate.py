import json
from pathlib import Path

import pytest

from asr.errors import ManifestError, TruncatedAudioError
from asr.evaluate import Outcome, PlainTranscript, run_entry, score, summarize
from asr.manifest import ManifestEntry, read_manifest


def test_score_counts_word_and_character_errors() -> None:
    s = score(["turn on the light", "yes"], ["turn of the light", "Yes!"])
    assert s.utterances == 2
    assert s.reference_words == 5
    assert s.wer == pytest.approx(1 / 5)
    assert s.cer == pytest.approx(1 / (len("turn on the light") + 3))
    assert s.exact_match == pytest.approx(0.5)
    assert s.false_speech is None


def test_references_are_normalized_like_hypotheses() -> None:
    assert score(["Route 66, please."], ["route sixty six please"]).wer == 0.0


def test_empty_references_count_false_speech_and_insertions() -> None:
    s = score(["", "", "go"], ["", "go go", "go"])
    assert s.false_speech == pytest.approx(0.5)
    assert s.wer == pytest.approx(2 / 1)  # two inserted words against one reference word
    only_silence = score([""], [""])
    assert only_silence.wer is None and only_silence.false_speech == 0.0


def write_manifest(folder: Path, rows: list[object]) -> Path:
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_read_manifest_resolves_audio_relative_to_it(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, [{"audio": "a/b.flac", "text": "yes", "speaker": "x", "snr_db": 10}])
    (entry,) = read_manifest(path)
    assert entry.audio == tmp_path / "a" / "b.flac"
    assert entry.fields == {"speaker": "x", "snr_db": "10"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no entries"),
        ("{not json\n", "not valid JSON"),
        ('{"audio": "x.wav"}\n', "'audio' and 'text'"),
        ('["x.wav", "yes"]\n', "'audio' and 'text'"),
    ],
)
def test_bad_manifests(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path / "absent.jsonl")


def test_run_entry_records_failures_instead_of_raising() -> None:
    def broken(path: Path) -> PlainTranscript:
        raise TruncatedAudioError("cut short")

    outcome = run_entry(broken, ManifestEntry(Path("x.flac"), "yes"))
    assert outcome.error == "TruncatedAudioError: cut short"


def test_summarize_slices_speed_and_failures() -> None:
    def entry(text: str, speaker: str) -> ManifestEntry:
        return ManifestEntry(Path(f"{speaker}.wav"), text, {"speaker": speaker})

    outcomes = [
        Outcome(entry("yes", "a"), "yes", latency_s=0.1, duration_s=1.0),
        Outcome(entry("no", "a"), "go", latency_s=0.3, duration_s=1.0),
        Outcome(entry("up", "b"), "up", latency_s=0.2, duration_s=2.0),
        Outcome(entry("down", "b"), "", latency_s=0.0, duration_s=0.0, error="UndecodableAudioError: bad"),
    ]
    report = summarize(outcomes, by=["speaker", "absent"])
    assert report.overall.utterances == 3
    assert report.overall.wer == pytest.approx(1 / 3)
    assert report.slices["speaker"]["a"].wer == pytest.approx(0.5)
    assert report.slices["speaker"]["b"].wer == 0.0
    assert list(report.slices["absent"]) == ["(none)"]
    assert report.real_time_factor == pytest.approx(0.6 / 4.0)
    assert report.latency_p50_s == pytest.approx(0.2)
    assert report.failures == [("b.wav", "UndecodableAudioError: bad")]
    assert json.loads(json.dumps(report.to_dict()))["overall"]["utterances"] == 3
