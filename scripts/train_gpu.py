"""Train a larger model on a lent GPU: one prepared call of at most 10 minutes.

A lent machine reaches nothing and gets only the working tree (64 MiB) and what `carry` names,
so everything it needs is packed here first, and what comes back (at most 8 files of 16 MiB)
is unpacked here:

    # here: real speech whole, then synthetic until the budget, as Opus in one zip, plus the
    # wheels the device image lacks and (--init) the start model in fp16; the tree and the pack
    # must travel in 64 MiB together
    .venv/bin/python scripts/train_gpu.py pack --out .gpu --budget-mib 30 --level 0.98 \
      --source corpus/real_train.jsonl:1 --source corpus/train.jsonl:0.5 --init runs/wctc-b/best
    # there: one device `run` with carry [".gpu"]: `bash scripts/gpu_run.sh` (two runs side by
    # side, then `unpack --run a|b` here), or one run:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/wheels/*.whl \
      && PYTHONPATH=/tmp/site:. python3 scripts/train_gpu.py train --pack .gpu --out $OUT --minutes 8
    # here: fp16 shards back into a model folder with our tokenizer, then evaluate it
    .venv/bin/python scripts/train_gpu.py unpack --files FILES_AT --out runs/gpu-medium/model

`train` runs the project's own training loop (asr/training/) on CUDA, with loader threads, a
thread that loads batches ahead of the model, and decoded clips cached in memory; it stops itself
after --minutes (the learning rate decays to that deadline) and writes the model as fp16
safetensors shards of at most 16 MiB plus its metrics. It runs on the CPU too (tests).

For the Whisper-front-end model (asr/whisper_ctc.py) the GPU does the heavy front half as well:
with --augment-on-device the loader only slices cached PCM and pads it, and the device applies
speed, gain and noise to the padded batch (asr/device_augment.py) and computes the log-mel and
SpecAugment inside the model; --length-buckets groups clips of similar lengths, so large batches
compute little padding. `scripts/gpu_run.sh` is that call, with nvidia-smi sampling the GPU's
utilization.

Learnt on an H200 (2026-11-30, docs/benchmarks.md): under bf16 autocast a gradient went
non-finite within the first steps on clips past 2 s and, applied, made every weight NaN; the loop
now skips such steps, and --fp32 trains as fast (the GPU sat at 7-21% busy: the CPU side bounds
these small models, which is why two runs can share one GPU side by side).
"""

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DEVICE_WHEELS = ("soundfile", "cffi", "pycparser", "soxr", "jiwer", "rapidfuzz", "click")
"""What asr.training imports that the device image (Python 3.12, torch, transformers, numpy, scipy)
lacks; versions come from requirements.lock."""
SHARD = "16MB"
"""The largest file a device call returns is 16 MiB; transformers counts in decimal megabytes."""
OPUS_COMPRESSION = 0.9
"""libsndfile's Opus level; 0.9 is about 32 kbit/s, as speechocean762 ships (its clips train fine)."""
KEPT_FIELDS = ("label", "speaker", "set")
"""The fields a packed row keeps besides audio, text and duration: the data check reads the
`_silence_` label, and the rest names slices. All of them cost 6 MiB of the budget."""
AUDIO_ZIP = "audio.zip"
DEFAULT_SOURCES = ("corpus/real_train.jsonl:1", "corpus/train.jsonl:0.3")


def pack(
    sources: list[str],
    out: Path,
    budget_mib: float,
    max_clip_s: float,
    seed: int,
    wheels: bool,
    level: float = OPUS_COMPRESSION,
) -> dict[str, Any]:
    """Re-encode the sources' clips as Opus into `out` and write one manifest per source plus
    `sources.json` with their weights. Sources are packed in the order given, each shuffled, until
    the budget is spent: the one that matters most (real speakers) goes first and is packed whole."""
    from concurrent.futures import ThreadPoolExecutor

    import soundfile as sf

    from asr.audio import SAMPLE_RATE_HZ, load_audio
    from asr.manifest import read_manifest
    from asr.training import DataSource

    shutil.rmtree(out, ignore_errors=True)
    (out / "audio").mkdir(parents=True)
    parsed = [DataSource.parse(s) for s in sources]
    rng = np.random.default_rng(seed)
    todo = []
    for index, source in enumerate(parsed):
        entries = [
            e for e in read_manifest(source.manifest) if float(e.fields.get("duration_s") or 0) <= max_clip_s
        ]
        todo += [(index, entries[i]) for i in rng.permutation(len(entries))]

    def encode(n: int) -> tuple[str, float]:
        name = f"audio/{n:06d}.opus"
        samples = load_audio(todo[n][1].audio).samples
        sf.write(out / name, samples, SAMPLE_RATE_HZ, format="OGG", subtype="OPUS", compression_level=level)
        return name, round(len(samples) / SAMPLE_RATE_HZ, 3)

    budget = budget_mib * 2**20
    rows: list[list[dict[str, Any]]] = [[] for _ in parsed]
    spent = 0
    with ThreadPoolExecutor(2) as pool:  # libsndfile and soxr release the GIL

        def encoded() -> Iterator[tuple[int, tuple[str, float]]]:
            for start in range(0, len(todo), 64):  # in chunks, so that a full budget stops the encoding
                chunk = range(start, min(start + 64, len(todo)))
                yield from zip(chunk, pool.map(encode, chunk), strict=True)

        for n, (name, duration_s) in encoded():
            size = (out / name).stat().st_size
            if spent + size > budget:
                break
            spent += size
            index, entry = todo[n]
            kept = {k: v for k, v in entry.fields.items() if k in KEPT_FIELDS}
            rows[index].append(kept | {"audio": name, "text": entry.text, "duration_s": duration_s})
    store_clips(out, sum(map(len, rows)))
    listing = []
    for source, chosen in zip(parsed, rows, strict=True):
        manifest = f"{source.manifest.stem}.jsonl"
        (out / manifest).write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
        hours = sum(r["duration_s"] for r in chosen) / 3600
        listing.append(
            {"manifest": manifest, "weight": source.weight, "clips": len(chosen), "hours": round(hours, 2)}
        )
    (out / "sources.json").write_text(json.dumps(listing, indent=1))
    if wheels:
        download_wheels(out / "wheels")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"sources": listing, "audio_mib": round(spent / 2**20, 1), "pack_mib": round(size / 2**20, 1)}


