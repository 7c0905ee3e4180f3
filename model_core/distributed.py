"""Training in several processes (torchrun + DistributedDataParallel), defined for any world size.

Launched as `torchrun --nproc-per-node N -m fpdm_cli.main train ...`, each process finds
torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins the
process group: gloo on the CPU, nccl on CUDA, each rank on the GPU of its LOCAL_RANK. Without
them (or with WORLD_SIZE 1) training runs in one process exactly as before.

What does not change with the world size, so a run's recipe is the same on 1 CPU or N GPUs:
- the batch: `--batch-size` is the GLOBAL batch of one optimiser micro-step; rank r takes its
  contiguous share of the same global batch (`rank_positions`), so steps, epochs and the
  learning-rate schedule are those of one process;
- the data order: every rank computes the same `batch_indices` and keeps its slice;
- the random draws: seeded per global sample (`sample_seeding`), not per process;
- the gradient: each rank's loss is weighted by its share of the batch (`share`) before DDP
  averages, so the update is that of the global batch's mean loss, also when the batch does
  not divide by the world size; stage 1's contrastive loss needs every rank's embeddings and
  gathers them (`gather_rows`).
Only rank 0 writes the log, checkpoints and the final model. Checkpoints hold the unwrapped
modules and their optimiser state, so a run saved by N ranks resumes with any other number.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import InputError
from .pipeline_fpdm import resolve_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process group was started here, and is ended here

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(device: str = "auto") -> World:
    """The world this process trains in: torchrun's when its variables say so, else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    torch_device = resolve_device(device)
    if torch_device.type == "cuda":
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    owns_group = not dist.is_initialized()
    if owns_group:
        # An hour, not the default ten minutes: the other ranks wait at a barrier while rank 0
        # uploads a checkpoint (gigabytes to S3) or draws a sample grid.
        dist.init_process_group(
            "nccl" if torch_device.type == "cuda" else "gloo", init_method="env://", timeout=datetime.timedelta(hours=1)
        )
    return World(rank, size, local_rank, local_size, torch_device, owns_group)


def leave(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def joined(device: str = "auto"):
    world = join(device)
    try:
        yield world
    finally:
        leave(world)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


@contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (it may write: start or truncate the log), then the others
    (which must only read); nobody leaves before all have run it."""
    if not world.is_main:
        barrier(world)
    yield
    if world.is_main:
        barrier(world)
    barrier(world)


def check_batch(world: World, batch_size: int) -> None:
    if batch_size < world.size:
        raise InputError(f"--batch-size {batch_size} is the global batch: it needs at least one pair per process ({world.size})")


def rank_positions(batch_size: int, world: World) -> range:
    """Rank `world.rank`'s positions in a global batch: contiguous shares, the first
    `batch_size % size` ranks one larger."""
    base, extra = divmod(batch_size, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (1 if world.rank < extra else 0))


def share(world: World, local: int, total: int) -> float:
    """The factor on a rank's mean loss over its `local` samples that makes DDP's average of the
    ranks' gradients the gradient of the mean over all `total`."""
    return local * world.size / total


class TrainableParts(nn.Module):
    """The trainable modules as one, so one DDP wrapper synchronises all their gradients. Its
    forward runs the given function: the loss is computed by the trainer, through the pipe."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.parts = nn.ModuleList(modules)

    def forward(self, compute):
        return compute()


class Trainer:
    """Runs a trainer's forward pass through DDP when there are several processes."""

    def __init__(self, modules: list[nn.Module], world: World):
        self.world = world
        self.ddp = None
        if world.distributed:
            device_ids = [world.device.index] if world.device.type == "cuda" else None
            # No buffers to keep in step (GroupNorm, no BatchNorm): skip their broadcast.
            self.ddp = DistributedDataParallel(TrainableParts(modules), device_ids=device_ids, broadcast_buffers=False)

    def __call__(self, compute):
        return compute() if self.ddp is None else self.ddp(compute)

    def accumulating(self, last_micro_step: bool):
        """Gradients are exchanged once per optimiser step, at its last micro-step."""
        return self.ddp.no_sync() if self.ddp is not None and not last_micro_step else nullcontext()


def all_sum(world: World, value: float) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return float(tensor.item())


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, in rank order, with gradients flowing back to each rank's own rows:
    every rank computes the same loss of all rows, so a row's gradient is summed over ranks
    (and DDP's average then makes it the one-process gradient)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: tuple[int, ...], rank: int):
        ctx.sizes, ctx.rank = sizes, rank
        longest = max(sizes)
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
        padded[: len(local)] = local
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded.contiguous())
        return torch.cat([rows[:n] for rows, n in zip(gathered, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_rows(world: World, local: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The global batch's rows of a per-sample tensor whose local rows are this rank's share."""
    if not world.distributed:
        return local
    sizes = tuple(len(rank_positions(batch_size, World(rank=r, size=world.size))) for r in range(world.size))
    return _GatherRows.apply(local, sizes, world.rank)
