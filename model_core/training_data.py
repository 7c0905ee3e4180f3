"""Training data: a pairs CSV read and checked, and its pairs turned into the tensors both stages
train on (stage 2 with its augmentations, `augmentation`), in seeded batches.

A pairs CSV has the columns `source_image,target_image,target_pose`, paths relative to the
CSV. Each pair shows one person and garment in two poses: the model learns to turn the
source photo into the target photo given the target's keypoints. The CSV and its files are read
through a `training_files.TrainingFiles` (local disk by default; an object store such as S3,
where paths must lie below the CSV's folder: `training_files.object_path_problem`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .augmentation import Augmentation, PairView
from .errors import InputError
from .images import PHOTO_FILL, SKELETON_FILL, decode_image, pil_to_tensor
from .keypoints import parse_keypoints
from .pipeline_fpdm import FPDMPipeline
from .training_files import LOCAL_FILES, MAX_KEY_BYTES, TrainingFiles, object_path_problem

PAIR_COLUMNS = ("source_image", "target_image", "target_pose")


@dataclass(frozen=True)
class Pair:
    """Paths on local disk; URIs (str) for a CSV in an object store."""

    source_image: Path | str
    target_image: Path | str
    target_pose: Path | str


def read_pairs(csv_path: str | Path, files: TrainingFiles | None = None) -> list[Pair]:
    """Read and check a pairs CSV: every column present, every file there (on an object store,
    checked against one listing of the CSV's folder)."""
    files = files or LOCAL_FILES
    csv_path = Path(csv_path) if files.is_local(csv_path) else str(csv_path)
    try:
        data = io.BytesIO(files.read_bytes(csv_path))
    except InputError as exc:
        raise InputError(str(exc).replace(": cannot read (", ": cannot read pairs CSV (", 1)) from None
    try:
        table = pd.read_csv(data, dtype=str, skipinitialspace=True, encoding="utf-8-sig").dropna(how="all")
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{csv_path}: cannot read pairs CSV ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{csv_path}: pairs CSV is missing column(s) {', '.join(missing)} (needs {','.join(PAIR_COLUMNS)})")
    locate = _pair_file_locator(files, csv_path)
    pairs, problems = [], []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):  # row 1 is the header
        paths = {}
        for column in PAIR_COLUMNS:
            value = getattr(row, column)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"row {row_number}: {column} is empty")
                continue
            path, problem = locate(value.strip())
            if problem:
                problems.append(f"row {row_number}: {column} {value.strip()!r} {problem}")
            paths[column] = path
        if len(paths) == len(PAIR_COLUMNS):
            pairs.append(Pair(**paths))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"{csv_path}: {shown}")
    if not pairs:
        raise InputError(f"{csv_path}: pairs CSV has no rows")
    return pairs


def _pair_file_locator(files: TrainingFiles, csv_path: Path | str):
    """A function from a CSV cell to (the file's location, why it cannot be used or None)."""
    if files.is_local(csv_path):

        def locate_local(value: str) -> tuple[Path, str | None]:
            path = (Path(csv_path).parent / value).resolve()
            return path, None if path.is_file() else "not found"

        return locate_local

    folder = files.parent(csv_path)
    present: set[str] | None = None

    def locate_object(value: str) -> tuple[str, str | None]:
        nonlocal present
        location = files.join(folder, value)
        problem = object_path_problem(value)
        if problem is None and len(location.split("://", 1)[1].partition("/")[2].encode()) > MAX_KEY_BYTES:
            problem = f"is longer than an object key may be ({MAX_KEY_BYTES} bytes)"
        if problem:
            return location, problem
        if present is None:  # one listing, not a request per file
            present = set(files.list_files(folder))
        return location, None if location in present else "not found"

    return locate_object


def read_image(files: TrainingFiles, location: Path | str):
    """A photo of a pair, as a PIL image."""
    return decode_image(files.read_bytes(location), str(location))


def read_pose(files: TrainingFiles, location: Path | str, default_size: tuple[int, int]):
    """A target pose file of a pair (see keypoints.read_keypoints for `default_size`)."""
    return parse_keypoints(files.read_bytes(location), str(location), default_size=default_size)


class PairTensors:
    """Turns pairs into the tensors both stages train on, in the model's geometry; with an
    `augmentation`, each visit of a pair is augmented afresh with draws from the caller's generator.

    Small sets (the ones trained on CPU, where decoding would dominate) are kept in memory
    once decoded (as tensors, or as fitted pictures when each visit is augmented); a
    DeepFashion-sized set would not fit, so larger sets are decoded per visit.
    """

    CACHE_LIMIT = 2048  # pairs; at 512x352 that is about 20 GB of float32 tensors

    def __init__(
        self,
        pairs: list[Pair],
        pipe: FPDMPipeline,
        augmentation: Augmentation | None = None,
        files: TrainingFiles | None = None,
    ):
        self.pairs = pairs
        self.files = files or LOCAL_FILES
        self.pipe = pipe
        self.augmentation = None if augmentation is None or augmentation.is_off else augmentation
        self._cache: dict[int, object] | None = {} if len(pairs) <= self.CACHE_LIMIT else None

    def __len__(self) -> int:
        return len(self.pairs)

    def item(self, index: int, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.augmentation is None:
            return self._remembered(index, lambda: self._tensors(self.view(index)))
        if rng is None:
            raise ValueError("PairTensors with an augmentation needs a generator for its draws")
        return self._tensors(self.augmentation.apply(self._remembered(index, lambda: self.view(index)), rng))

    def batch(self, indices: list[int], device: torch.device, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        items = [self.item(i, rng) for i in indices]
        return {key: torch.stack([item[key] for item in items]).to(device) for key in items[0]}

    def view(self, index: int) -> PairView:
        """Pair `index` in the model's frame, before any augmentation."""
        pair, geometry = self.pairs[index], self.pipe.geometry
        source, target = read_image(self.files, pair.source_image), read_image(self.files, pair.target_image)
        # The target photo's size is the canvas of pose files that state none (DeepFashion .txt).
        keypoints = read_pose(self.files, pair.target_pose, default_size=target.size)
        return PairView(geometry.photo(source), geometry.photo(target), geometry.keypoints(keypoints))

    def _remembered(self, index: int, make):
        if self._cache is None:
            return make()
        if index not in self._cache:
            self._cache[index] = make()
        return self._cache[index]

    def _tensors(self, view: PairView) -> dict[str, torch.Tensor]:
        pipe = self.pipe
        skeleton = pipe.geometry.skeleton(view.keypoints)
        tensors = {
            "target": pil_to_tensor(view.target) * 2 - 1,  # the VAE takes [-1, 1]
            "skeleton": pil_to_tensor(skeleton),  # the pose embedding takes [0, 1]
            "source_encoder_pixels": pipe.source_encoder_pixels(view.source),
        }
        if pipe.fusion is not None:
            tensors["source_clip"] = pipe.clip_pixels(view.source, PHOTO_FILL)
            tensors["target_clip"] = pipe.clip_pixels(view.target, PHOTO_FILL)
            tensors["pose_clip"] = pipe.clip_pixels(skeleton, SKELETON_FILL)
        return tensors


def batch_indices(step: int, dataset_size: int, batch_size: int, seed: int) -> list[int]:
    """The pairs of optimiser (micro-)step `step`: a seeded permutation per epoch, so that a
    resumed run sees exactly the batches the uninterrupted run would have."""
    batches_per_epoch = max(1, dataset_size // batch_size)
    epoch, position = divmod(step, batches_per_epoch)
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[position * batch_size : (position + 1) * batch_size]
