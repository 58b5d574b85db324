"""Edge vs cloud: the same clips answered on the device (int8, 1 and 2 threads) or by the server
(fp32 over HTTP) under network profiles; latency by stage, RTF, peak memory, payload, WER, plots.

    .venv/bin/python scripts/bench_edge_cloud.py                 # corpus test clips, all configurations
    .venv/bin/python scripts/bench_edge_cloud.py --clips 10 --out .cache/edge-cloud-small

Each configuration runs in its own process (so its peak resident memory is its own); the cloud
client runs VAD locally and reaches a real local server through a shaping proxy
(serving/netshape.py: tc netem is not available on these machines). Writes results.json, a
table (table.md) and latency-vs-clip-length plots (latency.png, latency.html) to --out.
"""

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from asr.manifest import ManifestEntry, read_manifest
from asr.text import normalize_text
from serving.settings import DEFAULT_DOMAIN_DIR, DEFAULT_MODEL_DIR, REPO_ROOT, Settings

STAGES = ("vad", "encode", "upload", "asr", "decoding", "search")


def clips(args: argparse.Namespace) -> list[ManifestEntry]:
    """Test clips spread over lengths: the corpus's held-out queries and sentences, else the samples."""
    manifest = args.corpus / "test.jsonl"
    if not manifest.is_file():
        return read_manifest(REPO_ROOT / "data" / "samples" / "manifest.jsonl")
    entries = [e for e in read_manifest(manifest) if e.fields.get("source") in ("query", "sentence")]
    entries.sort(key=lambda e: float(e.fields.get("duration_s", 0)))
    picks = np.linspace(0, len(entries) - 1, min(args.clips, len(entries))).round().astype(int)
    return [entries[i] for i in sorted(set(picks))]


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration, in this process: every clip once (after one warm-up), timings per clip."""
    import jiwer

    from asr.corpus.domain import DomainPack
    from asr.edge import is_edge_folder
    from asr.pipeline import build_frontend, build_pipeline
    from serving.client import CloudClient, EdgeClient
    from serving.netshape import PROFILES, shaped
    from serving.search import CatalogIndex

    kind, _, detail = args.config.partition(":")
    if kind == "edge" and not is_edge_folder(args.model):  # torch's threads are process-wide
        import torch

        torch.set_num_threads(args.threads)
    entries = clips(args)
    results = []
    if kind == "edge":
        pack = DomainPack.load(DEFAULT_DOMAIN_DIR)
        # Spot the catalog's names as the server does, so both sides pay for the same search.
        spotting = pack.spotting() if Settings().spot_catalog else None
        pipeline = build_pipeline(args.model, device="cpu", threads=args.threads, spotting=spotting)
        client: Any = EdgeClient(pipeline, CatalogIndex(pack))
        context = None
    else:
        context = shaped(args.url, PROFILES[detail])
        client = CloudClient(context.__enter__(), build_frontend())
    try:
        client.search(entries[0].audio)  # warm-up: first calls allocate and compile
        for entry in entries:
            result = client.search(entry.audio)
            results.append((entry, result))
    finally:
        if context is not None:
            client.close()
            context.__exit__(None, None, None)
    refs = [normalize_text(e.text) for e, _ in results]
    hyps = [normalize_text(r.transcript) for _, r in results]
    return {
        "config": args.config,
        "threads": args.threads,
        "clips": [
            {"audio_s": r.audio_s, "timings_ms": r.timings_ms, "payload_bytes": r.payload_bytes}
            for _, r in results
        ],
        "wer": jiwer.wer(refs, hyps),
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: that survives exec, so a
    child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_speed(
    folders: dict[str, Path], entries: list[ManifestEntry], repeats: int, threads: int
) -> dict[str, Any]:
    """The model alone on whole clips (no VAD), in this process, the precisions interleaved clip
    by clip so that the machine's noise falls on each alike; per clip the fastest of `repeats`
    runs counts (noise only ever adds time). Gives each precision's median and the per-clip
    speed-up over fp32."""
    from asr.audio import load_audio
    from asr.edge import OnnxRecognizer

    models = {name: OnnxRecognizer(folder, threads) for name, folder in folders.items()}
    audio = [load_audio(e.audio).samples for e in entries]
    best = {name: [float("inf")] * len(audio) for name in models}
    for model in models.values():
        model.log_probs(audio[:1])  # warm-up
    for _ in range(repeats):
        for i, clip in enumerate(audio):
            for name, model in models.items():
                started = time.perf_counter()
                model.log_probs([clip])
                best[name][i] = min(best[name][i], time.perf_counter() - started)
    speedups = np.array(best["fp32"]) / np.array(best["int8"])
    return {
        "threads": threads,
        "repeats": repeats,
        "median_ms": {name: round(1000 * float(np.median(t)), 2) for name, t in best.items()},
        "int8_speedup": {
            "median": round(float(np.median(speedups)), 2),
            "min": round(float(speedups.min()), 2),
            "max": round(float(speedups.max()), 2),
        },
    }


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    totals = np.array([c["timings_ms"]["total"] for c in run["clips"]])
    audio = np.array([c["audio_s"] for c in run["clips"]])
    stages = {
        s: round(float(np.mean([c["timings_ms"].get(s, 0.0) for c in run["clips"]])), 1) for s in STAGES
    }
    return {
        "config": run["config"],
        "p50_ms": round(float(np.percentile(totals, 50)), 1),
        "p95_ms": round(float(np.percentile(totals, 95)), 1),
        "mean_stage_ms": stages,
        "rtf": round(float(np.sum(totals) / 1000 / np.sum(audio)), 3),
        "peak_rss_mb": round(run["peak_rss_mb"]),
        "mean_payload_bytes": round(float(np.mean([c["payload_bytes"] for c in run["clips"]]))),
        "wer": round(run["wer"], 3),
    }


def crossover(edge: dict[str, Any], cloud: dict[str, Any]) -> str:
    """The shortest clip length from which cloud answered faster than edge (per clip, same clips)."""
    pairs = sorted(
        (e["audio_s"], c["timings_ms"]["total"] < e["timings_ms"]["total"])
        for e, c in zip(edge["clips"], cloud["clips"], strict=True)
    )
    for i, (length, _) in enumerate(pairs):
        if all(faster for _, faster in pairs[i:]):
            return f"from {length:.1f} s" if i else "always"
    return "never"


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    for run in runs:
        points = sorted((c["audio_s"], c["timings_ms"]["total"]) for c in run["clips"])
        axes.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=run["config"]
        )
    axes.set_xlabel("clip length (s)")
    axes.set_ylabel("end-to-end latency (ms)")
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title("voice-search: edge (int8) vs cloud (fp32 server) by network profile")
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=120)
    svg = io.StringIO()
    figure.savefig(svg, format="svg")
    (out / "latency.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>edge vs cloud latency</title></head><body>"
        + svg.getvalue()
        + "</body></html>\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "corpus")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--profiles", nargs="+", default=["loopback", "wifi", "4g", "3g"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".cache" / "edge-cloud")
    parser.add_argument(
        "--speed-repeats", type=int, default=5, help="runs per clip of the side-by-side model-stage timing"
    )
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:  # a child: one configuration, JSON on stdout
        print(json.dumps(run_config(args)))
        return 0

    from asr.audio import load_audio
    from asr.edge import export_edge
    from serving.local_server import running_server

    args.out.mkdir(parents=True, exist_ok=True)
    edge_dir = args.out / "int8"
    calibration_manifest = args.corpus / "dev.jsonl"
    if calibration_manifest.is_file():
        calibration = [e for e in read_manifest(calibration_manifest) if e.fields.get("source") == "query"][
            :64
        ]
    else:
        calibration = read_manifest(REPO_ROOT / "data" / "samples" / "manifest.jsonl")
    export = export_edge(
        DEFAULT_MODEL_DIR, edge_dir, "int8", [load_audio(e.audio).samples for e in calibration]
    )
    common = [sys.executable, __file__, "--corpus", str(args.corpus), "--clips", str(args.clips)]

    def child(config: str, threads: int, *extra: str) -> dict[str, Any]:
        done = subprocess.run(
            [*common, "--config", config, "--threads", str(threads), *extra],
            check=True,
            capture_output=True,
            text=True,
        )
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    fp32_dir = args.out / "fp32"
    export_edge(DEFAULT_MODEL_DIR, fp32_dir, "fp32")
    runs = [
        child("edge:int8-1-thread", 1, "--model", str(edge_dir)),
        child("edge:int8-2-threads", 2, "--model", str(edge_dir)),
        child("edge:fp32-onnx-2-threads", 2, "--model", str(fp32_dir)),
        child("edge:fp32-torch-2-threads", 2, "--model", str(DEFAULT_MODEL_DIR)),
    ]
    with tempfile.TemporaryDirectory() as state, running_server(Path(state)) as server:
        runs += [child(f"cloud:{p}", 1, "--url", server.url) for p in args.profiles]
    folders = {"int8": edge_dir, "fp32": fp32_dir}
    speed = [model_speed(folders, clips(args), args.speed_repeats, threads) for threads in (1, 2)]
    summary = [summarize(r) for r in runs]
    edge_run = runs[1]
    crossovers = {r["config"]: crossover(edge_run, r) for r in runs if r["config"].startswith("cloud:")}
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "model_bytes": {"int8_onnx": export.bytes, "fp32_onnx": (fp32_dir / "model.onnx").stat().st_size},
        "summary": summary,
        "cloud_beats_edge_int8_2_threads": crossovers,
        "model_speed": speed,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    plot(runs, args.out)
    lines = [
        "| configuration | p50 ms | p95 ms | mean ms: "
        + " / ".join(STAGES)
        + " | RTF | peak RSS MB | payload bytes | WER |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        stages = " / ".join(str(s["mean_stage_ms"][k]) for k in STAGES)
        lines.append(
            f"| {s['config']} | {s['p50_ms']} | {s['p95_ms']} | {stages} | {s['rtf']} | "
            f"{s['peak_rss_mb']} | {s['mean_payload_bytes']} | {s['wer']:.1%} |"
        )
    lines.append("")
    lines += [f"- {config}: cloud beats edge int8 (2 threads) {when}" for config, when in crossovers.items()]
    lines += [
        f"- model alone on whole clips, side by side, {m['threads']} thread(s), "
        f"best of {m['repeats']} per clip: "
        f"int8 {m['median_ms']['int8']} ms, fp32 ONNX {m['median_ms']['fp32']} ms (median); int8 speed-up "
        f"{m['int8_speedup']['median']}x median ({m['int8_speedup']['min']}-{m['int8_speedup']['max']}x)"
        for m in speed
    ]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
