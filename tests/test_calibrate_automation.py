"""The partial-automation calibration script end to end on a few real dev clips (tiny model)."""

import json
import subprocess
import sys
from pathlib import Path

from serving.settings import REPO_ROOT


def test_calibration_curve_and_choice(tiny_model_dir: Path, tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "calibration.json"
    done = subprocess.run(
        [sys.executable, "scripts/calibrate_automation.py", "--model", str(tiny_model_dir), "--limit", "2",
         "--shared-data", str(shared_data), "--corpus", str(tmp_path / "no-corpus"), "--json", str(out),
         "--plot", str(tmp_path / "curve.png"), "--target-precision", "0.0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["clips"] == 7 * 2  # two clips of each of the seven dev sets (speech only), no corpus
    to_people = [row["to_people"] for row in result["curve"]]
    assert to_people == sorted(to_people) and to_people[0] == 0.0 and to_people[-1] == 1.0
    assert result["chosen"]["threshold"] == 0.0  # any threshold reaches precision 0
    assert (tmp_path / "curve.png").stat().st_size > 1000
