"""Runs over several processes with PyTorch's own runtime: `torchrun --nproc-per-node N -m harness run SPEC`.

Every process ("rank") runs the same pipeline in the same order. A cached stage is looked up by rank 0, which tells
the others; a stage to build is built by all ranks together (`ArtifactCache.get_or_build`) and written by rank 0
alone, then every rank reads the same artifact. Inside a build, training loops wrap their model in DDP and each
rank computes its part of the same global batch (every rank draws the whole batch's randomness, so the batch is
the single-process one); sampling, encoding and embedding are split into contiguous shards and gathered in order.
A single process is a group of one, where all of this is the identity.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from harness.errors import UserError

log = logging.getLogger("harness")
T = TypeVar("T")
#: How long a rank waits for the others at a collective step before the run fails (a stage built by all ranks
#: together can take hours, but a rank never waits on another's build alone).
TIMEOUT = timedelta(hours=2)
#: How long a process waits for the others to join ($HARNESS_JOIN_SECONDS): a peer that never comes is an error.
JOIN_SECONDS = 300
_collectives: Any = None  # the process group of the run's collective steps (its timeout is TIMEOUT)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: rank `rank` of `world` (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Several ranks that are in step (not inside `map`'s work, where each rank is on its own)."""
        return self.world > 1 and not _apart

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes the cache and the run directory."""
        return self.rank == 0

    # ------------------------------------------------------------------------------------------ collective steps

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=_collectives)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value, group=_collectives)
        return out

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's `tensor` (same shape on all), on every rank."""
        if not self.active:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, group=_collectives)
        return total

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=_collectives)

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank failed (the first failure), so no rank goes on alone and waits forever
        for the others at its next collective step."""
        if not self.active:
            if error is not None:
                raise error
            return
        errors = self.gather(_picklable(error))
        failed = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error
        if failed is not None:
            raise failed

    # ------------------------------------------------------------------------------------------ sharding

    def shard(self, n: int, align: int = 1) -> range:
        """This rank's contiguous block of `n` items, cut at multiples of `align` (a generator's batch)."""
        units = -(-n // max(align, 1))
        bounds = np.linspace(0, units, self.world + 1).round().astype(int)
        return range(min(bounds[self.rank] * align, n), min(bounds[self.rank + 1] * align, n))

    @contextmanager
    def apart(self) -> Iterator[None]:
        """Inside, this rank works on its own: collective steps are the identity, and what it does in the cache it
        does as a single process would (the key's lock still holds)."""
        global _apart
        outer, _apart = _apart, True
        try:
            yield
        finally:
            _apart = outer

    def map(self, work: Callable[[range], T], n: int, align: int = 1) -> list[T]:
        """`work(block)` on each rank's block of `n` items; the results of the non-empty blocks in order, on every
        rank. A failure on any rank is raised on all.

        `work` must not itself wait for other ranks: the blocks differ in size, and some may be empty."""
        if not self.active:
            return [work(range(n))]  # a single process, or a rank already working on its own shard
        block = self.shard(n, align)
        try:
            with self.apart():
                result, error = (work(block) if len(block) else None), None
        except Exception as exc:
            result, error = None, exc
        gathered = self.gather((result, _picklable(error), len(block)))
        self.agree(error or next((e for _, e, _ in gathered if e is not None), None))
        return [r for r, _, size in gathered if size] or [work(block)]

    def batch_part(self, n: int) -> tuple[slice, float]:
        """This rank's rows of a global batch of `n`, and the weight that makes the mean of its loss count as its
        share of the global mean when DDP averages the gradients over the ranks."""
        if n < self.world:
            raise UserError(f"a training batch of {n} cannot be split over {self.world} processes; use a larger "
                            "batch size or fewer processes.")
        block = self.shard(n)
        return slice(block.start, block.stop), self.world * len(block) / n

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` as DDP trains it over the ranks (batch norms see the whole batch); itself in a single process."""
        if not self.active:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            _share_batch_norm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                   process_group=_collectives)


SINGLE = ProcessGroup()
_apart = False  # True while this rank works on its own (`ProcessGroup.apart`)
# torch.distributed.nn's all_reduce is the differentiable one; its suggested successor has no backward
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")


def join(device_name: str) -> tuple[ProcessGroup, str]:
    """This process's group: joined through torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a group of
    one. Returns the device each rank uses (`cuda:<local rank>` for a CUDA run)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE, device_name
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if local >= torch.cuda.device_count():
            raise UserError(f"{world} processes were started but this machine has {torch.cuda.device_count()} "
                            "GPUs; start at most one process per GPU.")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    global _collectives
    join_seconds = float(os.environ.get("HARNESS_JOIN_SECONDS", JOIN_SECONDS))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=join_seconds))
        _collectives = dist.new_group(timeout=TIMEOUT)
    except Exception as exc:  # the network or the backend, outside the harness
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise UserError(f"the {backend} process group did not start within {join_seconds:g} s ({first}); check "
                        "MASTER_ADDR/MASTER_PORT and that every process can reach the others.") from None
    log.info("rank %d of %d (%s backend)", rank, world, backend)
    return ProcessGroup(rank, world, local), f"cuda:{local}" if cuda else device_name


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _picklable(error: BaseException | None) -> BaseException | None:
    if error is None:
        return None
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__} on another rank: {error}")


class _SharedStatistics:
    """Batch norm whose training statistics span every rank's part of the batch, as one process's would (torch's
    SyncBatchNorm needs a GPU). Each rank's count, mean and squared deviations travel in one differentiable
    all_reduce (torch.distributed.nn's: gradients flow through the shared mean and variance too), and every rank
    pools them the same way (Chan et al.), so each layer waits for the others once forward and once backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable; the new API is not

        dims, channels = [0, *range(2, x.dim())], x.shape[1]
        shape = (1, channels, *[1] * (x.dim() - 2))
        own_mean = x.mean(dims)
        own = torch.cat([own_mean, (x - own_mean.view(shape)).pow(2).sum(dims),
                         x.new_tensor([x.numel() / channels])])
        rank, world = dist.get_rank(_collectives), dist.get_world_size(_collectives)
        # every rank's row of the table, filled in by the sum (the other rows are zeros: the sum is exact)
        table = all_reduce(torch.stack([own if r == rank else torch.zeros_like(own) for r in range(world)]),
                           group=_collectives)
        means, squares, counts = table[:, :channels], table[:, channels:-1], table[:, -1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (squares.sum(0) + (counts * (means - mean).pow(2)).sum(0)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


class _SharedBatchNorm2d(_SharedStatistics, nn.BatchNorm2d):
    pass


class _SharedBatchNorm3d(_SharedStatistics, nn.BatchNorm3d):
    pass


def _share_batch_norm(model: nn.Module) -> None:
    """Make every batch norm of `model` share its statistics over the ranks, in place (parameters and buffers
    stay)."""
    shared = {nn.BatchNorm2d: _SharedBatchNorm2d, nn.BatchNorm3d: _SharedBatchNorm3d}
    for module in model.modules():
        if type(module) in shared:
            if module.momentum is None:
                raise UserError("a model with cumulative batch norm (momentum None) cannot train over processes "
                                "on a CPU.")
            module.__class__ = shared[type(module)]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise UserError(f"{type(module).__name__} cannot train over processes on a CPU; run on GPUs or in "
                            "one process.")


def concat(parts: Sequence[T]) -> T:
    """Shards of a dataclass of arrays and tables (a `VideoSet`, `LatentSet`, `SampleSet`, ...) in order, as one."""
    first = parts[0]
    merged = {}
    for f in dataclasses.fields(first):
        values = [getattr(p, f.name) for p in parts]
        if isinstance(values[0], pd.DataFrame):
            merged[f.name] = pd.concat(values, ignore_index=True)
        else:
            merged[f.name] = np.concatenate([np.asarray(v) for v in values])
    return type(first)(**merged)
