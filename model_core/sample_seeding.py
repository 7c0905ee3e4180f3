"""Random draws seeded per training sample, not per batch.

A sample is named by (seed, micro-step, position in the global batch). Every draw made for it,
augmentation, latent-posterior noise, diffusion noise and timestep, condition dropout and the
masks of the modules' own dropout layers, comes from generators seeded by that name alone. So
the draws do not depend on which loader worker built the sample, on how many processes share
the batch (`distributed`: each rank holds a slice of it) or on whether the run was resumed:
world size 2 computes the same loss as world size 1, and a resumed run replays the
uninterrupted one.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType

import numpy as np
import torch
from torch import nn

# Independent streams of one sample: what the trainer draws, and what its dropout layers draw.
TRAINER_STREAM = 0
DROPOUT_STREAM = 1
AUGMENTATION_STREAM = 2
BATCH_STREAM = 3  # draws shared by the whole global batch


def sample_seed(seed: int, micro_step: int, position: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, micro_step, position, stream]).generate_state(1, np.uint64)[0] >> 1)


def augmentation_rng(seed: int, micro_step: int, position: int) -> np.random.Generator:
    return np.random.default_rng([seed, micro_step, position, AUGMENTATION_STREAM])


class SampleDraws:
    """The trainer's draws for the samples at `positions` of micro-step `micro_step`'s batch.

    Each method draws one value (or tensor) per sample, on the CPU so every device gets the
    same numbers, and returns them stacked on `device`."""

    def __init__(self, seed: int, micro_step: int, positions: list[int], device: torch.device):
        self.seed, self.micro_step, self.positions, self.device = seed, micro_step, list(positions), device
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, micro_step, p, TRAINER_STREAM)) for p in positions]
        # One draw shared by the whole global batch (the reference's per-batch condition dropout).
        self.batch_generator = torch.Generator().manual_seed(sample_seed(seed, micro_step, 0, BATCH_STREAM))

    def __len__(self) -> int:
        return len(self.positions)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g) for g in self.generators]).to(self.device)

    def batch_rand(self) -> torch.Tensor:
        """One draw for the whole global batch, the same on every rank, repeated per sample."""
        return torch.rand(1, generator=self.batch_generator).expand(len(self)).to(self.device)


@contextmanager
def sample_seeded_dropout(modules: list[nn.Module], seed: int, micro_step: int, positions: list[int]):
    """Inside, every active dropout layer of `modules` draws row i of its mask from sample i's
    own generator (on the input's device), in the order the layers run; outside, they are
    torch's again. A row-per-sample forward pass makes the same masks whatever the batch holds."""
    generators: dict[torch.device, list[torch.Generator]] = {}

    def sample_generators(device: torch.device) -> list[torch.Generator]:
        if device not in generators:
            generators[device] = [
                torch.Generator(device=device).manual_seed(sample_seed(seed, micro_step, p, DROPOUT_STREAM)) for p in positions
            ]
        return generators[device]

    def per_sample_forward(layer: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        if not layer.training or layer.p == 0:
            return x
        if len(x) != len(positions):
            raise ValueError(f"dropout input has {len(x)} rows for {len(positions)} samples")
        keep = 1.0 - layer.p
        masks = [torch.rand(x.shape[1:], generator=g, device=x.device) < keep for g in sample_generators(x.device)]
        return x * torch.stack(masks).to(x.dtype) / keep

    layers = [m for module in modules if module is not None for m in module.modules() if isinstance(m, nn.Dropout)]
    for layer in layers:
        layer.forward = MethodType(per_sample_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
