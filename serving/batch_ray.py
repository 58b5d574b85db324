"""Batch transcription on Ray Data: `voice-search transcribe PATHS... --ray [ADDRESS]`.

The files become a Ray dataset of `(index, path)` rows; a pool of `workers` actors, each with its
own pipeline (one torch thread, one CPU), transcribes them batch by batch, and the results come
back in input order (`preserve_order`), so that the CLI writes them with the same writer as a
plain run. A file that fails comes back as its `AudioError`, never failing the batch.

Ray runs locally (started here, no dashboard, `workers` CPUs) or on an existing cluster
(`address`: "auto", "HOST:PORT" or "ray://HOST:10001"), whose nodes must hold this package and
the model folder at the same paths. Only the CLI imports this module, and only for `--ray`.
"""

import logging
import math
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import ray
import ray.data
import ray.exceptions
import ray.util.client

from asr.errors import AudioError
from asr.pipeline import Pipeline, Transcript

BATCH_FILES = 4
"""Files per actor call (and per Ray block): few, so that the actors share a batch evenly and
rows stream out early; a clip of the small model takes tens of milliseconds on one thread."""
ADDRESS_PATTERN = re.compile(r"auto|local|[a-z][a-z0-9+.-]*://.+|[^\s:/]+:\d+")
"""What `--ray` accepts as a cluster: Ray's own "auto", "local", a URL or HOST:PORT."""

Outcome = Transcript | AudioError


class PipelineFactory(Protocol):
    """Builds the pipeline inside each actor (a `functools.partial` of `build_pipeline`)."""

    def __call__(self, *, threads: int | None = None) -> Pipeline: ...


class RayBatchError(Exception):
    """Ray could not start, reach the cluster, or run the batch (e.g. an actor failed to load
    the model); the CLI reports it in one line."""


def is_address(text: str) -> bool:
    """Whether `text` looks like a Ray address rather than an input path."""
    return ADDRESS_PATTERN.fullmatch(text) is not None


class TranscribeBatch:
    """The Ray Data callable class: one pipeline per actor, built once, used for every batch."""

    def __init__(self, build: PipelineFactory, cwd: str) -> None:
        import torch  # in the actor's process only

        # The caller's relative paths, read as the plain CLI reads them and named the same in
        # errors: Ray starts its workers elsewhere, and an actor's process is its own.
        os.chdir(cwd)

        from serving.runtime import limit_allocator_caching

        torch.set_num_threads(1)  # one CPU per actor: more threads only contend with the others
        limit_allocator_caching()
        _quiet_transformers()
        self.pipeline = build(threads=1)

    def __call__(self, batch: dict[str, npt.NDArray[np.object_]]) -> dict[str, npt.NDArray[np.object_]]:
        # One file per call (a transcript or its AudioError), as the plain CLI does.
        outcomes = [pickle.dumps(self.pipeline.transcribe_many([Path(p)])[0]) for p in batch["path"]]
        return {"index": batch["index"], "outcome": np.array(outcomes, dtype=object)}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class RaySession:
    """A connection to Ray for the length of a `with` block. It starts a local Ray (when
    `address` is None) or connects to a cluster, and shuts down only what it started: a Ray
    already initialized in this process (a notebook, a test) is used as it is."""

    def __init__(self, address: str | None, workers: int, verbose: bool = False) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.address, self.workers, self.verbose = address, workers, verbose
        self._started = False

    def __enter__(self) -> "RaySession":
        if ray.is_initialized():
            return self
        level = logging.INFO if self.verbose else logging.ERROR
        try:
            # The workers' own output reaches this terminal only with --verbose: an actor's
            # failure comes back as the file's error or a RayBatchError either way.
            if self.address is None:
                # "local": a Ray of its own even where `ray start` runs a cluster on this machine.
                ray.init(address="local", num_cpus=self.workers, include_dashboard=False,
                         logging_level=level, log_to_driver=self.verbose)  # fmt: skip
            else:
                ray.init(address=self.address, logging_level=level, log_to_driver=self.verbose)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            if self.address is None:
                raise RayBatchError(f"cannot start a local Ray: {e}") from e
            raise RayBatchError(
                f"cannot reach {self.address}: {e} (a cluster with token authentication also needs "
                "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token)"
            ) from e
        self._started = True
        logging.getLogger("ray.data").setLevel(level)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            ray.shutdown()
            self._started = False

    def transcribe(self, paths: Sequence[Path], build: PipelineFactory) -> Iterator[tuple[Path, Outcome]]:
        """Each path with its transcript or error, in input order, as the actors finish them."""
        if not paths:
            return
        args = ([str(p) for p in paths], build, self.workers, str(Path.cwd()))
        rows: list[tuple[int, bytes]] | Iterator[tuple[int, bytes]]
        if ray.util.client.ray.is_connected():  # type: ignore[no-untyped-call]
            # A Ray Client process is not a cluster node, and Ray Data's executor must run on one:
            # a task on the cluster drives the dataset. Ray Client cannot stream a task's results,
            # so the rows come back together at the end.
            rows = ray.get(_drive_on_cluster.remote(*args))
        else:
            rows = _ordered_rows(*args)
        expected = 0
        try:
            for index, blob in rows:
                if index != expected:  # preserve_order guarantees it; a wrong row would mislabel
                    raise RayBatchError(f"Ray returned file {index} where {expected} was due")
                expected += 1
                outcome: Outcome = pickle.loads(blob)  # bytes of our own actors
                yield paths[index], outcome
        except ray.exceptions.RayError as e:
            raise RayBatchError(f"the Ray batch failed: {_reason(e)}") from e


def _ordered_rows(
    paths: Sequence[str], build: PipelineFactory, workers: int, cwd: str
) -> Iterator[tuple[int, bytes]]:
    """`(index, pickled outcome)` per file, in input order; runs where Ray Data can execute: in a
    process that is part of the cluster (this one, or the task of `_drive_on_cluster`). The actors
    read relative paths from `cwd`, the caller's working directory."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the CLI draws its own
    items = [{"index": i, "path": p} for i, p in enumerate(paths)]
    dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / BATCH_FILES))
    results = dataset.map_batches(
        TranscribeBatch,
        fn_constructor_args=(build, cwd),
        batch_size=BATCH_FILES,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),  # = concurrency=workers
        num_cpus=1,
    )
    for row in results.iter_rows():
        yield int(row["index"]), row["outcome"]


@ray.remote(num_cpus=0)  # it only waits on the actors, which hold the CPUs
def _drive_on_cluster(
    paths: Sequence[str], build: PipelineFactory, workers: int, cwd: str
) -> list[tuple[int, bytes]]:
    return list(_ordered_rows(paths, build, workers, cwd))


def _reason(error: BaseException) -> str:
    """One line on why Ray failed: the actor's own exception where Ray carries it."""
    cause = getattr(error, "cause", None)
    shown = cause if isinstance(cause, BaseException) else error
    lines = [line.strip() for line in str(shown).splitlines() if line.strip()]
    return f"{type(shown).__name__}: {lines[0]}" if lines else type(shown).__name__
