"""Training end to end on a small budget: real clips, the tiny model, a few CPU steps."""

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asr.errors import DataError
from asr.model import Recognizer
from asr.training import DataSource, TrainConfig, encode_labels, export_model, train
from asr.training.config import PauseMeter
from asr.training.data import Example, Sampler
from asr.training.distill import Student
from tests.signals import REPO


def config(out: Path, data: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        out_dir=out, init="scratch:tiny", train=(DataSource(data),), dev=data, steps=steps, batch_size=2,
        lr=3e-3, warmup_steps=2, curriculum_steps=0, eval_every=10, eval_clips=2, device="cpu", seed=0,
    )  # fmt: skip


def test_loss_falls_and_a_checkpoint_resumes(tmp_path: Path, tiny_set: Path) -> None:
    torch.set_num_threads(2)
    first = train(config(tmp_path / "run", tiny_set, steps=30), log=lambda _: None)
    losses = [r["loss"] for r in first.history]
    assert len(losses) == 3
    assert losses[-1] < 0.6 * losses[0], losses
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()

    lines: list[str] = []
    resumed = train(config(tmp_path / "run", tiny_set, steps=40), log=lines.append)
    assert "resumed at step 30" in lines
    assert resumed.step == 40 and len(resumed.history) == 4
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20, 30, 40]
    assert {"loss", "lr", "dev_wer", "dev_cer", "dev_empty_ratio"} <= set(metrics[0])


def test_a_resume_under_another_learning_rate_is_refused(tmp_path: Path, tiny_set: Path) -> None:
    """The checkpoint's optimizer would keep the old rate: the new one would be silently ignored."""
    train(config(tmp_path / "run", tiny_set, steps=10), log=lambda _: None)
    with pytest.raises(DataError, match=r"started with --lr 0\.003 \(now 0\.001\)"):
        train(replace(config(tmp_path / "run", tiny_set, steps=20), lr=1e-3), log=lambda _: None)
    with pytest.raises(DataError, match=r"--weight-decay 0\.01 \(now 0\.1\)"):
        train(replace(config(tmp_path / "run", tiny_set, steps=20), weight_decay=0.1), log=lambda _: None)
    resumed = train(config(tmp_path / "run", tiny_set, steps=20), log=lambda _: None)
    assert resumed.step == 20


def test_same_seed_same_run(tmp_path: Path, tiny_set: Path) -> None:
    a = train(config(tmp_path / "a", tiny_set, steps=10), log=lambda _: None)
    b = train(config(tmp_path / "b", tiny_set, steps=10), log=lambda _: None)
    assert a.history[0]["loss"] == pytest.approx(b.history[0]["loss"], rel=1e-5)


def test_exported_model_is_fp16_and_loads_everywhere(tmp_path: Path, tiny_set: Path) -> None:
    from transformers import Wav2Vec2ForCTC, pipeline

    train(config(tmp_path / "run", tiny_set, steps=10), log=lambda _: None)
    out = export_model(tmp_path / "run" / "best", tmp_path / "export", card="# card\n")
    assert (out / "README.md").read_text() == "# card\n"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}
    model = Wav2Vec2ForCTC.from_pretrained(out)
    assert model.config.vocab_size == 30
    asr = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    result: Any = asr(np.zeros(16000, dtype=np.float32))
    assert isinstance(result["text"], str)
    assert Recognizer.from_pretrained(out, "cpu").version.startswith("export@")


def test_training_refuses_a_manifest_that_fails_the_check(tmp_path: Path, tiny_set: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"audio": "fsdd_7_george_0.flac", "text": "7"}) + "\n")
    with pytest.raises(DataError, match=r"line 1 \(unspelled-digits\)"):
        train(config(tmp_path / "run", bad, steps=2), log=lambda _: None)


def test_encode_labels_maps_spaces_to_the_delimiter(tiny_model_dir: Path) -> None:
    vocab = Recognizer.from_pretrained(tiny_model_dir, "cpu").vocab
    ids = encode_labels("Go up!", vocab)
    assert [vocab.tokens[i] for i in ids] == ["g", "o", "|", "u", "p"]


