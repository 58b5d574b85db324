"""`voice-search transcribe --ray` on a real local Ray (2 actors), against the plain CLI.

How the outputs are compared: CSV carries no timings, so its files must be byte-identical (text is
written by the same writer from the same transcripts, and is not run again here).
JSONL rows carry `timings_s` (wall time per stage, different every run): each row is parsed, that
field alone is dropped, and the row is dumped again in its own key order, so every other byte of
the line is compared exactly; error rows have no timings and are compared as raw lines.

The plain reference runs with one torch thread, as each Ray actor does: the model's float sums
depend on the number of intra-op threads, and with two threads the unrounded segment and word
confidences in JSONL differ in their last digits (texts and rounded fields do not).

Ray starts twice in this module, which costs seconds: once inside a `voice-search` process (the
command's own local start, its exit code and stderr), and once here for the in-process runs, which
the command then uses as it is.
"""

import contextlib
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import torch

from serving.cli import EXIT_SOME_FAILED, EXIT_USAGE, main
from serving.cli.transcribe import transcribe_inputs
from tests.signals import REPO, SAMPLES_DIR

pytestmark = pytest.mark.filterwarnings(
    # Ray Data sets its own deprecated options when it copies its context (not ours to fix).
    "ignore::DeprecationWarning:ray.data.context"
)

MANIFEST = SAMPLES_DIR / "manifest.jsonl"
"""The four real sample clips, as a manifest: the inputs through the manifest path."""


@dataclass(frozen=True)
class Run:
    code: int
    output: str
    stderr: str

    def reports(self) -> list[str]:
        """The command's own stderr lines (not Ray's)."""
        return [line for line in self.stderr.splitlines() if line.startswith("voice-search:")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The manifest, then a missing path, a text file named .wav and an empty .flac."""
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "notes.wav").write_text("this is not audio\n" * 10)
    (folder / "empty.flac").touch()
    return [str(MANIFEST), str(folder / "missing.wav"), str(folder / "notes.wav"), str(folder / "empty.flac")]


def _in_process(argv: list[str], output: Path) -> Run:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main([*argv, "--output", str(output), "--quiet"])
    return Run(code, output.read_text(encoding="utf-8"), stderr.getvalue())


@pytest.fixture(scope="module")
def plain(
    inputs: list[str], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Run]:
    """The plain CLI's output in each format, with one torch thread (see the module docstring)."""
    folder = tmp_path_factory.mktemp("plain")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            fmt: _in_process(
                ["transcribe", *inputs, "--model", str(tiny_model_dir), "--format", fmt], folder / fmt
            )
            for fmt in ("jsonl", "csv")
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_process(inputs: list[str], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`voice-search transcribe ... --ray --ray-workers 2 --format jsonl` as its own process:
    the command starts (and stops) its own local Ray."""
    target = tmp_path_factory.mktemp("ray") / "out.jsonl"
    exe = Path(sys.executable).with_name("voice-search")
    done = subprocess.run(
        [str(exe), "transcribe", *inputs, "--model", str(tiny_model_dir), "--format", "jsonl",
         "--output", str(target), "--quiet", "--ray", "--ray-workers", "2"],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    return Run(done.returncode, target.read_text(encoding="utf-8") if target.exists() else "", done.stderr)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray with 2 CPUs for the in-process runs; the command finds it running and keeps it."""
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


def _without_timings(jsonl: str) -> list[str]:
    rows = []
    for line in jsonl.splitlines():
        row = json.loads(line)
        if "error" in row:
            rows.append(line)  # no timings: the raw line
        else:
            assert set(row["timings_s"]) == {"decode", "preprocess", "vad", "asr", "decoding"}
            del row["timings_s"]
            rows.append(json.dumps(row))
    return rows


def test_the_manifest_stands_for_its_clips_in_order() -> None:
    names = [p.name for p in transcribe_inputs([str(MANIFEST), str(SAMPLES_DIR / "arctic_a0001.flac")])]
    assert names == [
        "arctic_a0001.flac",
        "arctic_a0031.flac",
        "fsdd_7_george_0.flac",
        "speech_commands_yes_022cd682.flac",
    ]  # the repeated file is dropped


def test_jsonl_from_a_ray_process_matches_the_plain_cli(plain: dict[str, Run], ray_process: Run) -> None:
    reference = plain["jsonl"]
    assert reference.code == EXIT_SOME_FAILED
    assert ray_process.code == EXIT_SOME_FAILED, ray_process.stderr
    assert _without_timings(ray_process.output) == _without_timings(reference.output)
    rows = [json.loads(line) for line in ray_process.output.splitlines()]
    assert [Path(r["path"]).name for r in rows] == [
        "arctic_a0001.flac",
        "arctic_a0031.flac",
        "fsdd_7_george_0.flac",
        "speech_commands_yes_022cd682.flac",
        "missing.wav",
        "notes.wav",
        "empty.flac",
    ]
    assert [r["error"]["type"] for r in rows[4:]] == [
        "UndecodableAudioError",
        "UndecodableAudioError",
        "EmptyAudioError",
    ]
    # The same report per failed file and the same summary, in the same order; no traceback.
    assert ray_process.reports() == reference.reports()
    assert ray_process.reports()[-1] == "voice-search: 3 of 7 files failed"
    assert "Traceback" not in ray_process.stderr


@pytest.mark.usefixtures("local_ray")
def test_csv_on_ray_is_byte_identical(
    plain: dict[str, Run], inputs: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    argv = [
        "transcribe",
        *inputs,
        "--model",
        str(tiny_model_dir),
        "--format",
        "csv",
        "--ray",
        "--ray-workers",
        "2",
    ]
    run = _in_process(argv, tmp_path / "out.csv")
    assert run.code == plain["csv"].code == EXIT_SOME_FAILED
    assert run.output == plain["csv"].output
    assert run.output.count("\n") == 8  # the header and one row per input
    assert run.reports() == plain["csv"].reports()
    assert ray.is_initialized()  # a Ray it did not start is left running


def test_a_path_after_ray_is_refused_without_starting_ray(tiny_model_dir: Path) -> None:
    stderr = io.StringIO()
    sample = str(SAMPLES_DIR / "arctic_a0001.flac")
    with contextlib.redirect_stderr(stderr):
        code = main(["transcribe", "--model", str(tiny_model_dir), "--ray", sample, sample])
    assert code == EXIT_USAGE
    assert "put --ray after the paths" in stderr.getvalue()
