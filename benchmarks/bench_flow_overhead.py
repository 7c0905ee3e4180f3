"""Overhead of `fpdm run` over the model's own generation time, on a 200-job catalog.

`fpdm run` wraps the model in a Prefect flow on Prefect's embedded server: it starts the server,
reads the manifest, plans batches, runs a task per batch, QCs every image (pose detection,
identity checks), writes PNGs, sidecars, contact sheets and a run report. This script measures
what all of that costs on top of the model, from one run of each:

  model generation   the same batches the flow plans (pipeline.plans.plan_run), generated the way
                     pipeline.execution.run_batch does (encode_source once per garment of a batch,
                     encode_pose per job, one pipe call per batch): model time only, the model
                     loaded beforehand, no QC, no writes
  fpdm run           `fpdm run MANIFEST --output OUT --model tiny --device cpu --pose-backend
                     keypoints` as a subprocess, wall clock from start to exit: interpreter and
                     imports, Prefect's embedded server (fresh PREFECT_HOME), model load, the flow

and prints the ratio `fpdm run / model generation`. The sidecars' timings split the flow's time
into generation, QC and the rest (start-up, orchestration, writes, reports).

    .venv/bin/python benchmarks/bench_flow_overhead.py [--jobs 200] [--steps 20] [--batch-size 8]

The manifest is built in a temporary folder by synthetic.write_catalog_manifest (the
generator of manifests/example.csv): synthetic garments, a source photo and 3 target poses each,
so 200 jobs are 67 garments x 3 poses (the last one cut short). `fpdm run` goes first, so the in-process
measurement cannot warm anything for it; the OS file cache is warm for both (this process has
imported torch before either starts). Neither gets a warm-up call: the first batch is cold in both.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from model_core.pipeline_fpdm import FPDMPipeline
from pipeline.execution import read_source
from pipeline.manifest import read_manifest
from pipeline.plans import plan_run
from pipeline.run import RunSettings, pose_resolver
from synthetic import POSES_PER_PERSON, write_catalog_manifest

POSES_PER_GARMENT = POSES_PER_PERSON - 1  # a person's other poses are the targets of their source photo


def build_manifest(folder: Path, jobs: int, steps: int) -> Path:
    """`jobs` rows, garment by garment (the last garment may have fewer), all at `steps` steps."""
    catalog = write_catalog_manifest(folder, -(-jobs // POSES_PER_GARMENT), seed=3)
    with catalog.manifest.open(newline="") as file:
        rows = list(csv.DictReader(file))[:jobs]
    with catalog.manifest.open("w", newline="") as file:
        writer = csv.DictWriter(file, [*rows[0], "steps"])
        writer.writeheader()
        writer.writerows({**row, "steps": steps} for row in rows)
    return catalog.manifest


def time_fpdm_run(manifest: Path, output: Path, folder: Path, batch_size: int) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # embedded server, always
    env.update(PREFECT_HOME=str(folder / "prefect_home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    fpdm = Path(sys.executable).parent / "fpdm"
    command = [str(fpdm), "run", str(manifest), "--output", str(output), "--model", "tiny", "--device", "cpu",
               "--batch-size", str(batch_size), "--pose-backend", "keypoints"]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
    return time.perf_counter() - started, result


def time_model(manifest: Path, folder: Path, batch_size: int) -> tuple[float, int, int]:
    """Model time for the flow's batches; returns (seconds, images, batches)."""
    settings = RunSettings(model="tiny", device="cpu", batch_size=batch_size, pose_backend="keypoints")
    output = str(folder / "empty_output")
    plan = plan_run(read_manifest(str(manifest)), output, settings, "benchmark", pose_resolver(output, settings))
    batches = [batch for chunk in plan.chunks for batch in chunk.batches]
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    # Source photos are read before timing: reading files is not the model's time.
    sources = {uri: read_source(uri).image for uri in {p.job.source_image for b in batches for p in b.jobs}}
    seconds = 0.0
    for batch in batches:
        first = batch.jobs[0].job
        started = time.perf_counter()
        encodings = {uri: pipe.encode_source(sources[uri]) for uri in dict.fromkeys(p.job.source_image for p in batch.jobs)}
        poses = [pipe.encode_pose(p.pose.keypoints) for p in batch.jobs]
        pipe(
            [encodings[p.job.source_image] for p in batch.jobs],
            poses,
            [p.job.seed for p in batch.jobs],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            num_images_per_prompt=first.num_candidates,
        )
        seconds += time.perf_counter() - started
    return seconds, plan.images, len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the manifest (default: 200)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default: 8)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_flow_overhead_"))
    manifest = build_manifest(folder / "catalog", args.jobs, args.steps)
    output = folder / "out"

    flow_s, result = time_fpdm_run(manifest, output, folder, args.batch_size)
    sidecars = [s for s in (json.loads(p.read_text()) for p in output.glob("*/*.json")) if "timings" in s]
    pngs = list(output.glob("*/*.png"))
    if result.returncode != 0 or len(pngs) != args.jobs:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
        sys.exit(f"fpdm run exited {result.returncode} with {len(pngs)} PNGs (expected {args.jobs}); files in {folder}")
    model_s, images, batches = time_model(manifest, folder, args.batch_size)
    if images != args.jobs:
        sys.exit(f"the plan has {images} images, expected {args.jobs}")

    generation_s = sum(s["timings"]["generation_s"] for s in sidecars)
    qc_s = sum(s["timings"]["qc_s"] for s in sidecars)
    n = args.jobs
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"tiny preset on cpu, {n} jobs ({-(-n // POSES_PER_GARMENT)} garments x {POSES_PER_GARMENT} poses), "
        f"{args.steps} steps, {batches} batches of <= {args.batch_size}, one run each"
    )
    print(f"{'':42}{'seconds':>9}{'ms/job':>9}")
    rows = [
        ("model generation (same batches)", model_s),
        ("fpdm run, wall clock", flow_s),
        ("  of which generation (sidecars)", generation_s),
        ("  of which QC (sidecars)", qc_s),
        ("  the rest: start-up, Prefect, writes", flow_s - generation_s - qc_s),
    ]
    for label, seconds in rows:
        print(f"{label:42}{seconds:9.2f}{seconds / n * 1000:9.1f}")
    print(f"Flow overhead: fpdm run takes {flow_s / model_s:.2f}x the model's own generation time")
    if args.keep:
        print(f"files: {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
