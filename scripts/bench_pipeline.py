"""Benchmark the recognition pipeline: real-time factor per stage and peak memory by clip length.

Each clip length runs in its own process, so that peak RSS (`ru_maxrss`) belongs to that length
alone. The audio is real speech: CMU ARCTIC sentences (../shared/data/cathy_arctic) joined with
pauses, looped to the wanted length. With no --model, the bundled model is measured; any
checkpoint folder of either family (wav2vec2 or Whisper front end) can be given instead, to
compare two models side by side.

    python scripts/bench_pipeline.py                      # 3 s, 10 s and 10 min, table on stdout
    python scripts/bench_pipeline.py --model DIR --threads 2 --lengths 3 600
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "data" / "models" / "voice-search-small"
SPEECH_DIR = REPO.parent / "shared" / "data" / "cathy_arctic"
PAUSE_S = 0.6
"""Silence between joined sentences: a natural pause, long enough for the VAD to cut there."""


def speech_of_length(seconds: float, rate: int = 16_000) -> np.ndarray:
    """Real sentences joined by pauses and looped to `seconds` of 16 kHz audio."""
    rows = [json.loads(line) for line in (SPEECH_DIR / "manifest.jsonl").read_text().splitlines()]
    pause = np.zeros(int(PAUSE_S * rate), np.float32)
    parts, total = [], 0
    for row in rows * 100:
        clip, clip_rate = sf.read(SPEECH_DIR / row["audio"], dtype="float32")
        assert clip_rate == rate, "cathy_arctic is 16 kHz"
        parts += [clip, pause]
        total += len(clip) + len(pause)
        if total >= seconds * rate:
            break
    return np.concatenate(parts)[: int(seconds * rate)]


def measure_one(
    model: Path, seconds: float, threads: int, repeats: int, beam: int | None
) -> dict[str, object]:
    """Run in a child process: load, warm up, then time `repeats` transcriptions of one file."""
    import torch

    from asr.decoding import BeamOptions
    from asr.pipeline import build_pipeline
    from serving.runtime import limit_allocator_caching

    torch.set_num_threads(threads)
    limit_allocator_caching()  # as the CLI and server do
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.flac"
        sf.write(path, speech_of_length(seconds), 16_000)
        pipeline = build_pipeline(model, device="cpu", beam=BeamOptions(beam_size=beam) if beam else None)
        pipeline.transcribe(REPO / "data" / "samples" / "arctic_a0031.flac")  # warm-up
        rss_loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stage_totals: dict[str, float] = {}
        wall = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            result = pipeline.transcribe(path)
            wall += time.perf_counter() - started
            for stage, t in result.timings_s.items():
                stage_totals[stage] = stage_totals.get(stage, 0.0) + t
    duration = result.duration_s
    return {
        "clip_s": round(duration, 1),
        "segments": len(result.segments),
        "rtf": wall / repeats / duration,
        "stage_rtf": {k: v / repeats / duration for k, v in stage_totals.items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_loaded_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_DIR, help="checkpoint folder (default: the bundled model)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=float, nargs="+", default=[3.0, 10.0, 600.0], metavar="S")
    parser.add_argument("--beam-size", type=int, help="beam search instead of greedy")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        repeats = 3 if args.child <= 30 else 1
        print(json.dumps(measure_one(args.model, args.child, args.threads, repeats, args.beam_size)))
        return

    results = []
    for seconds in args.lengths:
        cmd = [sys.executable, __file__, "--model", str(args.model), "--threads", str(args.threads)]
        cmd += ["--child", str(seconds)]
        if args.beam_size:
            cmd += ["--beam-size", str(args.beam_size)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    stages = ["decode", "preprocess", "vad", "asr", "decoding"]
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}"
    )
    print(
        "| clip | segments | RTF total | "
        + " | ".join(f"RTF {s}" for s in stages)
        + " | peak RSS | RSS after load |"
    )
    print("|---" * (len(stages) + 5) + "|")
    for r in results:
        cells = [f"{r['stage_rtf'][s]:.4f}" for s in stages]
        print(
            f"| {r['clip_s']} s | {r['segments']} | {r['rtf']:.4f} | " + " | ".join(cells)
            + f" | {r['peak_rss_mb']:.0f} MB | {r['rss_after_load_mb']:.0f} MB |"
        )  # fmt: skip


if __name__ == "__main__":
    main()
