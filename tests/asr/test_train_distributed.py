"""Data-parallel training: `voice-search train --nproc 2` (torchrun, two CPU processes, gloo) is
the single-process run with the same global batch and seed, step for step, resume included."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asr.distributed import Ranks
from serving.cli import main
from tests.signals import SAMPLES_DIR

STEPS = 4
FIRST_LEG = 2
"""The two-process run stops here and is re-run to `STEPS`: the second leg resumes from the
checkpoint, so the comparison covers a resume too. The first leg's steps are all warm-up
(`--warmup-steps 2`), whose learning rate does not depend on `--steps`: both legs together
follow the single run's schedule."""
LOSS_REL = 1e-4
"""Not bit-exact: each rank pads its share of the batch to its own longest clip and reduces
over half the batch, and the single run uses this process's thread count, so kernels sum in
another order; the gradient mean over the ranks rounds differently too. That moves float32
results by about 1e-7 relative (measured); 1e-4 leaves room for a few Adam steps and still
catches a wrong split or gradient scale, which move the loss by percents."""
WEIGHT_ATOL = 1e-5
"""The same rounding reaches the weights through Adam (its update is about lr = 3e-3 in size)."""
STRAY_SHARE = 1e-3
"""Adam divides each gradient by its own running size, so an element whose gradient is at rounding
level gets a step of up to the learning rate either way: on an AVX2-only host 1 element of 1,024
(and 2 of 2,048) ended 2e-5 apart, with updates of 9e-3. So per tensor at most this share of the
elements may pass `WEIGHT_ATOL`, and none by more than `STRAY_OF_MOVE` of the largest update; a
wrong split or gradient moves most elements."""
STRAY_OF_MOVE = 0.01


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """The four sample clips (0.6 s to 3.3 s): different lengths, so the ranks pad differently."""
    rows = [json.loads(line) for line in (SAMPLES_DIR / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = str(SAMPLES_DIR / row["audio"])
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def model_without_dropout(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny model with dropout and LayerDrop off: train mode computes what eval mode does.

    Dropout masks come from each process's torch generator, and no split of one generator's
    draws over two processes reproduces the single process's masks; with them on, the two runs
    would differ by design. Augmentation stays on in the test: a clip's augmentation is seeded
    by its place in the global batch, not by the rank, so it must match exactly.
    """
    out = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((out / "config.json").read_text())
    config |= {key: 0.0 for key in config if key.endswith("dropout") or key == "layerdrop"}
    (out / "config.json").write_text(json.dumps(config))
    return out


def train_args(model: Path, corpus: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", "--init", str(model), "--train", str(corpus), "--out", str(out),
        "--steps", str(steps), "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "2",
        "--curriculum-steps", "0", "--eval-every", "1", "--device", "cpu", "--threads", "1",
        "--seed", "0", "--augment", "1.0", "--shared-data", str(out.parent / "no-shared-data"),
        "--no-track",
    ]  # fmt: skip


def without_threads(args: list[str]) -> list[str]:
    """For a run inside the test process, whose torch thread count `--threads` would change."""
    at = args.index("--threads")
    return args[:at] + args[at + 2 :]


def voice_search(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", *argv], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def step_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # one writer: rank 0
    return [float(r["loss"]) for r in records]


def test_two_processes_train_as_one_does(
    tmp_path: Path, corpus: Path, model_without_dropout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(without_threads(train_args(model_without_dropout, corpus, one, STEPS))) == 0  # in-process
    first = voice_search(*train_args(model_without_dropout, corpus, two, FIRST_LEG), "--nproc", "2")
    second = voice_search(*train_args(model_without_dropout, corpus, two, STEPS), "--nproc", "2")
    elapsed_s = time.perf_counter() - started

    assert f"resumed at step {FIRST_LEG}" in second.stderr.splitlines()
    # Only rank 0 reports: one summary line per launch.
    assert [json.loads(line)["step"] for line in first.stdout.splitlines()] == [FIRST_LEG]
    assert [json.loads(line)["step"] for line in second.stdout.splitlines()] == [STEPS]
    saved = torch.load(two / "checkpoint" / "state.pt", weights_only=False)
    assert len(saved["rank_generators"]) == 2
    assert json.loads((two / "config.json").read_text())["nproc"] == 2

    single, double = step_losses(one), step_losses(two)
    with capsys.disabled():  # the table shows with `pytest -s`; the runs' own output stays captured
        print(f"\nstep  1 process   2 processes   ({elapsed_s:.1f} s for the three runs)")
        for step, (a, b) in enumerate(zip(single, double, strict=True), start=1):
            print(f"{step:4d}  {a:.7f}  {b:.7f}")
    assert double == pytest.approx(single, rel=LOSS_REL)

    weights_one = load_file(str(one / "checkpoint" / "model.safetensors"))
    weights_two = load_file(str(two / "checkpoint" / "model.safetensors"))
    initial = load_file(str(model_without_dropout / "model.safetensors"))
    assert weights_two.keys() == weights_one.keys()
    moved = max(float((weights_one[k] - initial[k]).abs().max()) for k in initial)
    assert moved > 100 * WEIGHT_ATOL  # it trained: the comparison means something
    for name, tensor in weights_one.items():
        apart = (weights_two[name] - tensor).abs()
        strays = int((apart > WEIGHT_ATOL).sum())
        assert strays <= STRAY_SHARE * tensor.numel(), f"{name}: {strays} of {tensor.numel()} elements apart"
        assert float(apart.max()) <= STRAY_OF_MOVE * moved, f"{name}: {float(apart.max()):.2e} apart"


def test_a_batch_that_does_not_split_is_refused_before_anything_starts(
    tmp_path: Path, corpus: Path, model_without_dropout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = train_args(model_without_dropout, corpus, tmp_path / "run", 1)
    args[args.index("--batch-size") + 1] = "3"
    assert main([*without_threads(args), "--nproc", "2"]) == 2
    assert "--batch-size 3 does not split evenly over --nproc 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ranks_share_the_global_batch_in_order() -> None:
    shares = [Ranks(rank, rank, 3).share(6) for rank in range(3)]
    assert [list(range(6))[s] for s in shares] == [[0, 1], [2, 3], [4, 5]]
    assert Ranks.from_env({}) == Ranks()
    assert Ranks.from_env({"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}) == Ranks(1, 0, 2)