def store_clips(out: Path, count: int) -> None:
    """The first `count` clips into one uncompressed zip (those past it were encoded ahead of the
    budget's end). The tree travels file by file at about 1 KiB each besides the data, which on
    12,000 short clips was 9 MiB of the 64; a zip member costs about 100 bytes."""
    with zipfile.ZipFile(out / AUDIO_ZIP, "w", zipfile.ZIP_STORED) as archive:
        for n in range(count):
            archive.write(out / "audio" / f"{n:06d}.opus", f"audio/{n:06d}.opus")
    shutil.rmtree(out / "audio")


def unpack_clips(pack_dir: Path) -> None:
    """The clips out of the pack's zip, where its manifests expect them (once)."""
    if not (pack_dir / "audio").is_dir():
        with zipfile.ZipFile(pack_dir / AUDIO_ZIP) as archive:
            archive.extractall(pack_dir)


def download_wheels(folder: Path) -> None:
    """cp312 manylinux wheels of DEVICE_WHEELS at the lock's versions (the device's Python)."""
    from serving.doctor import LOCK_FILE, read_lock

    pins = read_lock(LOCK_FILE)
    platforms = [f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_17", "manylinux2014")]
    for name in DEVICE_WHEELS:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version=3.12", "--implementation=cp", *platforms, "--dest", str(folder),
             f"{name}=={pins[name].version}"],
            check=True,
        )  # fmt: skip