def test_data_source_parsing() -> None:
    assert DataSource.parse("a/train.jsonl:0.5") == DataSource(Path("a/train.jsonl"), 0.5)
    assert DataSource.parse("c:/x/train.jsonl") == DataSource(Path("c:/x/train.jsonl"))
    with pytest.raises(DataError):
        TrainConfig(out_dir=Path("x"), init="scratch:tiny", train=())


def test_curriculum_draws_only_short_clips_and_refuses_when_none_exist(
    tmp_path: Path, tiny_set: Path
) -> None:
    long_only = tmp_path / "long.jsonl"
    rows = [json.loads(line) | {"duration_s": 5.0} for line in tiny_set.read_text().splitlines()]
    long_only.write_text("\n".join(json.dumps(r) for r in rows))
    mixed = replace(config(tmp_path / "mixed", tiny_set, steps=2), curriculum_steps=2, curriculum_clip_s=2.0)
    mixed = replace(mixed, train=(DataSource(long_only), DataSource(tiny_set)))
    assert train(mixed, log=lambda _: None).step == 2  # the long-only source sits the curriculum out
    only_long = replace(mixed, out_dir=tmp_path / "long", train=(DataSource(long_only),))
    with pytest.raises(DataError, match=r"no training clip is at most 2\.0 s"):
        train(only_long, log=lambda _: None)


def test_length_buckets_group_clips_by_length_and_depend_only_on_the_step() -> None:
    clips = [Example(Path(f"{i}.flac"), [3], duration_s=float(i % 20) / 2 + 0.5) for i in range(400)]
    sampler = Sampler([clips], [1.0], seed=0)
    steps = [sampler.bucketed(8, None, step, buckets=6, seed=7) for step in range(12)]
    spread = [max(e.duration_s for e in b) - min(e.duration_s for e in b) for b in steps]
    random_spread = [
        max(e.duration_s for e in b) - min(e.duration_s for e in b)
        for b in (sampler.batch(8, None) for _ in range(12))
    ]
    assert np.mean(spread) < 0.5 * np.mean(random_spread)
    again = Sampler([clips], [1.0], seed=0)  # as a resumed run, with no saved bucket
    assert [e.path for e in again.bucketed(8, None, 9, buckets=6, seed=7)] == [e.path for e in steps[9]]
    group = sorted(
        (e.path for b in steps[:6] for e in b), key=str
    )  # one group: 6 batches of 8 distinct draws
    assert len(group) == 48
    with pytest.raises(DataError, match="length buckets"):
        TrainConfig(out_dir=Path("x"), init="scratch:tiny", train=(DataSource(Path("a")),), length_buckets=0)


class _InterruptedError(Exception):
    pass


def test_on_the_fly_augmentation_is_deterministic_and_survives_a_resume(
    tmp_path: Path, tiny_set: Path, shared_data: Path
) -> None:
    def augmented(out: Path) -> TrainConfig:
        return replace(
            config(out, tiny_set, 10), augment=1.0, shared_data=shared_data, eval_every=5, log_every=1
        )

    def prefetched(out: Path) -> TrainConfig:  # the loader three batches ahead when interrupted
        return replace(augmented(out), prefetch_batches=3)

    def stop_after_step_6(line: str) -> None:
        if line.startswith("step 7 "):  # the step-5 checkpoint is on disk by now
            raise _InterruptedError

    straight = train(augmented(tmp_path / "straight"), log=lambda _: None)
    with pytest.raises(_InterruptedError):
        train(augmented(tmp_path / "resumed"), log=stop_after_step_6)
    resumed = train(augmented(tmp_path / "resumed"), log=lambda _: None)
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-5)
    with pytest.raises(_InterruptedError):
        train(prefetched(tmp_path / "ahead"), log=stop_after_step_6)
    ahead = train(prefetched(tmp_path / "ahead"), log=lambda _: None)
    assert ahead.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-5)
    plain = train(replace(augmented(tmp_path / "plain"), augment=0.0), log=lambda _: None)
    assert plain.history[0]["loss"] != pytest.approx(straight.history[0]["loss"], rel=1e-3)
    with pytest.raises(DataError, match="between 0 and 1"):
        replace(config(tmp_path, tiny_set, 1), augment=1.5)


