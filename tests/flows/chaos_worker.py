"""Worker processes of the chaos suite: real processes that execute a run's stored plan, the way
a shard does, and that the suite kills.

Starting Python and importing torch and the model costs ten seconds and more on a busy 2-core
machine; a trial starts several workers. So every worker is forked from one warm process (a
multiprocessing fork server that imported the pipeline and loaded the `tiny` model once,
`chaos_preload`): a worker is a process of its own, with its own S3 client and connections,
killed with SIGKILL like any other, and it starts in a fraction of a second.

A second run on the same output (`new_run`) waits until the run in progress holds the output's
lease, then starts the way every run starts, by taking that lease (pipeline.leases.Lease), and
writes `busy MESSAGE` when it is refused (`acquired` if the first run had ended by then).

Any other worker waits for the run in progress on its output to store its plan, then, like a
shard of that run, claims chunks (pipeline.execution.claim_chunk) and executes them
(pipeline.execution.execute_chunk) until none is left. It writes what it does, one line at a
time, to its events file: `plan RUN`, `variant URI` after each variant written, and
`png-without-sidecar URI` just before it kills itself between a variant's PNG and its sidecar.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

MODEL = "tiny"
DEVICE = "cpu"


def warm() -> None:
    """In the fork server, once: what every worker needs, imported and loaded."""
    import torch

    # One thread: a fork of a process whose OpenMP pool has started can hang in that pool.
    torch.set_num_threads(1)
    from pipeline.run import shared_model

    shared_model(MODEL, DEVICE)
    import mediapipe  # noqa: F401 - QC's detector's module; the detector itself is made in each worker


@dataclass(frozen=True)
class WorkerSpec:
    environment: dict  # AWS_*: the S3 endpoint (the fault proxy); the fork server's environment is older than the test's
    output: str
    attempt: int
    taker: str
    events: str  # path of the events file
    die_before_sidecar: int | None = None  # kill itself between the PNG and the sidecar of its n-th variant
    new_run: str | None = None  # a second run with this id on the same output, instead of a shard
    plan_timeout_s: float = 120.0


def work(spec: WorkerSpec) -> None:
    """The worker's life: the target of a forked process."""
    os.environ.update(spec.environment)
    from pipeline import storage

    storage._client.cache_clear()  # no client inherited from the fork server
    from s3_fault_proxy import compress_sdk_time

    compress_sdk_time(setattr)
    events = open(spec.events, "a", buffering=1)  # noqa: SIM115 - open until the process ends, or is killed
    if spec.new_run is not None:
        _start_second_run(spec, events)
        events.close()
        return
    _record_variants(events, spec.die_before_sidecar)
    from pipeline.run import shared_pose_detector

    # QC's detector (the suite's runs use the `keypoints` backend, so QC's is `auto`), made while
    # the run plans. Made here, not in the fork server: its threads do not survive a fork.
    shared_pose_detector("auto", None)
    stored = _wait_for_plan(spec.output, spec.plan_timeout_s)
    events.write(f"plan {stored.run_id}\n")
    _take_chunks(spec, stored, events)
    events.write("done\n")
    events.close()


def _record_variants(events, die_before_sidecar: int | None) -> None:
    from pipeline import outputs, storage

    write_variant, write_bytes = outputs.write_variant, storage.write_bytes
    local = threading.local()
    written = 0

    def recording_write_variant(output, job, image, sidecar):
        nonlocal written
        written += 1
        local.variant = (written, outputs.image_uri(output, job))
        try:
            uri = write_variant(output, job, image, sidecar)
        finally:
            local.variant = None
        events.write(f"variant {uri}\n")
        return uri

    def dying_write_bytes(uri, data, content_type=None):
        variant = getattr(local, "variant", None)
        if variant is not None and variant[0] == die_before_sidecar and str(uri).endswith(".json"):
            events.write(f"png-without-sidecar {variant[1]}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return write_bytes(uri, data, content_type)

    outputs.write_variant = recording_write_variant
    if die_before_sidecar is not None:
        storage.write_bytes = dying_write_bytes


def _start_second_run(spec: WorkerSpec, events) -> None:
    from pipeline.leases import Lease, OutputBusy, current_holder
    from pipeline.storage import TransientStorageError

    give_up = time.monotonic() + spec.plan_timeout_s
    while time.monotonic() < give_up:
        try:
            holder = current_holder(spec.output)
        except TransientStorageError:
            holder = None  # the store is failing; look again
        if holder is not None:
            events.write(f"holder {holder.run_id}\n")
            break
        time.sleep(0.05)
    else:
        return
    lease = Lease(spec.output, spec.new_run)
    try:
        lease.acquire()
    except OutputBusy as busy:
        events.write(f"busy {busy}\n")
        return
    except TransientStorageError as error:
        events.write(f"transient {error}\n")  # as a run whose first step failed: it ends without a report
        return
    events.write("acquired\n")
    lease.release()


def _wait_for_plan(output: str, timeout_s: float):
    from pipeline import storage
    from pipeline.plans import PLAN_INDEX, load_plan
    from pipeline.storage import TransientStorageError

    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        try:
            for uri in storage.list_prefix(storage.join(output, "_runs") + "/"):
                if uri.endswith(f"/plan/{PLAN_INDEX}"):
                    stored = load_plan(output, uri.split("/")[-3])
                    if stored is not None:
                        return stored
        except TransientStorageError:
            pass  # the store is failing; look again
        time.sleep(0.05)
    raise TimeoutError(f"no run stored a plan under {output} within {timeout_s} s")


def _take_chunks(spec: WorkerSpec, stored, events) -> None:
    """A shard's loop (flows.pose_variants.take_chunks, without Prefect): claim each chunk not
    yet claimed in this attempt, execute it; a chunk that fails leaves what it stored."""
    from pipeline.execution import ChunkIncomplete, claim_chunk, execute_chunk
    from pipeline.run import RunSettings, qc_detector, shared_model

    settings = RunSettings(**{k: v for k, v in stored.settings.items() if k in RunSettings.__dataclass_fields__})
    pipe = shared_model(settings.model, settings.device)
    detector = qc_detector(settings)
    context = {"manifest": stored.manifest_uri, "run_id": stored.run_id}
    for chunk in stored.chunks:
        try:
            if not claim_chunk(spec.output, stored.run_id, spec.attempt, chunk["index"], spec.taker):
                continue
            events.write(f"chunk {chunk['index']}\n")
            execute_chunk(pipe, spec.output, stored.run_id, chunk["index"], detector, stored.model_checksum, settings.qc, context)
        except ChunkIncomplete as error:
            events.write(f"incomplete {error}\n")  # its outcomes are stored: the report fails those jobs
        except Exception as error:  # noqa: BLE001 - as a shard's failed task: the chunk stays unfinished, the worker goes on
            events.write(f"error {type(error).__name__}: {error}\n")
