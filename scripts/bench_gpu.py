"""The cloud side's recognizer on whatever the machine has: CUDA in half precision when a GPU is
there, else the CPU in float32; batched. Throughput (audio seconds per second) and latency per
batch size, with the device named.

    .venv/bin/python scripts/bench_gpu.py                        # bundled model, 3 s clips
    .venv/bin/python scripts/bench_gpu.py --batch-sizes 1 8 32 --clip-s 3 --json .cache/bench_gpu.json

One prepared script for a lent GPU machine's few minutes: it needs only the repository (no
corpus; clips are the bundled samples cut or looped to --clip-s) and prints one JSON report.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio import SAMPLE_RATE_HZ, load_audio
from asr.model import Recognizer
from serving.settings import DEFAULT_MODEL_DIR, REPO_ROOT


def device_name(device: str) -> str:
    if device == "cuda":
        return str(torch.cuda.get_device_name(0))
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def clips_of(length_s: float, count: int) -> list[np.ndarray]:
    """`count` clips of `length_s` made from the bundled samples (looped when short)."""
    sources = [load_audio(p).samples for p in sorted((REPO_ROOT / "data" / "samples").glob("*.flac"))]
    n = int(length_s * SAMPLE_RATE_HZ)
    return [np.resize(sources[i % len(sources)], n).astype(np.float32) for i in range(count)]


def measure(recognizer: Recognizer, clips: list[np.ndarray], batch: int, repeats: int) -> dict[str, Any]:
    batches = [clips[i : i + batch] for i in range(0, len(clips), batch)]
    recognizer.log_probs(batches[0])  # warm-up (CUDA kernels, allocator)
    latencies = []
    started = time.perf_counter()
    for _ in range(repeats):
        for group in batches:
            t = time.perf_counter()
            recognizer.log_probs(group)
            if recognizer.device == "cuda":
                torch.cuda.synchronize()
            latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    audio_s = repeats * sum(len(c) for c in clips) / SAMPLE_RATE_HZ
    return {
        "batch_size": batch,
        "audio_s_per_s": round(audio_s / elapsed, 1),
        "batch_latency_p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
        "batch_latency_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clip-s", type=float, default=3.0)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recognizer = Recognizer.from_pretrained(args.model, "auto")  # fp16 on CUDA, fp32 on the CPU
    clips = clips_of(args.clip_s, args.clips)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": recognizer.device,
        "device_name": device_name(recognizer.device),
        "precision": "fp16" if recognizer.device == "cuda" else "fp32",
        "model": recognizer.version,
        "clip_s": args.clip_s,
        "results": [measure(recognizer, clips, b, args.repeats) for b in args.batch_sizes],
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
