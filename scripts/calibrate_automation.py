"""Calibrate the `partial` automation threshold on labelled dev data (issue 15).

In `partial` automation the model answers when its confidence is at least a threshold and a person
answers otherwise. This runs the recognizer over labelled clips (the real dev speakers of
../shared/data, and the corpus's held-out-voice test queries when a corpus is built), and for
every threshold reports the precision of what the model would answer (its transcript exactly
right) and the share routed to people. It picks the lowest threshold whose precision reaches
`--target-precision`, or says that none does.

    .venv/bin/python scripts/calibrate_automation.py [--limit 100] [--target-precision 0.9] \\
        [--json .cache/calibration.json] [--plot .cache/calibration.png]
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from asr.corpus.real import dev_entries
from asr.manifest import read_manifest
from asr.pipeline import build_pipeline
from asr.text import normalize_text
from serving.runtime import limit_allocator_caching
from serving.settings import DEFAULT_MODEL_DIR, DEFAULT_SHARED_DATA, REPO_ROOT

THRESHOLDS = np.round(np.linspace(0.0, 1.0, 41), 3)


def labelled_clips(shared: Path, corpus: Path, limit: int) -> list[tuple[Path, str, str]]:
    """(audio, reference text, set) for the dev speakers' speech and, if built, the test queries."""
    rng = np.random.default_rng(0)
    clips: list[tuple[Path, str, str]] = []
    for name, all_entries in sorted(dev_entries(shared).items()):
        entries = [e for e in all_entries if e.text]
        chosen = sorted(rng.choice(len(entries), min(limit, len(entries)), replace=False))
        clips += [(entries[k].audio, entries[k].text, name) for k in chosen]
    if (corpus / "test.jsonl").is_file():
        queries = [e for e in read_manifest(corpus / "test.jsonl") if e.fields.get("source") == "query"][
            :limit
        ]
        clips += [(e.audio, e.text, "queries") for e in queries]
    return clips


def curve(confidences: np.ndarray, correct: np.ndarray) -> list[dict[str, float | None]]:
    rows = []
    for threshold in THRESHOLDS:
        answered = confidences >= threshold
        precision = float(correct[answered].mean()) if answered.any() else None
        rows.append(
            {"threshold": float(threshold), "precision": precision, "to_people": float(1 - answered.mean())}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED_DATA)
    parser.add_argument("--corpus", type=Path, default=REPO_ROOT / "corpus")
    parser.add_argument("--limit", type=int, default=100, help="clips per set")
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    limit_allocator_caching()
    pipeline = build_pipeline(args.model, device="cpu")
    clips = labelled_clips(args.shared_data, args.corpus, args.limit)
    confidences, correct, sets = [], [], []
    for audio, text, name in clips:
        transcript = pipeline.transcribe(audio)
        confidences.append(transcript.confidence)
        correct.append(normalize_text(transcript.text) == normalize_text(text))
        sets.append(name)
    conf, right = np.array(confidences), np.array(correct)
    rows = curve(conf, right)
    reachable = [r for r in rows if r["precision"] is not None and r["precision"] >= args.target_precision]
    chosen = reachable[0] if reachable else None
    result: dict[str, Any] = {
        "model": str(args.model),
        "clips": len(clips),
        "overall_exact": float(right.mean()),
        "by_set": {
            s: {
                "clips": int(sum(1 for x in sets if x == s)),
                "exact": float(np.mean([c for c, x in zip(right, sets, strict=True) if x == s])),
            }
            for s in sorted(set(sets))
        },
        "target_precision": args.target_precision,
        "chosen": chosen,
        "curve": rows,
    }
    if chosen is None:
        message = f"no threshold reaches precision {args.target_precision}: partial automation would send"
        print(message + " every request to people with this model", file=sys.stderr)
    if args.plot:
        _plot(rows, args.plot, args.target_precision)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))


def _plot(rows: list[dict[str, float | None]], out: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = [float(r["threshold"] or 0) for r in rows]
    precision = [np.nan if r["precision"] is None else float(r["precision"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(thresholds, precision, label="precision of the model's answers")
    ax.plot(thresholds, [float(r["to_people"] or 0) for r in rows], label="share routed to people")
    ax.axhline(target, color="#d32f2f", linestyle="--", label=f"target precision {target}")
    ax.set_xlabel("confidence threshold")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="center right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
