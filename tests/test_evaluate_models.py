"""The evaluation script's paired comparison, end to end on a few real dev clips (tiny models)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from asr.model import create_model_dir
from serving.settings import REPO_ROOT


def evaluate(tmp_path: Path, shared_data: Path, model: Path, candidate: Path) -> dict[str, Any]:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "scripts/evaluate_models.py", "--model", str(model), "--candidate", str(candidate),
         "--systems", "ours", "--limit", "3", "--sets", "fsdd,an4", "--threads", "1",
         "--shared-data", str(shared_data), "--corpus", str(tmp_path / "no-corpus"), "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Paired: ours" in done.stdout
    results: dict[str, Any] = json.loads(out.read_text())
    return results


def test_a_checkpoint_against_itself_differs_on_no_clip(
    tiny_model_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    paired = evaluate(tmp_path, shared_data, tiny_model_dir, tiny_model_dir)["paired"]
    assert set(paired) == {"fsdd", "an4"}
    for row in paired.values():
        assert row["clips"] == 3
        assert row["ours_wer"] == row["candidate_wer"]
        assert (row["candidate_worse"], row["candidate_better"], row["p_worse"], row["p_better"]) == (
            0,
            0,
            1,
            1,
        )


def test_another_checkpoint_is_scored_clip_by_clip(
    tmp_path: Path, shared_data: Path, tiny_model_dir: Path
) -> None:
    other = create_model_dir(tmp_path / "other", shape="tiny", seed=1)
    results = evaluate(tmp_path, shared_data, tiny_model_dir, other)
    for name, row in results["paired"].items():
        # The paired WERs are the systems' own, recomputed from the clips' word errors.
        assert row["ours_wer"] == results["ours"][name]["overall"]["wer"]
        assert row["candidate_wer"] == results["candidate"][name]["overall"]["wer"]
        assert row["candidate_worse"] + row["candidate_better"] <= row["clips"]


def test_a_candidate_that_is_not_a_model_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/evaluate_models.py", "--model", str(tiny_model_dir),
         "--candidate", str(tmp_path / "missing"), "--systems", "ours"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"--candidate {tmp_path / 'missing'} is not a model folder (no config.json)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_tuning_complement_never_touches_the_reported_clips(shared_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from evaluate_models import load_sets

    reported = load_sets(tmp_path, shared_data, limit=50)
    tuning = load_sets(tmp_path, shared_data, limit=50, complement=True)
    for name in ("commands", "fsdd", "ocean"):
        assert len(tuning[name]) == 50
        assert not {e.audio for e in reported[name]} & {e.audio for e in tuning[name]}, name


def test_ours_lm_needs_an_lm_folder(tiny_model_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/evaluate_models.py", "--model", str(tiny_model_dir),
         "--systems", "ours-lm"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "ours-lm needs --lm DIR" in done.stderr


def test_ours_lm_is_scored_beside_ours_clip_by_clip(
    tmp_path: Path, shared_data: Path, tiny_model_dir: Path
) -> None:
    from asr.lm import build_lm

    build_lm(["one two three", "seven eight nine", "zero"], tmp_path / "lm")
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "scripts/evaluate_models.py", "--model", str(tiny_model_dir), "--systems", "ours",
         "--lm", str(tmp_path / "lm"), "--limit", "3", "--sets", "fsdd", "--threads", "1",
         "--shared-data", str(shared_data), "--corpus", str(tmp_path / "no-corpus"), "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["ours-lm"]["fsdd"]["overall"]["utterances"] == 3
    assert results["paired_lm"]["fsdd"]["candidate_wer"] == results["ours-lm"]["fsdd"]["overall"]["wer"]
    assert "vs ours-lm" in done.stdout


def test_a_tuning_run_survives_a_set_its_sample_uses_up(
    tmp_path: Path, shared_data: Path, tiny_model_dir: Path
) -> None:
    """AN4 has 40 dev clips: a 50-clip sample takes them all and leaves its complement empty."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "scripts/evaluate_models.py", "--model", str(tiny_model_dir), "--systems", "ours",
         "--limit", "50", "--sets", "an4", "--complement", "--min-speech-ms", "250", "--threads", "1",
         "--shared-data", str(shared_data), "--corpus", str(tmp_path / "no-corpus"), "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["ours"]["an4"]["overall"]["utterances"] == 0
    assert "| an4 | RTF |  |" in done.stdout
