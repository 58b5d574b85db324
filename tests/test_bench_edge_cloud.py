"""The edge-vs-cloud comparison runs from one command on a fresh clone (bundled model and samples)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import REPO_ROOT

pytestmark = pytest.mark.server


def test_the_comparison_writes_its_table_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "edge-cloud"
    subprocess.run(
        [
            sys.executable,
            "scripts/bench_edge_cloud.py",
            "--corpus",
            str(tmp_path / "no-corpus"),
            "--profiles",
            "loopback",
            "3g",
            "--out",
            str(out),
            "--speed-repeats",
            "2",
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    report = json.loads((out / "results.json").read_text())
    configs = [s["config"] for s in report["summary"]]
    assert configs == [
        "edge:int8-1-thread",
        "edge:int8-2-threads",
        "edge:fp32-onnx-2-threads",
        "edge:fp32-torch-2-threads",
        "cloud:loopback",
        "cloud:3g",
    ]
    for summary, run in zip(report["summary"], report["runs"], strict=True):
        assert len(run["clips"]) == 4  # the bundled samples
        assert summary["p95_ms"] >= summary["p50_ms"] > 0 and summary["peak_rss_mb"] > 0
    cloud = {s["config"]: s for s in report["summary"] if s["config"].startswith("cloud:")}
    assert cloud["cloud:3g"]["mean_payload_bytes"] > 0
    assert report["model_bytes"]["int8_onnx"] <= report["model_bytes"]["fp32_onnx"] / 2
    assert [m["threads"] for m in report["model_speed"]] == [1, 2]
    for m in report["model_speed"]:
        assert m["median_ms"]["int8"] > 0 and m["median_ms"]["fp32"] > 0
        assert m["int8_speedup"]["median"] > 0 and m["repeats"] == 2
    assert set(report["cloud_beats_edge_int8_2_threads"]) == {"cloud:loopback", "cloud:3g"}
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (out / "latency.html").read_text()
    assert "| edge:int8-2-threads |" in (out / "table.md").read_text()