def test_distillation_adds_its_loss_and_resumes_with_its_projection(tmp_path: Path, tiny_set: Path) -> None:
    distilled = replace(
        config(tmp_path / "run", tiny_set, 10), distill_weight=1.0, distill_layer=1, eval_every=5
    )
    first = train(distilled, log=lambda _: None)
    assert all(r["distill_loss"] < 1.5 for r in first.history)  # L1 - cosine: below 1 + L1 scale
    assert first.history[-1]["distill_loss"] < first.history[0]["distill_loss"]
    saved = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=False)
    assert saved["projection"]["weight"].shape[0] == 384
    lines: list[str] = []
    train(replace(distilled, steps=20), log=lines.append)
    assert "resumed at step 10" in lines
    with pytest.raises(DataError, match="distill from one of them"):
        train(replace(distilled, out_dir=tmp_path / "deep", distill_layer=99), log=lambda _: None)


def test_loader_threads_and_the_audio_cache_do_not_change_what_is_heard(
    tmp_path: Path, tiny_set: Path, shared_data: Path
) -> None:
    base = replace(config(tmp_path / "one", tiny_set, 6), augment=1.0, shared_data=shared_data, eval_every=3)
    one = train(base, log=lambda _: None)
    many = train(
        replace(base, out_dir=tmp_path / "many", loader_threads=3, cache_audio_mb=10, prefetch_batches=2),
        log=lambda _: None,
    )
    assert [r["loss"] for r in many.history] == pytest.approx([r["loss"] for r in one.history], rel=1e-5)


def test_max_minutes_stops_with_a_checkpoint(tmp_path: Path, tiny_set: Path) -> None:
    lines: list[str] = []
    state = train(replace(config(tmp_path / "run", tiny_set, 1000), max_minutes=1e-6), log=lines.append)
    assert state.step == 1
    assert any(line.startswith("stopped at step 1") for line in lines)
    assert (tmp_path / "run" / "checkpoint" / "state.pt").is_file()


def test_max_minutes_counts_the_training_time_before_a_resume(tmp_path: Path, tiny_set: Path) -> None:
    """A run resumed from its checkpoint has only the time the earlier run left: it used to get a
    fresh `--max-minutes` at each resume, and its learning rate went back up."""
    first = train(config(tmp_path / "run", tiny_set, 2), log=lambda _: None)
    assert first.step == 2 and first.elapsed_s > 0
    most_of_it = 0.9 * first.elapsed_s / 60
    lines: list[str] = []
    resumed = train(
        replace(config(tmp_path / "run", tiny_set, 1000), max_minutes=most_of_it), log=lines.append
    )
    assert resumed.step == 3, lines  # the budget was spent before the resume: one step, then stop
    assert any(line.startswith("stopped at step 3") for line in lines)
    assert resumed.history[-1]["lr"] == pytest.approx(config(tmp_path, tiny_set, 1000).lr * 0.1)


STOPPABLE = """
import sys, time
from asr.training.config import PauseMeter, TrainingClock
clock = TrainingClock(max_minutes=1.0, pauses=PauseMeter(beat_s=0.05, min_gap_s=0.5))
with clock.pauses:
    print("ready", flush=True)
    sys.stdin.readline()  # the test stops and continues this process meanwhile
    time.sleep(0.3)  # beats after the continue: the late one has landed
    print(clock.pauses.paused_s(), clock.elapsed_s(), time.perf_counter() - clock.started, flush=True)
"""


def test_the_training_clock_leaves_out_the_time_a_process_spends_stopped() -> None:
    """A training run paused with SIGSTOP for a CI run used to lose that time from its budget,
    and its learning rate fell early."""
    child = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("\n")
        child.stdin.flush()
        paused, elapsed, wall = map(float, child.stdout.readline().split())
    finally:
        child.kill()
        child.wait()
    assert 1.5 < paused < 4.0
    assert elapsed == pytest.approx(wall - paused, abs=0.01)
    with PauseMeter() as meter:  # a process that runs on, at the default gap: nothing counted
        time.sleep(0.2)
    assert meter.paused_s() == 0.0


