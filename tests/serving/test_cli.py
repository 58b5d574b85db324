"""The `voice-search` CLI end to end, with the tiny model and real files on disk."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.cli import expand_inputs, main
from tests.signals import SAMPLES_DIR, SPEECH_SAMPLE, encode, tone


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    """Two good files in a folder tree (one nested, one 8 kHz) and a non-audio file."""
    folder = tmp_path / "clips"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(SPEECH_SAMPLE, folder / "speech.flac")
    shutil.copy(SAMPLES_DIR / "fsdd_7_george_0.flac", folder / "nested" / "digit.flac")
    (folder / "readme.txt").write_text("not audio")
    return folder


@pytest.fixture
def broken_files(tmp_path: Path) -> list[Path]:
    renamed = tmp_path / "renamed.wav"
    renamed.write_text("this is a text file\n" * 10)
    zero = tmp_path / "zero.wav"
    zero.touch()
    flac = encode(tone(seconds=2.0), 16000, "FLAC")
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(flac[: len(flac) // 2])
    return [renamed, zero, truncated]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jsonl_rows_for_a_folder(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, audio_dir: Path
) -> None:
    code, out, err = run(
        capsys, "transcribe", str(audio_dir), "--model", str(tiny_model_dir), "--format", "jsonl"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["digit.flac", "speech.flac"]  # .txt skipped
    for row in rows:
        assert {
            "path",
            "text",
            "confidence",
            "duration_s",
            "segments",
            "no_speech",
            "stats",
            "timings_s",
        } <= set(row)
        assert 0.0 <= row["confidence"] <= 1.0
    speech = rows[1]
    assert speech["duration_s"] == pytest.approx(3.296, abs=0.01)
    assert speech["segments"] and {"start_s", "end_s", "text", "words"} <= set(speech["segments"][0])


def test_some_broken_files_exit_1_and_the_rest_are_transcribed(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, broken_files: list[Path]
) -> None:
    paths = [str(SPEECH_SAMPLE), *map(str, broken_files), str(broken_files[0].parent / "missing.wav")]
    code, out, err = run(capsys, "transcribe", *paths, "--model", str(tiny_model_dir), "--format", "jsonl")
    assert code == 1
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert "text" in rows["arctic_a0001.flac"]
    assert rows["renamed.wav"]["error"]["type"] == "UndecodableAudioError"
    assert rows["zero.wav"]["error"]["type"] == "EmptyAudioError"
    assert rows["truncated.flac"]["error"]["type"] == "TruncatedAudioError"
    assert rows["missing.wav"]["error"]["type"] == "UndecodableAudioError"
    for name in ("renamed.wav", "zero.wav", "truncated.flac", "missing.wav"):
        assert name in err
    assert "4 of 5 files failed" in err
    assert "Traceback" not in err


def test_text_and_csv_formats_and_output_file(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, audio_dir: Path, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "transcribe", str(SPEECH_SAMPLE), "--model", str(tiny_model_dir), "--no-vad")
    assert code == 0
    assert len(out.splitlines()) == 1 and "\t" not in out  # one file: the transcript alone

    target = tmp_path / "out.csv"
    pattern = str(audio_dir / "**" / "*.flac")
    code, out, _ = run(
        capsys,
        "transcribe",
        pattern,
        "--model",
        str(tiny_model_dir),
        "--format",
        "csv",
        "--output",
        str(target),
    )
    assert code == 0 and out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [Path(r["path"]).name for r in rows] == ["digit.flac", "speech.flac"]
    assert all(r["error"] == "" for r in rows)


def test_beam_search_with_hotwords(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    hotwords = tmp_path / "hot.txt"
    hotwords.write_text("danger trail\n")
    code, _, err = run(
        capsys,
        "transcribe",
        str(SPEECH_SAMPLE),
        "--model",
        str(tiny_model_dir),
        "--beam-size",
        "4",
        "--hotwords",
        str(hotwords),
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transcribe", "x.wav", "--model", "/nonexistent/model"], "no model folder"),
        (["transcribe", "/nonexistent/*.wav"], "no audio files matched"),
        (["evaluate", "/nonexistent/manifest.jsonl"], "cannot read manifest"),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["transcribe"],
        ["transcribe", "x.wav", "--format", "xml"],
        ["transcribe", "x.wav", "--beam-size", "0"],
        [],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_hotwords_file_problems_exit_2(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, _, err = run(
        capsys, "transcribe", str(SPEECH_SAMPLE), "--model", str(tiny_model_dir), "--hotwords", str(empty)
    )
    assert code == 2 and "no words" in err


def test_evaluate_prints_scores_slices_and_speed(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, broken_files: list[Path]
) -> None:
    manifest = SAMPLES_DIR / "manifest.jsonl"
    code, out, err = run(
        capsys, "evaluate", str(manifest), "--model", str(tiny_model_dir), "--by", "set", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["overall"]["utterances"] == 4
    assert report["overall"]["wer"] is not None
    assert set(report["slices"]["set"]) == {"cathy_arctic", "fsdd", "speech_commands_dev"}
    assert report["real_time_factor"] > 0
    assert report["latency_p95_s"] >= report["latency_p50_s"] > 0

    code, out, _ = run(capsys, "evaluate", str(manifest), "--model", str(tiny_model_dir), "--by", "speaker")
    assert code == 0
    assert "WER" in out and "speaker=cathy" in out and "real-time factor" in out


def test_evaluate_reports_broken_rows_and_exits_1(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, broken_files: list[Path], tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": str(SPEECH_SAMPLE), "text": "author"}] + [
        {"audio": p.name, "text": "x"} for p in broken_files
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    code, out, err = run(capsys, "evaluate", str(manifest), "--model", str(tiny_model_dir), "--json")
    assert code == 1
    assert len(json.loads(out)["failures"]) == 3
    assert "truncated.flac" in err


def test_evaluate_where_and_limit(capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    manifest = SAMPLES_DIR / "manifest.jsonl"
    code, out, _ = run(
        capsys,
        "evaluate",
        str(manifest),
        "--model",
        str(tiny_model_dir),
        "--where",
        "speaker=cathy",
        "--json",
    )
    assert code == 0 and json.loads(out)["overall"]["utterances"] == 2
    code, _, err = run(
        capsys, "evaluate", str(manifest), "--model", str(tiny_model_dir), "--where", "speaker"
    )
    assert code == 2 and "FIELD=VALUE" in err
    code, _, err = run(
        capsys, "evaluate", str(manifest), "--model", str(tiny_model_dir), "--where", "speaker=nobody"
    )
    assert code == 2 and "no manifest rows" in err


@pytest.mark.slow
def test_evaluate_on_the_real_fsdd_test_split(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, shared_data: Path
) -> None:
    manifest = shared_data / "fsdd" / "manifest.jsonl"
    code, out, err = run(
        capsys,
        "evaluate",
        str(manifest),
        "--model",
        str(tiny_model_dir),
        "--where",
        "split=test",
        "--limit",
        "30",
        "--by",
        "speaker",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["overall"]["utterances"] == 30
    assert report["failures"] == []


def test_console_script_runs_as_a_process(tiny_model_dir: Path) -> None:
    exe = Path(sys.executable).with_name("voice-search")
    done = subprocess.run(
        [str(exe), "transcribe", str(SPEECH_SAMPLE), "--model", str(tiny_model_dir), "--format", "jsonl"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["duration_s"] == pytest.approx(3.296, abs=0.01)
    assert "Loading weights" not in done.stderr  # library progress bars are silenced


def test_serve_says_where_it_listens_and_what_it_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    from asr.model import model_version
    from serving.local_server import free_port

    exe, port = Path(sys.executable).with_name("voice-search"), free_port()
    env = os.environ | {"VOICE_SEARCH_DB_PATH": str(tmp_path / "events.sqlite3")}
    process = subprocess.Popen(
        [str(exe), "serve", "--model", str(tiny_model_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(7)]
    finally:
        process.terminate()
        process.wait(timeout=30)
    banner = "".join(lines)
    assert f"listening on 127.0.0.1:{port}" in banner
    assert model_version(tiny_model_dir) in banner and "domain " in banner
    for page in ("/", "/dashboard", "/docs"):
        assert f"http://127.0.0.1:{port}{page}\n" in banner


def test_expand_inputs_keeps_order_dedupes_and_keeps_missing(audio_dir: Path) -> None:
    missing = audio_dir / "gone.wav"
    found = expand_inputs([str(audio_dir / "speech.flac"), str(audio_dir), str(missing)])
    assert [p.name for p in found] == ["speech.flac", "digit.flac", "gone.wav"]


def test_an_lm_brings_its_tuned_word_bonus_unless_one_is_given(tmp_path: Path) -> None:
    from asr.lm import LM_WEIGHT, WORD_SCORE
    from serving.cli import build_parser
    from serving.cli.common import beam_options

    lm = tmp_path / "lm.arpa"
    lm.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\tyes\n\n\\end\\\n")
    words = tmp_path / "words.txt"
    words.write_text("yes\n")

    def options(*extra: str) -> Any:
        return beam_options(
            build_parser().parse_args(["transcribe", "x.wav", "--lexicon", str(words), *extra])
        )

    assert options().word_score == 0.0  # a lexicon alone: no LM cost to offset
    with_lm = options("--lm", str(lm))
    assert (with_lm.lm_weight, with_lm.word_score) == (LM_WEIGHT, WORD_SCORE)
    assert options("--lm", str(lm), "--word-score", "0.5", "--lm-weight", "2").word_score == 0.5


@pytest.mark.parametrize(
    ("name", "value"), [("VOICE_SEARCH_PORT", "abc"), ("VOICE_SEARCH_CANARY_STEPS", "7")]
)
def test_a_bad_setting_is_named_once(
    name: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["transcribe", str(SPEECH_SAMPLE)]) == 2
    err = capsys.readouterr().err
    assert err.count("invalid VOICE_SEARCH_* setting") == 1 and value in err


def test_the_table_format_shows_the_expected_text_from_a_manifest_beside_the_audio(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path
) -> None:
    code = main(
        ["transcribe", str(SAMPLES_DIR), "--format", "table", "--quiet", "--model", str(tiny_model_dir)]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].split() == ["file", "seconds", "conf.", "transcript", "(expected)"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {p.name for p in SAMPLES_DIR.glob("*.flac")}
    assert rows["arctic_a0031.flac"].endswith("(they were three hundred yards apart)")
    assert " 1.0 " in rows["speech_commands_yes_022cd682.flac"]


def test_a_reader_that_leaves_ends_the_command_quietly(
    audio_dir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`voice-search transcribe ... | head`: stdout is a real pipe whose reader has gone, so the
    first line meets a closed pipe, and the command stops with the shell's SIGPIPE status,
    without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        code = main(["transcribe", str(SPEECH_SAMPLE), str(audio_dir / "nested" / "digit.flac")])
        monkeypatch.undo()
    err = capfd.readouterr().err
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
