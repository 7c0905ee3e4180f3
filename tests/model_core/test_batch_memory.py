"""`--batch-size auto`'s arithmetic, its cache and the measurement's sampling calls, on the CPU.

The CPU has no allocator whose peak could be read, so the CUDA measurement itself
(batch_memory.cuda_peak_bytes) does not run here. What does: the arithmetic with numbers of the
size a GPU gives, the cache with a measurement passed in, and the real sampling calls of the
measurement with a counter that reads the bytes of the images each call returns (a quantity
that grows with the batch as device memory does, and whose size per image is known)."""

import json
import math

import pytest
import torch

from model_core import batch_memory
from model_core.batch_memory import (
    Footprint,
    auto_batch_size,
    cached_footprint,
    fitting_batch_size,
    footprint_from_peaks,
    largest_batch,
    measure_footprint,
)
from model_core.pipeline_fpdm import FPDMPipeline, model_checksum

GIB = 2**30


@pytest.fixture(scope="module")
def pipe():
    return FPDMPipeline.from_pretrained("tiny", device="cpu")


def output_bytes(work) -> int:
    images = work()
    return images.nelement() * images.element_size()


def test_footprint_is_the_line_through_two_peaks():
    footprint = footprint_from_peaks({1: int(9.5 * GIB), 2: 12 * GIB})
    assert footprint == Footprint(fixed_bytes=7 * GIB, per_image_bytes=int(2.5 * GIB))
    with pytest.raises(ValueError, match="no more memory"):
        footprint_from_peaks({1: 9 * GIB, 2: 9 * GIB})


def test_largest_batch_fits_the_safety_fraction_of_free_and_held_memory():
    footprint = Footprint(fixed_bytes=7 * GIB, per_image_bytes=int(2.5 * GIB))
    # 0.85 x (130 + 6) = 115.6 GiB usable; (115.6 - 7) / 2.5 = 43.4 -> 43
    assert largest_batch(footprint, free_bytes=130 * GIB, reserved_bytes=6 * GIB) == 43
    # An 80 GB card: 0.85 x (73 + 6) = 67.15; (67.15 - 7) / 2.5 = 24.06 -> 24
    assert largest_batch(footprint, free_bytes=73 * GIB, reserved_bytes=6 * GIB) == 24
    # A smaller safety fraction gives a smaller batch: 0.7 x 136 = 95.2; 88.2 / 2.5 = 35.3 -> 35
    assert largest_batch(footprint, 130 * GIB, 6 * GIB, safety_fraction=0.7) == 35
    # Capped: (115.6 - 7) / 0.5 = 217
    assert largest_batch(Footprint(7 * GIB, GIB // 2), 130 * GIB, 6 * GIB) == batch_memory.MAX_AUTO_BATCH
    assert largest_batch(Footprint(7 * GIB, GIB // 2), 130 * GIB, 6 * GIB, cap=100) == 100
    # Not even one image fits: 1, and the out-of-memory split is the run's to do.
    assert largest_batch(footprint, free_bytes=2 * GIB, reserved_bytes=6 * GIB) == 1


def test_the_measurement_samples_at_batch_one_and_two(pipe):
    calls = []

    def counting(work):
        calls.append(1)
        return output_bytes(work)

    footprint = measure_footprint(pipe, counting)
    assert len(calls) == 2
    # One float32 RGB image at the model's resolution per image of the batch, nothing fixed.
    assert footprint == Footprint(0, 3 * pipe.geometry.height * pipe.geometry.width * 4)


def test_the_cache_answers_the_same_key_and_measures_a_new_one(tmp_path, pipe):
    measured = []

    def measure():
        measured.append(1)
        return Footprint(7 * GIB, len(measured) * GIB)

    key = batch_memory.footprint_key(pipe, "abc", "NVIDIA H200")
    assert cached_footprint(tmp_path, key, measure) == (Footprint(7 * GIB, GIB), False)
    assert cached_footprint(tmp_path, key, measure) == (Footprint(7 * GIB, GIB), True)
    assert len(measured) == 1
    for changed in ({"device": "NVIDIA H100 80GB HBM3"}, {"model": "def"}, {"dtype": "float16"}, {"torch": "9.9"}):
        footprint, from_cache = cached_footprint(tmp_path, {**key, **changed}, measure)
        assert not from_cache and footprint.per_image_bytes == len(measured) * GIB
    assert len(measured) == 5
    assert cached_footprint(tmp_path, key, measure) == (Footprint(7 * GIB, GIB), True)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],
        lambda text: json.dumps({**json.loads(text), "per_image_bytes": "many"}),
        lambda text: json.dumps({**json.loads(text), "per_image_bytes": 0}),
        lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "fixed_bytes"}),
        lambda text: "[]",
    ],
)
def test_a_damaged_cache_file_is_measured_again_and_rewritten(tmp_path, damage):
    key = {"model": "abc", "device": "NVIDIA H200"}
    cached_footprint(tmp_path, key, lambda: Footprint(7 * GIB, GIB))
    [path] = (tmp_path / batch_memory.CACHE_FOLDER).iterdir()
    path.write_text(damage(path.read_text()))
    assert cached_footprint(tmp_path, key, lambda: Footprint(8 * GIB, 2 * GIB)) == (Footprint(8 * GIB, 2 * GIB), False)
    assert cached_footprint(tmp_path, key, lambda: Footprint(9 * GIB, 3 * GIB)) == (Footprint(8 * GIB, 2 * GIB), True)


