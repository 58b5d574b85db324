"""The drift-noise script end to end on real SQLite stores: unshifted traffic passes a drift rule's
threshold only on small windows, shifted traffic on every window."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from monitoring.drift import ReferenceProfile
from monitoring.events import Event, SQLiteEventStore
from serving.settings import REPO_ROOT

RULES = """rules:
  - name: volume_drift
    drift: rms_dbfs
    test: psi
    window: 2m
    threshold: 0.5
    min_samples: 10
"""


def store(path: Path, levels: np.ndarray) -> Path:
    events = SQLiteEventStore(path)
    for i, level in enumerate(levels):
        events.record(
            Event(request_id=f"r{i}", created_at=1_700_000_000.0 + i, kind="voice_search", route="/v1/search",
                  status_code=200, outcome="ok", session_id=f"s{i}", transcript="paris", confidence=0.7,
                  duration_s=2.0, sample_rate_hz=16000, rms_dbfs=float(level), peak_dbfs=float(level) + 15.0,
                  clipping_ratio=0.0)
        )  # fmt: skip
    events.close()
    return path


def noise(tmp_path: Path, events: Path) -> dict[int, dict[str, float]]:
    out = tmp_path / f"{events.stem}.json"
    done = subprocess.run(
        [sys.executable, "scripts/drift_noise.py", str(events), "--rules", str(tmp_path / "alarms.yml"),
         "--reference", str(tmp_path / "reference.json"), "--sizes", "8", "400", "--draws", "200",
         "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| volume_drift | > 0.5 | 10 |" in done.stdout
    return {c["size"]: c for c in json.loads(out.read_text())["rules"]["volume_drift"]}


def test_small_windows_of_unshifted_traffic_pass_the_threshold_and_large_ones_do_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "alarms.yml").write_text(RULES)
    ReferenceProfile({"rms_dbfs": [float(v) for v in rng.normal(-25, 4, 2000)]}, source="test").save(
        tmp_path / "reference.json"
    )
    steady = noise(tmp_path, store(tmp_path / "steady.sqlite3", rng.normal(-25, 4, 1000)))
    assert steady[8]["passed_share"] > 0.05  # eight clips: psi over ten deciles is mostly noise
    assert steady[400]["passed_share"] == 0.0 and steady[400]["p99"] < 0.2
    quiet = noise(tmp_path, store(tmp_path / "quiet.sqlite3", rng.normal(-40, 4, 1000)))
    assert quiet[400]["passed_share"] == 1.0 and quiet[8]["passed_share"] == 1.0


def test_a_missing_event_store_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.sqlite3"
    done = subprocess.run(
        [sys.executable, "scripts/drift_noise.py", str(missing)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and f"no event store at {missing}" in done.stderr
    assert not missing.exists()