def train_on_device(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from asr.training import BEST, CHECKPOINT, METRICS, DataSource, TrainConfig, train

    listing = json.loads((args.pack / "sources.json").read_text())
    unpack_clips(args.pack)
    run_dir = args.run_dir
    config = TrainConfig(
        out_dir=run_dir,
        init=args.init or f"scratch:{args.shape}",
        train=tuple(DataSource(args.pack / s["manifest"], s["weight"]) for s in listing if s["clips"]),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        curriculum_steps=args.curriculum_steps,
        max_clip_s=args.max_clip_s,
        eval_every=args.checkpoint_every,
        augment=args.augment,
        loader_threads=args.loader_threads,
        prefetch_batches=args.prefetch,
        cache_audio_mb=args.cache_audio_mb,
        max_minutes=args.minutes,
        amp=not args.fp32,
        freeze_feature_encoder=args.freeze_feature_encoder,
        seed=args.seed,
        augment_on_device=args.augment_on_device,
        head_lr=args.head_lr,
        length_buckets=args.length_buckets,
        mask_time_prob=args.mask_time_prob,
        mask_feature_prob=args.mask_feature_prob,
    )
    state = train(config, log=lambda line: print(line, flush=True))
    trained = run_dir / (BEST if (run_dir / BEST).is_dir() else CHECKPOINT)
    from asr.model import load_ctc_model

    model = load_ctc_model(trained).half()
    model.save_pretrained(args.out / "model", max_shard_size=SHARD)
    shutil.copy(run_dir / METRICS, args.out / METRICS)
    summary = {
        "step": state.step,
        "elapsed_s": round(state.elapsed_s, 1),
        "skipped_steps": state.skipped_steps,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "parameters": sum(p.numel() for p in model.parameters()),
        "files": sorted(str(p.relative_to(args.out)) for p in args.out.rglob("*") if p.is_file()),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def unpack(files: Path, out: Path, run: str | None = None) -> Path:
    """A model folder from the returned shards: config, weights, and our tokenizer and features.
    With `run` (scripts/gpu_run.sh's layout): the weights from `files/RUN/` and the rest of the
    model folder from `meta.tgz`."""
    import tarfile

    from asr.model import Recognizer, write_processor
    from asr.whisper_ctc import MODEL_TYPE

    shutil.rmtree(out, ignore_errors=True)
    if run is None:
        shutil.copytree(files / "model", out)
    else:
        out.mkdir(parents=True)
        with tarfile.open(files / "meta.tgz") as archive:
            for member in archive.getmembers():
                source = (
                    archive.extractfile(member) if Path(member.name).parent == Path(f"o{run}/model") else None
                )
                if source is not None:  # a regular file of that run's model folder
                    (out / Path(member.name).name).write_bytes(source.read())
        for weights in (files / run).glob("*.safetensors"):
            shutil.copy(weights, out / weights.name)
    # The Whisper family reads raw samples (it makes its own log-mel); wav2vec2 normalized ones.
    family = json.loads((out / "config.json").read_text()).get("model_type")
    write_processor(out, raw_samples=family == MODEL_TYPE)
    Recognizer.from_pretrained(out, device="cpu")  # proves it loads
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack", help="corpus as Opus + device wheels, within the budget")
    packer.add_argument(
        "--source", action="append", help=f"MANIFEST[:WEIGHT] (default: {' '.join(DEFAULT_SOURCES)})"
    )
    packer.add_argument("--out", type=Path, default=Path(".gpu"))
    packer.add_argument(
        "--budget-mib", type=float, default=50.0, help="audio budget (the tree travels in 64 MiB)"
    )
    packer.add_argument("--max-clip-s", type=float, default=6.0)
    packer.add_argument("--seed", type=int, default=0)
    packer.add_argument(
        "--level", type=float, default=OPUS_COMPRESSION, help="libsndfile Opus level (0.98: about 13 kbit/s)"
    )
    packer.add_argument("--no-wheels", action="store_true", help="skip downloading the device wheels")
    packer.add_argument("--init", type=Path, help="a start model, packed as fp16 into init/ (gpu_run.sh's)")

    trainer = commands.add_parser("train", help="train from a pack (on the device; CPU works too)")
    trainer.add_argument("--pack", type=Path, default=Path(".gpu"))
    trainer.add_argument("--out", type=Path, required=True, help="where the returned files go ($OUT)")
    trainer.add_argument("--run-dir", type=Path, default=Path("/tmp/gpu-run"))
    trainer.add_argument("--shape", default="medium")
    trainer.add_argument("--init", help="start from this model folder instead of scratch:SHAPE")
    trainer.add_argument("--minutes", type=float, default=8.0)
    trainer.add_argument("--steps", type=int, default=12000)
    trainer.add_argument("--batch-size", type=int, default=64)
    trainer.add_argument("--lr", type=float, default=1.5e-3)
    trainer.add_argument("--warmup-steps", type=int, default=500)
    trainer.add_argument("--curriculum-steps", type=int, default=1000)
    trainer.add_argument("--max-clip-s", type=float, default=6.0)
    trainer.add_argument("--checkpoint-every", type=int, default=1000)
    trainer.add_argument("--augment", type=float, default=0.8)
    trainer.add_argument("--loader-threads", type=int, default=12)
    trainer.add_argument("--cache-audio-mb", type=int, default=8000)
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    trainer.add_argument(
        "--freeze-feature-encoder", action="store_true", help="keep the conv stack (a transplant's front end)"
    )
    trainer.add_argument("--prefetch", type=int, default=4, help="batches loaded ahead of the model")
    trainer.add_argument(
        "--augment-on-device", action="store_true", help="augment batched on the GPU; the loader only reads"
    )
    trainer.add_argument("--head-lr", type=float, help="the CTC head's learning rate (default: --lr)")
    trainer.add_argument("--length-buckets", type=int, default=1, help="batches grouped by clip length")
    trainer.add_argument("--mask-time-prob", type=float, default=0.0, help="SpecAugment time masking")
    trainer.add_argument("--mask-feature-prob", type=float, default=0.0, help="SpecAugment frequency masking")

    unpacker = commands.add_parser("unpack", help="returned shards -> a model folder here")
    unpacker.add_argument("--files", type=Path, required=True, help="the device call's files_at folder")
    unpacker.add_argument("--out", type=Path, required=True)
    unpacker.add_argument("--run", help="a run of scripts/gpu_run.sh (a or b)")
    args = parser.parse_args()

    if args.command == "pack":
        sources = args.source or list(DEFAULT_SOURCES)
        report = pack(
            sources,
            args.out,
            args.budget_mib,
            args.max_clip_s,
            args.seed,
            wheels=not args.no_wheels,
            level=args.level,
        )
        if args.init:
            from asr.training import export_model

            export_model(args.init, args.out / "init")
            report["init_mib"] = round(
                sum(f.stat().st_size for f in (args.out / "init").iterdir()) / 2**20, 1
            )
        print(json.dumps(report, indent=1))
    elif args.command == "train":
        args.out.mkdir(parents=True, exist_ok=True)
        print(json.dumps(train_on_device(args), indent=1))
    else:
        print(unpack(args.files, args.out, args.run))


if __name__ == "__main__":
    main()
