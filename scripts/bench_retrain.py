"""Benchmark: a retrain that adapts to a shifted vocabulary, export -> fine-tune -> gate -> register.

200 voice searches for places the catalog has never had are synthesized (the corpus's training
voices), sent to a real server that keeps audio, and corrected by their "users" (strong labels).
Then `voice-search retrain` runs as users would run it, against golden sets frozen from the
project's dev sets, and this script reports its wall and CPU time, the challenger's and champion's
WER on the held-out new items, and every golden set's change.

    .venv/bin/python scripts/bench_retrain.py --out var/bench-retrain      # needs corpus/ built
    .venv/bin/python scripts/bench_retrain.py --out var/bench-retrain-2 -- --new-weight 0.5

Pause other training while it runs: the CPU time is the figure, but wall time is reported too.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.corpus.datasets import freeze_golden, golden_sets
from asr.corpus.tts import Voice, all_engines
from serving.local_server import running_server
from serving.settings import REPO_ROOT
from serving.simulation.scenarios import NEW_PLACES

TEMPLATES = ("{}", "weather in {}", "hotels in {}", "flights to {}", "things to do in {}", "directions to {}",
             "what time is it in {}", "tell me about {}")  # fmt: skip
VOICES = {
    "espeak": ("en-us+m1", "en-us+m2", "en-us+m3", "en-us+f2", "en-us+f4"),
    "flite": ("kal", "awb", "slt"),
    "festival": ("kal_diphone",),
    "hibari": ("heart",),
}
GOLDEN = {
    "synthetic_dev": "dev.jsonl",
    "commands": "real_dev_speech_commands_dev.jsonl",
    "fsdd": "real_dev_fsdd.jsonl",
    "an4": "real_dev_an4_sample.jsonl",
    "speechocean": "real_dev_speechocean762_train.jsonl",
    "arctic": "real_dev_cathy_arctic.jsonl",
}
TOKEN = "bench-retrain"


def synthesize(out: Path, count: int, seed: int) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    engines = all_engines()
    voices = [(e, v) for e, names in VOICES.items() if engines[e].available() for v in names]
    clips = []
    (out / "queries").mkdir(parents=True, exist_ok=True)
    for n in range(count):
        text = rng.choice(TEMPLATES).format(rng.choice(NEW_PLACES))
        engine, name = rng.choice(voices)
        voice = Voice(engine, name, rate=rng.uniform(0.9, 1.1), pitch=rng.uniform(0.9, 1.1))
        samples, rate = engines[engine].synthesize(text, voice)
        path = out / "queries" / f"{n:04d}.flac"
        sf.write(path, np.asarray(samples, dtype=np.float32), rate)
        clips.append((path, text))
    return clips


def freeze(golden_dir: Path, corpus: Path, max_clips: int) -> list[str]:
    for name, manifest in GOLDEN.items():
        if not (golden_dir / name).exists() and (corpus / manifest).is_file():
            freeze_golden(corpus / manifest, name, golden_dir, max_clips=max_clips)
    return [g.ref for g in golden_sets(golden_dir)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "bench-retrain")
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "corpus")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--golden-clips", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("retrain_args", nargs="*", help="after --: more `voice-search retrain` flags")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    golden = freeze(out / "golden", args.corpus.resolve(), args.golden_clips)
    clips = synthesize(out, args.queries, args.seed)

    env = {"mlflow_dir": str(out / "mlflow"), "golden_dir": str(out / "golden"), "retain_audio": "true",
           "admin_token": TOKEN, "bias_decoding": "false"}  # fmt: skip
    with running_server(out / "state", **env) as server:
        for n, (path, text) in enumerate(clips):
            files = {"file": (path.name, path.read_bytes(), "audio/flac")}
            answer = httpx.post(
                server.url + "/v1/search", files=files, data={"session_id": f"u{n}"}, timeout=60
            )
            answer.raise_for_status()
            correction = {
                "request_id": answer.headers["x-request-id"],
                "kind": "correction",
                "corrected_text": text,
            }
            httpx.post(server.url + "/v1/feedback", json=correction, timeout=10).raise_for_status()
        db_path = server.db_path

    child_env = {f"VOICE_SEARCH_{k.upper()}": v for k, v in env.items()} | {
        "VOICE_SEARCH_DB_PATH": str(db_path)
    }
    command = [sys.executable, "-m", "serving.cli", "retrain", "--since", "1d", "--out", str(out / "retrain"),
               "--steps", str(args.steps), "--threads", str(args.threads),
               "--seed", str(args.seed), *args.retrain_args]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=os.environ | child_env,
                          capture_output=True, text=True)  # fmt: skip
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    (out / "retrain.log").write_text(done.stderr)
    report = json.loads((out / "retrain" / "report.json").read_text())
    scores = {
        s["name"]: (s["champion"]["overall"]["wer"], s["challenger"]["overall"]["wer"])
        for s in report["scores"]
    }
    result = {
        "queries": len(clips), "steps": report["steps"], "exit_code": done.returncode,
        "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
        "train_s": report["train_s"], "evaluate_s": report["evaluate_s"],
        "wer_champion_vs_challenger": scores, "passed": report["decision"]["passed"],
        "reasons": report["decision"]["reasons"], "registered": report["registered"], "golden_sets": golden,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
