"""Training batches built in loader worker processes (torch.utils.data), so that decoding,
fitting to the model's frame, skeleton rendering and the augmentations overlap the training
step instead of running between steps on the main thread.

Item k of `MicroBatches` is this rank's share of optimiser micro-step k's global batch
(`training_data.batch_indices`, `distributed.rank_positions`). Everything random in it is
seeded by (seed, micro-step, position in the global batch) (`sample_seeding`), so a batch is
the same whichever worker builds it, with any number of workers or ranks, and a resumed run,
whose loader starts at its first undone micro-step, replays the uninterrupted one.

`PairTensors`' in-memory cache of small sets lives in each process: every worker fills its
own, so a cached set is decoded once per worker (not once) and held once per worker in RAM.
For the sets it applies to (at most `PairTensors.CACHE_LIMIT` pairs) that is seconds of
decoding and, at the demo's 64x48, megabytes; a DeepFashion-sized set is not cached at all.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from .distributed import World, rank_positions
from .images import pil_to_tensor
from .sample_seeding import augmentation_rng
from .training_data import PairTensors, batch_indices, read_image
from .training_files import LOCAL_FILES, TrainingFiles

MAX_DEFAULT_WORKERS = 4


def default_loader_workers(world: World | None = None) -> int:
    """Loader workers per training process: one core stays with the process's own training step
    (torch's intra-op threads) and the rest decode, up to MAX_DEFAULT_WORKERS. A process with
    two cores or fewer builds its batches itself: a worker would take half the cores the step
    computes on (measured: docs/measurements.md, "Loader workers")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // (world.local_size if world is not None else 1)
    return 0 if per_process <= 2 else min(MAX_DEFAULT_WORKERS, per_process - 1)


class MicroBatches(Dataset):
    """Item k: this rank's share of micro-step k's global batch of pairs, as CPU tensors, with
    `positions` (the samples' places in the global batch, for `sample_seeding`)."""

    def __init__(self, data: PairTensors, batch_size: int, seed: int, world: World):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.positions = list(rank_positions(batch_size, world))

    def __getitem__(self, micro_step: int) -> dict[str, torch.Tensor]:
        indices = batch_indices(micro_step, len(self.data), self.batch_size, self.seed)
        augmented = self.data.augmentation is not None
        items = [
            self.data.item(indices[p], augmentation_rng(self.seed, micro_step, p) if augmented else None) for p in self.positions
        ]
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        batch["positions"] = torch.tensor(self.positions)
        return batch


class PhotoBatches(Dataset):
    """Item k: this rank's share of micro-step k's global batch of photos (the autoencoder's
    training data), fitted to the model's frame, in [-1, 1]."""

    def __init__(self, photos: list, geometry, batch_size: int, seed: int, world: World, files: TrainingFiles | None = None):
        self.photos, self.geometry, self.batch_size, self.seed = photos, geometry, batch_size, seed
        self.files = files or LOCAL_FILES
        self.positions = list(rank_positions(batch_size, world))
        self._cache: dict[int, torch.Tensor] | None = {} if len(photos) <= 2 * PairTensors.CACHE_LIMIT else None

    def photo(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        tensor = pil_to_tensor(self.geometry.photo(read_image(self.files, self.photos[index]))) * 2 - 1
        if self._cache is not None:
            self._cache[index] = tensor
        return tensor

    def __getitem__(self, micro_step: int) -> dict[str, torch.Tensor]:
        indices = batch_indices(micro_step, len(self.photos), self.batch_size, self.seed)
        return {
            "photos": torch.stack([self.photo(indices[p]) for p in self.positions]),
            "positions": torch.tensor(self.positions),
        }


def micro_batch_loader(dataset: Dataset, first: int, end: int, workers: int, device: torch.device) -> DataLoader:
    """Micro-steps first..end-1 of `dataset`, in order, built by `workers` processes (0: by this
    one). Workers start from this process (fork on Linux), so they do not reload the model."""
    return DataLoader(
        dataset,
        batch_size=None,  # an item is already a batch
        sampler=range(first, end),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        pin_memory=device.type == "cuda",
        # The loader's own seed (for workers' global RNGs, which nothing here draws from) must not
        # consume the trainers' global torch RNG.
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items() if key != "positions"}