def test_fitting_batch_size_measures_once_then_answers_from_the_cache(tmp_path, pipe):
    calls = []

    def counting(work):
        calls.append(1)
        return output_bytes(work)

    per_image = 3 * pipe.geometry.height * pipe.geometry.width * 4
    free, reserved = 1_000_000, 200_000
    options = dict(default=8, device_name="cpu test", peak_bytes=counting, device_memory=lambda: (free, reserved))
    first = fitting_batch_size(pipe, model_checksum("tiny"), tmp_path, **options)
    second = fitting_batch_size(pipe, model_checksum("tiny"), tmp_path, **options)
    expected = math.floor(0.85 * (free + reserved) / per_image)
    assert first.size == second.size == expected
    assert "measured now" in first.reason and "cached" in second.reason and f"batches of {expected}" in first.reason
    assert len(calls) == 2  # batch 1 and 2, the first time only


def test_a_footprint_that_does_not_grow_leaves_the_default(tmp_path, pipe):
    choice = fitting_batch_size(
        pipe, "abc", tmp_path, default=8, device_name="x", peak_bytes=lambda work: 5 * GIB, device_memory=lambda: (GIB, 0)
    )
    assert choice.size == 8 and "the measurement failed" in choice.reason


def test_off_cuda_auto_is_the_default_and_says_so(tmp_path, pipe):
    choice = auto_batch_size(pipe, model_checksum("tiny"), tmp_path, default=8)
    assert choice.size == 8 and "auto on cpu: no device memory to measure" in choice.reason
    assert not (tmp_path / batch_memory.CACHE_FOLDER).exists()
    assert pipe.device == torch.device("cpu")


def test_a_measurement_that_runs_out_of_memory_gives_batches_of_one_and_is_not_cached(tmp_path, pipe):
    def out_of_memory_at_two(work):
        images = work()
        if len(images) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return images.nelement() * images.element_size()

    options = dict(default=8, device_name="x", device_memory=lambda: (GIB, 0))
    choice = fitting_batch_size(pipe, "abc", tmp_path, peak_bytes=out_of_memory_at_two, **options)
    assert choice.size == 1 and "ran out of memory" in choice.reason
    assert fitting_batch_size(pipe, "abc", tmp_path, peak_bytes=output_bytes, **options).size > 1
