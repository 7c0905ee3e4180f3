"""What one Prefect task run costs the flow: the per-chunk orchestration overhead.

A catalog run is one `generate-chunk` task per chunk. This script starts a real Prefect server
(Prefect's test harness: `prefect server` in a subprocess on a fresh SQLite database), runs a
flow that calls a task shaped like `generate-chunk` (tags, retries, timeout, no cache) `--tasks`
times with nothing inside, and prints the wall time per task run: what orchestration adds to
each chunk. From it and the model's time per image it prints the chunk size that keeps
orchestration under 2 % of generation.

    .venv/bin/python benchmarks/bench_task_overhead.py [--tasks 200] [--ms-per-image 250]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time


def wait_until_recorded(count: int, timeout: float = 600.0) -> int:
    """Task states reach the server as events, after the flow has moved on: wait until the server
    shows `count` completed task runs, so the figure includes what the server does per task."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType
    from prefect.client.schemas.objects import StateType

    completed = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED])))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            recorded = 0
            while page := client.read_task_runs(task_run_filter=completed, limit=200, offset=recorded):
                recorded += len(page)
            if recorded >= count or time.monotonic() > deadline:
                return recorded
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--ms-per-image", type=float, default=250.0, help="the model's time per image (H100: ~250)")
    args = parser.parse_args()
    os.environ.update(
        PREFECT_HOME=tempfile.mkdtemp(prefix="bench_prefect_"),
        PREFECT_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )

    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.testing.utilities import prefect_test_harness

    @task(
        name="generate-chunk", tags=["gpu"], retries=2, retry_delay_seconds=[30, 120], timeout_seconds=3600, cache_policy=NO_CACHE
    )
    def empty_chunk(index: int) -> int:
        return index

    @flow(name="task-overhead")
    def many_tasks(count: int) -> float:
        empty_chunk(-1)  # the first task run pays one-off costs
        started = time.perf_counter()
        for index in range(count):
            empty_chunk(index)
        return time.perf_counter() - started

    with prefect_test_harness(server_startup_timeout=120):
        started = time.perf_counter()
        seconds = many_tasks(args.tasks)
        recorded = wait_until_recorded(args.tasks + 1)
        until_recorded = time.perf_counter() - started
    per_task = max(seconds, until_recorded) / args.tasks
    images = math.ceil(per_task / (0.02 * args.ms_per_image / 1000))
    print(f"machine: {os.cpu_count()} CPUs; a real Prefect server on 127.0.0.1, {args.tasks} task runs in one flow run")
    print(f"in the flow: {seconds / args.tasks * 1000:.1f} ms per task run")
    print(
        f"until the server had recorded all {recorded} completed task runs: {until_recorded / args.tasks * 1000:.1f} ms per task run"
    )
    print(f"chunk size for orchestration under 2% at {args.ms_per_image:.0f} ms per image: at least {images} images")


if __name__ == "__main__":
    main()
