"""Two runners of unequal speed on one stored plan: do they finish together?

A run's chunks go to whichever runner claims them first (`pipeline.execution.claim_chunk`, as
the flow's shards do), so a fast machine should take more chunks than a slow one and both should
finish within about one chunk of each other. This script plans a catalog once, then starts two
worker processes on the same plan, each taking chunks in plan order the way the flow's
`take_chunks` does (claim, then `execute_chunk`), with a simulated accelerator
(bench_simulated_accelerator.SimulatedAccelerator) at `--fast-ms` and `--slow-ms` per image.
It prints the chunks each took, when each finished, and the gap against one chunk's time on the
slow runner.

    .venv/bin/python benchmarks/bench_shards.py [--jobs 240] [--chunk-images 16] [--fast-ms 100] [--slow-ms 300]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_simulated_accelerator import SimulatedAccelerator, build_plan  # noqa: E402

from pipeline.execution import claim_chunk, execute_chunk  # noqa: E402
from pipeline.plans import load_plan, plan_run, store_plan  # noqa: E402
from pipeline.run import RunSettings, pose_resolver, qc_detector  # noqa: E402

RUN = "bench"


def runner(name: str, output: str, seconds_per_image: float, start_at: float, results) -> None:
    settings = RunSettings(model="tiny", device="cpu", pose_backend="keypoints")
    stored = load_plan(output, RUN)
    pipe = SimulatedAccelerator(seconds_per_image)
    detector = qc_detector(settings)
    time.sleep(max(0.0, start_at - time.time()))  # both start together, models loaded
    taken = []
    for chunk in stored.chunks:
        if claim_chunk(output, RUN, 1, chunk["index"], taker=name):
            started = time.time()
            execute_chunk(pipe, output, RUN, chunk["index"], detector, stored.model_checksum, settings.qc)
            taken.append({"index": chunk["index"], "seconds": time.time() - started})
    results[name] = {"taken": taken, "finished": time.time() - start_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=240)
    parser.add_argument("--chunk-images", type=int, default=16)
    parser.add_argument("--fast-ms", type=float, default=100.0)
    parser.add_argument("--slow-ms", type=float, default=300.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        settings = RunSettings(model="tiny", device="cpu", batch_size=8, pose_backend="keypoints")
        output = str(folder / "out")
        manifest = build_plan(folder, args.jobs, settings)
        plan = plan_run(manifest, output, settings, RUN, pose_resolver(output, settings), chunk_images=args.chunk_images)
        store_plan(output, plan)
        context = multiprocessing.get_context("spawn")
        results = context.Manager().dict()
        start_at = time.time() + 25  # time for both processes to import and load
        workers = [
            context.Process(target=runner, args=(name, output, ms / 1000, start_at, results))
            for name, ms in (("fast", args.fast_ms), ("slow", args.slow_ms))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        fast, slow = results["fast"], results["slow"]
        slow_chunk = max(t["seconds"] for t in slow["taken"]) if slow["taken"] else 0.0
        print(
            f"machine: {os.cpu_count()} CPUs; {args.jobs} jobs in {len(plan.chunks)} chunks of <= {args.chunk_images} images; "
            f"simulated accelerators at {args.fast_ms:.0f} and {args.slow_ms:.0f} ms per image"
        )
        for name, result in (("fast", fast), ("slow", slow)):
            print(f"{name}: {len(result['taken'])} chunks, finished after {result['finished']:.1f} s")
        gap = abs(fast["finished"] - slow["finished"])
        print(f"finish gap {gap:.1f} s; the slow runner's longest chunk {slow_chunk:.1f} s; gap/chunk {gap / slow_chunk:.2f}")
        claimed = sorted(t["index"] for r in (fast, slow) for t in r["taken"])
        print(json.dumps({"every chunk once": claimed == list(range(len(plan.chunks)))}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