def test_a_step_with_a_non_finite_gradient_is_skipped(
    tmp_path: Path, tiny_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One NaN loss (bf16 overflow on a GPU did this) must not turn every weight into NaN."""
    real_forward = Student.forward
    calls = itertools.count()

    def every_third_loss_nan(self: Student, inputs: Any, labels: Any) -> Any:
        loss, distill = real_forward(self, inputs, labels)
        return (loss * float("nan") if next(calls) % 3 == 1 else loss), distill

    monkeypatch.setattr(Student, "forward", every_third_loss_nan)
    state = train(config(tmp_path / "run", tiny_set, steps=10), log=lambda _: None)
    assert state.skipped_steps == 3  # calls 1, 4 and 7
    assert state.history[-1]["skipped_steps"] == 3
    assert math.isfinite(state.history[-1]["loss"])
    saved = Recognizer.from_pretrained(tmp_path / "run" / "checkpoint", device="cpu")
    assert all(torch.isfinite(p).all() for p in saved._model.parameters())


def test_frozen_layers_stay_as_they_were_and_the_layers_above_learn(
    tmp_path: Path, tiny_set: Path, tiny_model_dir: Path
) -> None:
    """A retrain that freezes the lower layers changes only the top of the model."""
    run = replace(config(tmp_path / "run", tiny_set, steps=4), init=str(tiny_model_dir), freeze_layers=1)
    train(run, log=lambda _: None)
    before = Recognizer.from_pretrained(tiny_model_dir, device="cpu")._model.state_dict()
    after = Recognizer.from_pretrained(tmp_path / "run" / "checkpoint", device="cpu")._model.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    frozen = (
        "wav2vec2.feature_extractor.",
        "wav2vec2.feature_projection.",
        "wav2vec2.encoder.pos_conv_embed.",
        "wav2vec2.encoder.layers.0.",
    )
    assert not {name for name in moved if name.startswith(frozen)}
    assert any(name.startswith("wav2vec2.encoder.layers.1.") for name in moved)
    assert any(name.startswith("lm_head.") for name in moved)

    with pytest.raises(DataError, match="cannot freeze 3 layers: the model has 2"):
        train(replace(run, out_dir=tmp_path / "deep", freeze_layers=3), log=lambda _: None)
    with pytest.raises(DataError, match="frozen layer count"):
        replace(run, freeze_layers=-1)


def test_snapshots_are_kept_and_average_to_their_mean(tmp_path: Path, tiny_set: Path) -> None:
    from safetensors.torch import load_file

    from asr.training import average_models

    train(replace(config(tmp_path / "run", tiny_set, steps=30), keep_every=20), log=lambda _: None)
    snapshots = sorted((tmp_path / "run" / "steps").iterdir())
    assert [s.name for s in snapshots] == ["step-20"]  # 10 and 30 are evaluated, not multiples of 20
    train(replace(config(tmp_path / "run", tiny_set, steps=40), keep_every=20), log=lambda _: None)
    first, second = sorted((tmp_path / "run" / "steps").iterdir())
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert {t.dtype for t in a.values()} == {torch.float16}
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert moved  # forty steps of training changed the weights between the snapshots

    out = average_models([first, second], tmp_path / "avg")
    mean = load_file(out / "model.safetensors")
    for name in moved:
        assert torch.allclose(mean[name], (a[name].float() + b[name].float()) / 2)
    (emissions,) = Recognizer.from_pretrained(out, "cpu").log_probs([np.zeros(16000, dtype=np.float32)])
    assert emissions.log_probs.shape[0] > 0 and np.isfinite(emissions.log_probs).all()


def test_averaging_refuses_what_it_cannot_average(tmp_path: Path, tiny_model_dir: Path) -> None:
    from asr.model import create_model_dir
    from asr.training import average_models

    other_shape = create_model_dir(tmp_path / "small", shape="small", seed=0)
    with pytest.raises(DataError, match="at least two"):
        average_models([tiny_model_dir], tmp_path / "avg")
    with pytest.raises(DataError, match="not the same model shape"):
        average_models([tiny_model_dir, other_shape], tmp_path / "avg")
    with pytest.raises(DataError, match=r"no model\.safetensors"):
        average_models([tiny_model_dir, tmp_path / "small" / "nothing"], tmp_path / "avg")
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a model folder"):
        average_models([tiny_model_dir, tiny_model_dir], keep)
    assert (keep / "notes.txt").read_text() == "mine"


def test_a_negative_snapshot_interval_is_refused(tmp_path: Path, tiny_set: Path) -> None:
    with pytest.raises(DataError, match="snapshot interval"):
        replace(config(tmp_path / "run", tiny_set, steps=10), keep_every=-1)
