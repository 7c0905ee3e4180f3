"""The largest sampling batch that fits a CUDA device, from a measured memory footprint.

Sampling memory grows linearly with the batch: the weights, the encoders' work on a source and
the library workspaces are paid once (fixed); the latents, the UNet's activations for the three
guidance branches and the VAE decode are paid per image. Two real sampling calls on the device,
at batch 1 and 2 (one step, after a warm-up call), measure both by their peak allocated bytes:

    per_image = peak(2) - peak(1)        fixed = peak(1) - per_image

The peaks include everything allocated when they are taken, the loaded model among it, so
`fixed` counts the weights. The memory sampling may use is what the driver has free
(torch.cuda.mem_get_info) plus what PyTorch's allocator already holds (its reserved pool, the
weights among it); the largest batch is

    floor((SAFETY_FRACTION x (free + reserved) - fixed) / per_image), between 1 and MAX_AUTO_BATCH

The safety fraction leaves room for what the linear model does not see: fragmentation of the
allocator's pool, kernels that pick larger workspaces at larger batches, a CUDA context that
grows. A batch that still runs out of memory is split by the run (pipeline.execution).

A measurement takes seconds on a GPU and depends only on the model, resolution, dtype, device
and torch version, so it is cached by those (a JSON file per key in a folder the caller names);
a damaged file counts as absent and is measured again.

On any device other than CUDA there is no device memory to measure: `auto` is the caller's
default batch size, and the returned reason says so.

The CUDA parts (cuda_peak_bytes, auto_batch_size's CUDA branch) have not run on a GPU yet: no GPU
machine has been available. Everything else here runs in tests on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .keypoints import NUM_KEYPOINTS, Keypoints

SAFETY_FRACTION = 0.85
MAX_AUTO_BATCH = 64
# The batch sizes measured; a change to how the measurement is taken bumps the version, so that
# cached footprints measured the old way are measured again.
MEASURED_BATCHES = (1, 2)
MEASUREMENT_VERSION = 1
CACHE_FOLDER = "batch-memory"


@dataclass(frozen=True)
class Footprint:
    fixed_bytes: int  # paid once per sampling call (weights included)
    per_image_bytes: int  # added by each image of the batch


@dataclass(frozen=True)
class BatchSizeChoice:
    size: int
    reason: str  # how the size was chosen, for the plan, the run summary and the log


# A function that runs `work` (one sampling call, returning its images) and returns the peak of
# memory allocated while it ran, in bytes.
PeakBytes = Callable[[Callable[[], torch.Tensor]], int]


def footprint_from_peaks(peaks: dict[int, int]) -> Footprint:
    """The linear footprint through the peaks measured at two batch sizes."""
    (small, small_peak), (large, large_peak) = sorted(peaks.items())
    per_image = (large_peak - small_peak) // (large - small)
    if per_image <= 0:
        raise ValueError(f"batch {large} peaked at no more memory than batch {small} ({large_peak} <= {small_peak} bytes)")
    return Footprint(fixed_bytes=small_peak - small * per_image, per_image_bytes=per_image)


def largest_batch(
    footprint: Footprint,
    free_bytes: int,
    reserved_bytes: int,
    safety_fraction: float = SAFETY_FRACTION,
    cap: int = MAX_AUTO_BATCH,
) -> int:
    """The largest batch whose footprint fits `safety_fraction` of the memory sampling may use:
    the driver's free memory and the allocator's reserved pool (which holds the weights that
    `fixed_bytes` counts). At least 1 (a batch that does not fit is the out-of-memory split's
    to handle), at most `cap`."""
    usable = safety_fraction * (free_bytes + reserved_bytes)
    fitting = math.floor((usable - footprint.fixed_bytes) / footprint.per_image_bytes)
    return max(1, min(cap, fitting))


def measure_footprint(pipe, peak_bytes: PeakBytes) -> Footprint:
    """Sample as a catalog run does (three guidance branches when the model has stage 1, one
    step, images returned as a tensor on the device) at each of MEASURED_BATCHES, after one
    unmeasured call that lets kernels and workspaces settle."""
    height, width = pipe.geometry.height, pipe.geometry.width
    photo = Image.new("RGB", (width, height), (128, 128, 128))
    # Memory does not depend on where the joints are: a pose with every joint missing will do.
    pose = Keypoints(np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32), width, height)

    def sample(batch: int) -> torch.Tensor:
        source, target = pipe.encode_source(photo), pipe.encode_pose(pose)
        return pipe([source] * batch, [target] * batch, list(range(batch)), num_inference_steps=1, output_type="pt")

    sample(MEASURED_BATCHES[0])
    return footprint_from_peaks({batch: peak_bytes(lambda batch=batch: sample(batch)) for batch in MEASURED_BATCHES})


# How CUDA libraries other than PyTorch's allocator say they ran out of memory: these come as a
# plain RuntimeError, and a smaller batch cures them as it cures torch.OutOfMemoryError.
OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(message in str(error) for message in OUT_OF_MEMORY_MESSAGES)
    )


def cuda_peak_bytes(device: torch.device) -> PeakBytes:
    def peak(work: Callable[[], torch.Tensor]) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)  # the peak starts at what is allocated now
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)

    return peak


def footprint_key(pipe, model_checksum: str, device_name: str) -> dict:
    """What a footprint depends on."""
    return {
        "model": model_checksum,
        "resolution": [pipe.geometry.height, pipe.geometry.width],
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "device": device_name,
        "torch": torch.__version__,
        "measurement": MEASUREMENT_VERSION,
    }


def cached_footprint(cache_dir: Path, key: dict, measure: Callable[[], Footprint]) -> tuple[Footprint, bool]:
    """The footprint cached under `key`, or a new one from `measure()`, stored for next time.
    Returns it and whether it came from the cache."""
    path = Path(cache_dir) / CACHE_FOLDER / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]}.json"
    cached = _read_footprint(path, key)
    if cached is not None:
        return cached, True
    footprint = measure()
    record = {
        "key": key,
        "fixed_bytes": footprint.fixed_bytes,
        "per_image_bytes": footprint.per_image_bytes,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: two workers measuring at once each leave a whole file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(record, f, indent=2)
    os.replace(f.name, path)
    return footprint, False


def _read_footprint(path: Path, key: dict) -> Footprint | None:
    try:
        record = json.loads(path.read_text())
        footprint = Footprint(int(record["fixed_bytes"]), int(record["per_image_bytes"]))
        if record["key"] != key or footprint.per_image_bytes <= 0:
            return None
        return footprint
    except (OSError, ValueError, KeyError, TypeError):
        return None


def without_device_memory(device: torch.device, default: int) -> BatchSizeChoice:
    return BatchSizeChoice(default, f"auto on {device}: no device memory to measure there, so the default batch size {default}")


def fitting_batch_size(
    pipe,
    model_checksum: str,
    cache_dir: Path,
    default: int,
    device_name: str,
    peak_bytes: PeakBytes,
    device_memory: Callable[[], tuple[int, int]],
    safety_fraction: float = SAFETY_FRACTION,
    cap: int = MAX_AUTO_BATCH,
) -> BatchSizeChoice:
    """The largest batch that fits, with the footprint measured by `peak_bytes` (or cached) and
    the memory `device_memory()` reports as (free, reserved) bytes. A footprint that does not
    grow with the batch cannot be extrapolated: the default then, with the reason. A measurement
    that runs out of memory gives 1."""
    key = footprint_key(pipe, model_checksum, device_name)
    try:
        footprint, from_cache = cached_footprint(cache_dir, key, lambda: measure_footprint(pipe, peak_bytes))
    except ValueError as error:
        return BatchSizeChoice(
            default, f"auto on {device_name}: the measurement failed ({error}), so the default batch size {default}"
        )
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        # Batch 2 (or the warm-up at 1) did not fit: there is nothing larger to find. Not cached:
        # the next run may find the device emptier.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return BatchSizeChoice(
            1, f"auto on {device_name}: sampling {MEASURED_BATCHES[-1]} images ran out of memory, so batches of 1"
        )
    free, reserved = device_memory()
    size = largest_batch(footprint, free, reserved, safety_fraction, cap)
    gib = 2**30
    return BatchSizeChoice(
        size,
        f"auto on {device_name}: {footprint.per_image_bytes / gib:.2f} GiB per image and {footprint.fixed_bytes / gib:.2f} GiB "
        f"fixed ({'cached' if from_cache else 'measured now'}), {safety_fraction:.0%} of {(free + reserved) / gib:.1f} GiB "
        f"free or held: batches of {size}" + (f" (the cap, {cap})" if size == cap else ""),
    )


def auto_batch_size(
    pipe, model_checksum: str, cache_dir: Path, default: int, safety_fraction: float = SAFETY_FRACTION, cap: int = MAX_AUTO_BATCH
) -> BatchSizeChoice:
    """The largest batch that fits the device `pipe` is on (see the module docstring); off CUDA,
    `default`."""
    device = pipe.device
    if device.type != "cuda":
        return without_device_memory(device, default)
    return fitting_batch_size(
        pipe,
        model_checksum,
        cache_dir,
        default,
        torch.cuda.get_device_name(device),
        cuda_peak_bytes(device),
        lambda: (torch.cuda.mem_get_info(device)[0], torch.cuda.memory_reserved(device)),
        safety_fraction,
        cap,
    )
