"""Speed-up of catalog-style generation over one job at a time.

A catalog run renders every garment in several poses. It encodes each source photo once and
renders all poses of that garment in one pipeline call (batched: the jobs share the source
encoding). The naive way runs each (garment, pose) job on its own: encode the source, encode
the pose, one pipeline call for that one job. This script times both on the same 16 jobs
(4 garments x 4 poses, tiny preset, CPU) and prints the ratio (`speedup:`). A third path, one
job at a time but with the source encoded once per garment, splits the ratio into its two
causes: the cached source encoding and the batching.

    .venv/bin/python benchmarks/bench_source_cache.py [--steps 20] [--repeats 3]

Sources are four garments of the synthetic catalog (the synthetic package, seed 3: four of the five
garments of manifests/example.csv), each in its first pose; the poses, shared by all four, are
the first garment's four poses. Every path draws the same noise for a job, so they render the
same images up to float rounding (printed); only the time differs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from model_core.pipeline_fpdm import FPDMPipeline
from synthetic import render_person

SEED = 0  # of the sampling noise
GARMENTS = 4


def load_jobs():
    people = [render_person(3, index) for index in range(GARMENTS)]
    sources = [figures[0][1].image for _, _, figures in people]
    poses = [figure.keypoints for _, figure in people[0][2]]
    return sources, poses


def run_batched(pipe: FPDMPipeline, sources, poses, steps: int):
    """Catalog way: per garment, its source encoded once and all its poses in one call."""
    return [pipe.generate(source, poses, seed=SEED, num_inference_steps=steps) for source in sources]


def run_one_job_at_a_time(pipe: FPDMPipeline, sources, poses, steps: int):
    """Naive way: every (garment, pose) job encodes its source and pose and runs alone."""
    images = []
    for source in sources:
        for pose in poses:
            source_encoding = pipe.encode_source(source)
            pose_encoding = pipe.encode_pose(pose)
            images.append(pipe([source_encoding], [pose_encoding], [SEED], num_inference_steps=steps))
    return images


def run_one_job_at_a_time_cached_source(pipe: FPDMPipeline, sources, poses, steps: int):
    """In between: the source encoded once per garment, but every job still runs alone."""
    images = []
    for source in sources:
        source_encoding = pipe.encode_source(source)
        for pose in poses:
            images.append(pipe([source_encoding], [pipe.encode_pose(pose)], [SEED], num_inference_steps=steps))
    return images


def flat_pixels(images_per_job) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for per_job in images_per_job for image in per_job])


def best_seconds(paths: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each path over `repeats` runs (as timeit advises: other processes only
    ever add time; on a shared 2-core box one run of a path once took 20x its usual time). The
    paths take turns within each repeat, so a change in load hits them alike."""
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each path; the best is reported (default: 3)")
    args = parser.parse_args()

    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    sources, poses = load_jobs()
    jobs = len(sources) * len(poses)

    def batched():
        return run_batched(pipe, sources, poses, args.steps)

    def one_at_a_time():
        return run_one_job_at_a_time(pipe, sources, poses, args.steps)

    def one_at_a_time_cached_source():
        return run_one_job_at_a_time_cached_source(pipe, sources, poses, args.steps)

    # Warm-up (allocator, kernel selection), and a check that the paths render the same images.
    batched_pixels = flat_pixels(per_job for per_garment in batched() for per_job in per_garment)
    single_pixels = flat_pixels(one_at_a_time())
    max_difference = int(np.abs(batched_pixels - single_pixels).max())

    seconds = best_seconds(
        {"sequential": one_at_a_time, "cached_source": one_at_a_time_cached_source, "batched": batched}, args.repeats
    )
    sequential_s, cached_source_s, batched_s = seconds["sequential"], seconds["cached_source"], seconds["batched"]
    print(
        f"tiny preset, cpu ({torch.get_num_threads()} threads), {len(sources)} garments x {len(poses)} poses = {jobs} jobs, "
        f"{args.steps} steps, 1 sample each, best of {args.repeats}"
    )
    print(f"one job at a time, source re-encoded per job: {sequential_s:7.2f} s  ({sequential_s / jobs * 1000:6.1f} ms/job)")
    print(
        f"one job at a time, source encoded once:       {cached_source_s:7.2f} s  ({cached_source_s / jobs * 1000:6.1f} ms/job)"
    )
    print(f"batched per garment, source encoded once:     {batched_s:7.2f} s  ({batched_s / jobs * 1000:6.1f} ms/job)")
    print(f"images batched vs one at a time: max pixel difference {max_difference}/255")
    print(f"of which cached source {sequential_s / cached_source_s:.2f}x, batching {cached_source_s / batched_s:.2f}x")
    print(f"speedup: {sequential_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
