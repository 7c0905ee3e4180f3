"""Does the accelerator wait? A chunk of the product's execution loop with a simulated GPU.

The production model spends about 250 ms per image on an H100 (../shared/FPDM.md), during which
the CPU is free. This script gives the product's own chunk execution
(`pipeline.execution.execute_chunk`: fetch and decode sources, one model call per batch, QC of
every image, PNG encoding, writes) a stand-in model that sleeps `--ms-per-image` per image
without using the CPU, as an accelerator would, and returns the tiny preset's frame-sized
images. It runs the same stored plan twice, into two outputs, one step after the other
(`pipelined=False`) and pipelined (the default), and prints for each

    (wall time - fixed start-up) / accelerator busy time

where the start-up is everything before the first model call (loading the plan) and the busy
time is the stand-in's sleeping. 1.00 means the accelerator never waited. The stand-in lives
here only; the product never sees it.

    .venv/bin/python benchmarks/bench_simulated_accelerator.py [--jobs 1000] [--ms-per-image 250]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from model_core.pipeline_fpdm import FPDMPipeline
from pipeline.execution import execute_chunk
from pipeline.manifest import read_manifest
from pipeline.plans import plan_run, store_plan
from pipeline.run import RunSettings, pose_resolver, qc_detector
from synthetic import POSES_PER_PERSON, write_catalog_manifest


class SimulatedAccelerator:
    """The tiny model's encoders (cheap), with its sampling replaced by a sleep of `seconds` per
    image: the time an accelerator would take, with the CPU left free. It returns each job's
    source photo in the model's frame, a real figure, so that QC runs every check on it (a noise
    image would stop at the first)."""

    def __init__(self, seconds_per_image: float):
        self.model = FPDMPipeline.from_pretrained("tiny", device="cpu")
        self.seconds_per_image = seconds_per_image
        self.busy = 0.0
        self.first_call: float | None = None
        self.pictures: dict[int, Image.Image] = {}  # id(source encoding) -> the photo in the model's frame

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode_source(self, image: Image.Image):
        encoding = self.model.encode_source(image)
        self.pictures[id(encoding)] = self.model.geometry.photo(image)
        return encoding

    def __call__(self, sources, poses, seeds, num_images_per_prompt=1, **kwargs):
        images = len(sources) * num_images_per_prompt
        if self.first_call is None:
            self.first_call = time.perf_counter()
        started = time.perf_counter()
        time.sleep(self.seconds_per_image * images)
        self.busy += time.perf_counter() - started
        return [[self.pictures[id(source)].copy() for _ in range(num_images_per_prompt)] for source in sources]


def build_plan(folder: Path, jobs: int, settings: RunSettings):
    catalog = write_catalog_manifest(folder / "catalog", -(-jobs // (POSES_PER_PERSON - 1)), seed=3)
    with catalog.manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))[:jobs]
    with catalog.manifest.open("w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return read_manifest(str(catalog.manifest))


def measure(manifest, output: str, settings: RunSettings, jobs: int, seconds_per_image: float, pipelined: bool):
    # The whole run as one chunk, so that the loop, not the chunking, is what is measured.
    plan = plan_run(manifest, output, settings, "bench", pose_resolver(output, settings), chunk_images=jobs)
    store_plan(output, plan)
    pipe = SimulatedAccelerator(seconds_per_image)
    detector = qc_detector(settings)
    started = time.perf_counter()
    outcomes = execute_chunk(pipe, output, "bench", 0, detector, plan.model_checksum, settings.qc, pipelined=pipelined)
    ended = time.perf_counter()
    assert len(outcomes) == jobs and all(o.status == "succeeded" for o in outcomes), "every job should be written"
    startup = pipe.first_call - started
    return ended - started, startup, pipe.busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--ms-per-image", type=float, default=250.0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    settings = RunSettings(model="tiny", device="cpu", batch_size=args.batch_size, pose_backend="keypoints")
    folder = Path(tempfile.mkdtemp(prefix="bench_accelerator_"))
    try:
        manifest = build_plan(folder, args.jobs, settings)
        print(
            f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; {args.jobs} jobs, batches of {args.batch_size}, "
            f"a simulated accelerator at {args.ms_per_image:.0f} ms per image; QC and writes on"
        )
        print(f"{'execution':<22}{'wall s':>9}{'start-up s':>12}{'busy s':>9}{'ratio':>8}")
        for pipelined in (False, True):
            wall, startup, busy = measure(
                manifest, str(folder / f"out-{pipelined}"), settings, args.jobs, args.ms_per_image / 1000, pipelined
            )
            name = "pipelined" if pipelined else "one step at a time"
            print(f"{name:<22}{wall:>9.1f}{startup:>12.1f}{busy:>9.1f}{(wall - startup) / busy:>8.3f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
