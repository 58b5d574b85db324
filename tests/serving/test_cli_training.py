"""The training-data and training commands of the CLI, end to end on a small budget."""

import json
import shutil
from pathlib import Path

import pytest

from serving.cli import main
from tests.signals import SAMPLES_DIR


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_check_passes_and_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "data", "check", str(SAMPLES_DIR / "manifest.jsonl"))
    assert code == 0
    assert "4 rows, 0 errors" in out and "duration_s" in out

    shutil.copy(SAMPLES_DIR / "arctic_a0031.flac", tmp_path / "a.flac")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": "a.flac", "text": "flight 370"}) + "\n")
    code, out, _ = run(capsys, "data", "check", str(bad), "--json")
    assert code == 1
    assert json.loads(out)["errors"][0]["kind"] == "unspelled-digits"


def test_corpus_build_small(capsys: pytest.CaptureFixture[str], tmp_path: Path, shared_data: Path) -> None:
    out_dir = tmp_path / "corpus"
    argv = [
        "corpus",
        "build",
        "--out",
        str(out_dir),
        "--queries",
        "6",
        "--sentences",
        "3",
        "--words",
        "6",
        "--quiet",
    ]
    code, out, err = run(capsys, *argv, "--shared-data", str(shared_data))
    assert code == 0, err
    counts = json.loads(out)
    assert counts["train"] > 0 and counts["failed"] == 0 and counts["real_train"] > 0
    for name in ("train", "dev", "test", "real_train", "real_dev", "real_dev_speechocean762_train"):
        assert (out_dir / f"{name}.jsonl").is_file()


def test_train_refuses_bad_data_and_missing_init(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    shutil.copy(SAMPLES_DIR / "arctic_a0031.flac", tmp_path / "a.flac")
    bad.write_text(json.dumps({"audio": "a.flac", "text": "route 66"}) + "\n")
    code, _, err = run(
        capsys, "train", "--out", str(tmp_path / "run"), "--init", "scratch:tiny", "--train", str(bad)
    )
    assert code == 2 and "fails the data check" in err and "unspelled-digits" in err
    code, _, err = run(
        capsys, "train", "--out", str(tmp_path / "run"), "--init", str(tmp_path / "nope"), "--train", str(bad)
    )
    assert code == 2 and "no model folder" in err


def test_train_domain_adapts_and_reports_before_after(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    argv = [
        "train",
        "--out",
        str(tmp_path / "adapt"),
        "--init",
        str(tiny_model_dir),
        "--domain",
        "data/domains/places",
    ]
    budget = [
        "--domain-queries",
        "24",
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--eval-every",
        "3",
        "--eval-clips",
        "2",
        "--device",
        "cpu",
    ]
    code, out, err = run(capsys, *argv, *budget)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["test_clips"] > 0
    assert result["before"]["wer"] is not None and result["after"]["wer"] is not None
    assert (Path(result["model"]) / "model.safetensors").is_file()


def test_average_writes_a_model_and_refuses_bad_folders(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    code, out, err = run(
        capsys, "average", str(tiny_model_dir), str(tiny_model_dir), "--out", str(tmp_path / "a")
    )
    assert code == 0, err
    assert "the mean of 2 models" in out and (tmp_path / "a" / "model.safetensors").is_file()
    code, out, err = run(capsys, "average", str(tiny_model_dir), str(tmp_path), "--out", str(tmp_path / "b"))
    assert code == 2 and "no model.safetensors in" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_lm_build_then_transcribe_with_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text = tmp_path / "more.txt"
    text.write_text("seven eight nine\nsay yes or no\n")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("say yes or no\n")
    argv = ["lm", "build", str(SAMPLES_DIR / "manifest.jsonl"), str(text), "--exclude", str(held_out)]
    code, out, err = run(capsys, *argv, "--out", str(tmp_path / "lm"))
    assert code == 0, err
    built = json.loads(out)
    assert built["sentences"] == 5 and (tmp_path / "lm" / "lm.arpa").is_file()
    lexicon = set((tmp_path / "lm" / "lexicon.txt").read_text().split())
    assert {"seven", "yes", "danger"} <= lexicon and "say" not in lexicon

    decode = ["--lexicon", str(tmp_path / "lm" / "lexicon.txt"), "--lm", str(tmp_path / "lm" / "lm.arpa")]
    code, out, err = run(
        capsys, "transcribe", str(SAMPLES_DIR), *decode, "--word-score", "2", "--format", "jsonl"
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4
    assert all(set(r["text"].split()) <= lexicon for r in rows)  # only the LM's words come out

    code, _, err = run(capsys, "lm", "build", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "lm2"))
    assert code == 2 and "cannot read sentences" in err and not (tmp_path / "lm2").exists()
