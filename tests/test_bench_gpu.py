"""The GPU machine's prepared script runs on the CPU too (here and in CI) and reports what it measured."""

import json
import subprocess
import sys
from pathlib import Path

from serving.settings import REPO_ROOT


def test_the_gpu_benchmark_runs_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    subprocess.run(
        [
            sys.executable,
            "scripts/bench_gpu.py",
            "--model",
            str(tiny_model_dir),
            "--batch-sizes",
            "1",
            "4",
            "--clips",
            "8",
            "--clip-s",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["precision"] == "fp32" and "CPU" in report["device_name"]
    assert [r["batch_size"] for r in report["results"]] == [1, 4]
    assert all(
        r["audio_s_per_s"] > 0 and r["batch_latency_p95_ms"] >= r["batch_latency_p50_ms"]
        for r in report["results"]
    )
