"""The spotting benchmark runs end to end on a small corpus of real synthesized speech."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

from serving.settings import REPO_ROOT
from tests.signals import encode, espeak


def _clip(folder: Path, name: str, text: str) -> str:
    samples, rate = espeak(text)
    (folder / name).write_bytes(encode(samples, rate))
    return name


def test_the_benchmark_compares_spotting_with_the_transcript_on_queries_and_sentences(tmp_path: Path) -> None:
    rows = [
        {"audio": _clip(tmp_path, "q1.wav", "weather in paris"), "text": "weather in paris",
         "source": "query", "entries": "city:2988507"},
        {"audio": _clip(tmp_path, "q2.wav", "capital of germany"), "text": "capital of germany",
         "source": "query", "entries": "country:DE"},
        {"audio": _clip(tmp_path, "s1.wav", "the cat sat on the mat"), "text": "the cat sat on the mat",
         "source": "sentence"},
    ]  # fmt: skip
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "spotting.json"
    command = [sys.executable, "scripts/bench_spotting.py", "--corpus", str(tmp_path), "--split", "dev"]
    grid = ["--char-bonus", "0", "3", "--carrier-floor", "none", "0.35", "--min-match", "0", "1"]
    done = subprocess.run(
        [*command, *grid, "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert (report["queries"], report["sentences"]) == (2, 1)
    ran = [(r["char_bonus"], r["carrier_floor"], r["min_match"]) for r in report["spotting"]]
    assert ran == list(itertools.product((0, 3), (None, 0.35), (0, 1)))
    for row in report["spotting"]:
        assert 0 <= row["top1"] <= row["top5"] <= 1
    # A floor of 1 admits only names the best path spells exactly; a floor of 0 gives the sentence a hit.
    assert all(r["sentences_with_hits"] == 1.0 for r in report["spotting"] if r["min_match"] == 0)
    assert 0 <= report["transcript"]["top1"] <= 1


def test_a_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/bench_spotting.py", "--corpus", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no " in done.stderr and "test.jsonl" in done.stderr
