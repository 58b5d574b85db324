"""Data-parallel training over several processes with torch.distributed.

The processes are started by torchrun (`voice-search train --nproc N` re-launches itself through
it), which gives each its rank in the environment. Every rank draws the same global batch from
identically seeded generators and takes its own contiguous share of it, so the global batch is
the configured batch size and the data a run sees does not depend on how many processes share
it. DistributedDataParallel averages the gradients; rank 0 alone writes files, logs and
evaluates. Backend: gloo on CPU, nccl on CUDA.
"""

import gc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from asr.errors import DataError

T = TypeVar("T")

COLLECTIVE_TIMEOUT = timedelta(minutes=30)
"""How long a rank waits in a collective. While rank 0 decodes the dev set and writes a
checkpoint, the others wait at the next gradient all-reduce: this must outlast that (nccl's
default is 10 minutes, gloo's 30)."""


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a data-parallel run: torchrun's RANK, LOCAL_RANK, WORLD_SIZE.

    The default (one process of one) is a plain run: nothing below talks to other processes.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Ranks":
        if "WORLD_SIZE" not in environ:
            return cls()
        return cls(int(environ["RANK"]), int(environ["LOCAL_RANK"]), int(environ["WORLD_SIZE"]))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, global_batch: int) -> slice:
        """This rank's examples of a global batch (`split_batch` has checked that it divides)."""
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def split_batch(batch_size: int, nproc: int) -> int:
    """Examples per process; refuses a batch that does not split evenly, since the ranks' mean
    losses average to the global batch's mean loss only when every rank holds as many examples."""
    if nproc < 1:
        raise DataError("the number of processes must be positive")
    if batch_size % nproc:
        raise DataError(
            f"--batch-size {batch_size} does not split evenly over --nproc {nproc} processes "
            f"(the global batch is shared out equally); pick a multiple of {nproc}"
        )
    return batch_size // nproc


@contextmanager
def process_group(ranks: Ranks, device: str) -> Iterator[None]:
    """Join the run's process group for the duration (nothing to join for a single process)."""
    if not ranks.distributed:
        yield
        return
    import torch.distributed as dist

    if device == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise DataError(
                f"rank {ranks.rank} wants GPU {ranks.local_rank}, but this machine has "
                f"{torch.cuda.device_count()}; use at most one process per GPU"
            )
        # "cuda" then means this rank's own GPU, for the model, the batches and nccl.
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
        # A rank that left while another was still at work died now and then at interpreter
        # exit ("terminate called without an active exception", gloo, seen here): collect
        # DDP's reducer, which holds the process group, while the process is whole, and leave
        # together.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def made_on_main(make: Callable[[], T], ranks: Ranks) -> T:
    """`make()` on rank 0 only (it writes files), its result handed to every rank."""
    if not ranks.distributed:
        return make()
    import torch.distributed as dist

    box: list[Any] = [make() if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


def gather_on_every_rank(value: T, ranks: Ranks) -> list[T]:
    """Every rank's `value`, in rank order."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(values: Sequence[float], ranks: Ranks, device: str) -> list[float]:
    """Element-wise sums over the ranks (float64: loss sums keep their digits)."""
    if not ranks.distributed:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def sum_tensor_over_ranks(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """A copy of `tensor` summed over the ranks, outside the autograd graph."""
    if not ranks.distributed:
        return tensor.detach()
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def data_parallel(module: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """`module` whose backward averages its gradients over the ranks (itself for one process)."""
    if not ranks.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: LayerDrop skips whole layers at random on each rank, and the
    # SpecAugment mask embedding sits idle while masking is off; DDP would otherwise wait for
    # their gradients forever. Parameters no rank used keep no gradient, as in a single process.
    return DistributedDataParallel(module, find_unused_parameters=True)
