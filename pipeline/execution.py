"""Executing a stored plan: the one loop over a chunk's batches, and what one batch does.

    execute_chunk   the batches of one chunk, one model call each, with one failure policy;
                    its outcomes stored under {output}/_runs/{run_id}/outcomes/
    claim_chunk     take a chunk of a run for this process (each chunk goes to one taker)
    run_batch       generate, QC every candidate and keep the best, write the variants

Every caller runs chunks through `execute_chunk`: the flow's chunk task, each shard, and the
benchmarks. Bad input (a source that no longer reads) fails its own job; out of GPU memory a
batch is split in halves; any other error fails that batch's jobs with the error and the chunk
goes on, then `execute_chunk` raises `ChunkIncomplete` so the task is retried: a retry finds the
chunk's finished variants complete and redoes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image

from model_core.batch_memory import is_out_of_memory
from model_core.errors import InputError
from model_core.images import decode_image
from model_core.pipeline_fpdm import FPDMPipeline

from . import outputs, progress, storage
from .inputs import DEFAULT_LIMITS, InputLimits
from .planning import SUCCEEDED, Batch, JobOutcome, PlannedJob, failed
from .plans import load_chunk, skipped_as_complete
from .qc import DEFAULT_QC, ModelReference, QCConfig, best_candidate, check_image

OUTCOMES = "outcomes"
CLAIMS = "claims"


@dataclass(frozen=True)
class SourcePhoto:
    uri: str
    sha256: str
    image: Image.Image


def read_source(uri: str, limits: InputLimits = DEFAULT_LIMITS) -> SourcePhoto:
    data = storage.read_bytes(uri, max_bytes=limits.max_bytes)
    return SourcePhoto(uri, hashlib.sha256(data).hexdigest(), decode_image(data, uri, limits.image_formats))


class ChunkIncomplete(RuntimeError):
    """Some batch of the chunk failed for a reason other than bad input (a GPU fault, a storage
    hiccup, a bug): worth a retry of the chunk, which skips what was finished."""

    def __init__(self, index: int, outcomes: list[JobOutcome], errors: list[str]):
        self.outcomes = outcomes
        super().__init__(f"chunk {index}: {len(errors)} batch(es) failed: {'; '.join(errors[:3])}")


# ----- chunks -----------------------------------------------------------------------------------


def execute_chunk(
    pipe: FPDMPipeline,
    output: str,
    run_id: str,
    index: int,
    detector,
    model_checksum: str,
    qc_config: QCConfig = DEFAULT_QC,
    context: dict | None = None,
    force: bool = False,
    pipelined: bool = True,
    limits: InputLimits = DEFAULT_LIMITS,
) -> list[JobOutcome]:
    """Run chunk `index` of the stored plan of `run_id`: every job not yet complete, batch by
    batch. Stores and returns an outcome per job; raises ChunkIncomplete after storing them if a
    batch failed for a reason a retry may cure.

    Pipelined (the default), the model never waits for the CPU: while it generates batch k,
    batch k+1's sources are fetched and decoded and batch k-1 is QC'd, encoded and written, each
    in a thread of its own with one batch in hand (memory stays a few batches). The images and
    sidecars are the ones the sequential path writes: same seeds, same order of writes."""
    chunk = load_chunk(output, run_id, index)
    context = {**(context or {}), "run_id": run_id}
    outcomes: list[JobOutcome] = []
    # A retry of the chunk (or of the run) finds the variants written since planning complete.
    complete = outputs.complete_variants(output, chunk.jobs)
    batches = []
    for batch in chunk.batches:
        pending = []
        for planned in batch.jobs:
            sidecar = complete.get(planned.job.job_id)
            if sidecar is not None and sidecar.get("run_id") == run_id:
                outcomes.append(succeeded_earlier(planned, sidecar))  # by an earlier attempt at this chunk
            elif sidecar is not None and not force:
                outcomes.append(skipped_as_complete(planned, sidecar))  # by another run since planning
            else:
                pending.append(planned)
        if pending:
            batches.append(Batch(tuple(pending)))
        else:
            progress.advance("generate", batch.images)

    def finish(generated: list[GeneratedBatch]) -> list[JobOutcome]:
        done: list[JobOutcome] = []
        for part in generated:
            try:
                done += finish_generated(pipe, part, output, detector, model_checksum, qc_config, context)
            except BatchIncomplete as incomplete:
                raise BatchIncomplete(done + incomplete.written, incomplete.error) from incomplete.error
        return done

    errors: list[str] = []

    def fail(batch: Batch, error: BaseException, done: list[JobOutcome]) -> None:
        outcomes.extend(batch_failed(batch, error, done))
        errors.append(str(error) if isinstance(error, BatchIncomplete) else f"{type(error).__name__}: {error}")
        progress.advance("generate", batch.images)

    if not pipelined:
        for batch in batches:
            failures: list[JobOutcome] = []
            try:
                prepared = prepare_batch(batch, limits)
                failures = prepared.failures
                outcomes.extend(failures + finish(generate_prepared(pipe, prepared)))
                if not prepared.ready:
                    progress.advance("generate", batch.images)
            except Exception as error:  # noqa: BLE001 - one broken batch must not stop the chunk
                fail(batch, error, failures)
    else:
        _execute_pipelined(pipe, batches, finish, outcomes, fail, limits)
    store_chunk_outcomes(output, run_id, index, outcomes)
    if errors:
        raise ChunkIncomplete(index, outcomes, errors)
    return outcomes


def _execute_pipelined(
    pipe: FPDMPipeline, batches: list[Batch], finish, outcomes: list[JobOutcome], fail, limits: InputLimits
) -> None:
    """prepare (thread) -> generate (this thread: the accelerator) -> finish (thread), one batch
    in each stage at a time. A batch that fails in any stage fails alone; its jobs already
    written stay succeeded."""
    if not batches:
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="prepare") as preparer,
        ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher,
    ):
        next_prepared = preparer.submit(prepare_batch, batches[0], limits)
        finishing: tuple[Batch, list[JobOutcome], Future] | None = None

        def collect() -> None:
            batch, failures, future = finishing
            try:
                outcomes.extend(failures + future.result())
            except Exception as error:  # noqa: BLE001 - one broken batch must not stop the chunk
                fail(batch, error, failures)

        for k, batch in enumerate(batches):
            try:
                prepared = next_prepared.result()
            except Exception as error:  # noqa: BLE001
                prepared = error
            if k + 1 < len(batches):
                next_prepared = preparer.submit(prepare_batch, batches[k + 1], limits)
            if isinstance(prepared, Exception):
                fail(batch, prepared, [])
                continue
            try:
                generated = generate_prepared(pipe, prepared)
            except Exception as error:  # noqa: BLE001
                fail(batch, error, prepared.failures)
                continue
            if finishing is not None:
                collect()
            if not prepared.ready:
                progress.advance("generate", batch.images)
            finishing = (batch, prepared.failures, finisher.submit(finish, generated))
        if finishing is not None:
            collect()


def succeeded_earlier(planned: PlannedJob, sidecar: dict) -> JobOutcome:
    """A job of this run written by an earlier attempt at its chunk: still this run's success."""
    job = planned.job
    qc_status = sidecar.get("qc", {}).get("status", "") if isinstance(sidecar.get("qc"), dict) else ""
    return JobOutcome(job.garment_id, job.variant_id, job.row, SUCCEEDED, qc_status, "", sidecar["image"]["uri"])


def outcomes_uri(output: str, run_id: str, index: int) -> str:
    return storage.join(outputs.run_folder(output, run_id), OUTCOMES, f"chunk-{index:06d}.json")


def store_chunk_outcomes(output: str, run_id: str, index: int, outcomes: list[JobOutcome]) -> None:
    data = json.dumps([outcome.to_json() for outcome in outcomes]).encode()
    storage.write_bytes(outcomes_uri(output, run_id, index), data, content_type="application/json")


def load_chunk_outcomes(output: str, run_id: str, index: int) -> list[JobOutcome] | None:
    """The stored outcomes of a chunk, or None if it never finished (or they are unreadable)."""
    try:
        return [JobOutcome.from_json(o) for o in json.loads(storage.read_bytes(outcomes_uri(output, run_id, index)))]
    except (InputError, ValueError, KeyError, TypeError, RecursionError):
        return None


def claim_chunk(output: str, run_id: str, attempt: int, index: int, taker: str) -> bool:
    """Take chunk `index` for this process in this attempt at the run (an operator's Retry is a
    new attempt, whose chunks can be taken again); False if another took it first."""
    record = {"taker": taker, "host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
    uri = storage.join(outputs.run_folder(output, run_id), CLAIMS, f"attempt-{attempt}", f"chunk-{index:06d}.json")
    if storage.create_exclusive(uri, json.dumps(record).encode()):
        return True
    # A claim that is there already may be this very one: a retry after the response to a
    # create that succeeded was lost.
    try:
        existing = json.loads(storage.read_bytes(uri))
    except (InputError, ValueError):
        return False
    return isinstance(existing, dict) and all(existing.get(k) == record[k] for k in ("taker", "host", "pid"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----- one batch ----------------------------------------------------------------------------------


@dataclass
class PreparedBatch:
    """A batch with its sources read and decoded: what the model needs, fetched ahead of it."""

    batch: Batch
    ready: list[tuple[PlannedJob, SourcePhoto]]
    failures: list[JobOutcome]  # jobs whose source no longer reads: bad input, failed alone

    def part(self, ready: list[tuple[PlannedJob, SourcePhoto]]) -> PreparedBatch:
        return PreparedBatch(Batch(tuple(planned for planned, _ in ready)), ready, [])


@dataclass
class GeneratedBatch:
    prepared: PreparedBatch
    images: list[list[Image.Image]]  # candidates per ready job
    source_encodings: dict
    pose_encodings: list
    seconds_per_image: float


def prepare_batch(batch: Batch, limits: InputLimits = DEFAULT_LIMITS) -> PreparedBatch:
    """Read and decode the batch's sources, each once (I/O and CPU: runs ahead of the model)."""
    ready, failures, sources = [], [], {}
    for planned in batch.jobs:
        job = planned.job
        try:
            if job.source_image not in sources:
                sources[job.source_image] = read_source(job.source_image, limits)
        except InputError as error:
            failures.append(failed(job, f"row {job.row}, source_image: {error}"))
            continue
        ready.append((planned, sources[job.source_image]))
    return PreparedBatch(batch, ready, failures)


def generate_prepared(pipe: FPDMPipeline, prepared: PreparedBatch) -> list[GeneratedBatch]:
    """The model's part: one call for the batch. Out of GPU memory, the batch is split in halves
    and each is tried again, down to single jobs: a batch size that fits most garments need not
    fit the one with many candidates. Returns the parts as generated (one, unless split)."""
    import torch

    if not prepared.ready:
        return []
    out_of_memory = False
    try:
        return [_generate(pipe, prepared)]
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error) or len(prepared.ready) == 1:
            raise
        out_of_memory = True
    if out_of_memory:
        # Outside the except block: the traceback would keep the failed attempt's tensors alive
        # through every smaller try.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    half = len(prepared.ready) // 2
    parts = (prepared.part(prepared.ready[:half]), prepared.part(prepared.ready[half:]))
    return [generated for part in parts for generated in generate_prepared(pipe, part)]


def _generate(pipe: FPDMPipeline, prepared: PreparedBatch) -> GeneratedBatch:
    ready = prepared.ready
    started = time.perf_counter()
    # Each garment's source is encoded once, however many of its poses share the batch.
    photos = {photo.uri: photo for _, photo in ready}
    source_encodings = {uri: pipe.encode_source(photo.image) for uri, photo in photos.items()}
    pose_encodings = [pipe.encode_pose(planned.pose.keypoints) for planned, _ in ready]
    first = ready[0][0].job
    images = pipe(
        [source_encodings[photo.uri] for _, photo in ready],
        pose_encodings,
        [planned.job.seed for planned, _ in ready],
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        num_images_per_prompt=first.num_candidates,
    )
    seconds_per_image = (time.perf_counter() - started) / sum(p.job.num_candidates for p, _ in ready)
    return GeneratedBatch(prepared, images, source_encodings, pose_encodings, seconds_per_image)


class BatchIncomplete(RuntimeError):
    """Finishing a batch failed part-way: the jobs written before the error are done."""

    def __init__(self, written: list[JobOutcome], error: BaseException):
        self.written = written
        self.error = error
        super().__init__(f"{type(error).__name__}: {error}")


def finish_generated(
    pipe: FPDMPipeline,
    generated: GeneratedBatch,
    output: str,
    detector,
    model_checksum: str,
    qc_config: QCConfig,
    context: dict | None,
) -> list[JobOutcome]:
    """QC every candidate, keep the best, write image then sidecar, job by job (CPU and I/O:
    runs behind the model). A job whose variant was written is succeeded whatever happens to
    the next one: an error part-way raises BatchIncomplete with the jobs already written."""
    outcomes: list[JobOutcome] = []
    batch = generated.prepared.batch
    for (planned, photo), pose_encoding, candidates in zip(
        generated.prepared.ready, generated.pose_encodings, generated.images, strict=True
    ):
        job = planned.job
        try:
            qc_started = time.perf_counter()
            reference = ModelReference.for_job(pipe, generated.source_encodings[photo.uri], pose_encoding)
            results = [
                check_image(image, photo.image, planned.pose.keypoints, detector, model=reference, config=qc_config)
                for image in candidates
            ]
            kept = best_candidate(results)
            sidecar = {
                "sidecar_version": outputs.SIDECAR_VERSION,
                "job_id": job.job_id,
                "garment_id": job.garment_id,
                "variant_id": job.variant_id,
                **(context or {}),
                "row": job.row,
                "source": {"uri": photo.uri, "sha256": photo.sha256},
                "pose": {"uri": planned.pose.uri, "sha256": planned.pose.sha256, "detector": planned.pose.detector},
                "keypoints": planned.pose.keypoints.to_json(),
                "model": {"name": pipe.name, "checksum": model_checksum, "device": str(pipe.device), "dtype": str(pipe.dtype)},
                "seed": job.seed,
                "steps": job.steps,
                "guidance_scale": job.guidance_scale,
                "num_candidates": job.num_candidates,
                "kept_candidate": kept,
                "qc": results[kept].to_json(),
                "candidates_qc": [{"status": r.status, "score": r.score} for r in results],
                "timings": {
                    "generation_s": round(generated.seconds_per_image * job.num_candidates, 3),
                    "qc_s": round(time.perf_counter() - qc_started, 3),
                    "batch_id": batch.batch_id,
                    "batch_images": batch.images,
                },
                "notes": job.notes,
                "extra": job.extra,
                # The source read now may differ from the one planned on; the key records what was used.
                "inputs_key": planned.inputs_key
                if photo.sha256 == planned.source_sha256
                else outputs.inputs_key(job, photo.sha256, planned.pose.sha256, model_checksum, planned.pose.detector),
            }
            uri = outputs.write_variant(output, job, candidates[kept], sidecar)
        except InputError as error:
            outcomes.append(failed(job, f"writing the variant: {error}"))
            continue
        except Exception as error:  # noqa: BLE001 - the jobs written so far stay succeeded
            raise BatchIncomplete(outcomes, error) from error
        outcomes.append(JobOutcome(job.garment_id, job.variant_id, job.row, SUCCEEDED, results[kept].status, "", uri))
    progress.advance("generate", batch.images)
    return outcomes


def run_batch(
    pipe: FPDMPipeline,
    batch: Batch,
    output: str,
    detector,
    model_checksum: str,
    qc_config: QCConfig = DEFAULT_QC,
    context: dict | None = None,
) -> list[JobOutcome]:
    """Prepare, generate and finish one batch, one step after the other. Returns an outcome per
    job; bad input fails its own job. Any other error propagates (BatchIncomplete carrying the
    jobs written before it), for the caller to retry the batch or fail its remaining jobs."""
    prepared = prepare_batch(batch)
    outcomes = list(prepared.failures)
    for generated in generate_prepared(pipe, prepared):
        try:
            outcomes += finish_generated(pipe, generated, output, detector, model_checksum, qc_config, context)
        except BatchIncomplete as incomplete:
            raise BatchIncomplete(outcomes + incomplete.written, incomplete.error) from incomplete.error
    if not prepared.ready:
        progress.advance("generate", batch.images)
    return outcomes


def batch_failed(batch: Batch, error: BaseException | str, done: list[JobOutcome] = ()) -> list[JobOutcome]:
    """The outcomes of a batch that failed: the jobs `done` before the error as they ended,
    every other job failed with the batch's error."""
    if isinstance(error, BatchIncomplete):
        done, error = [*done, *error.written], error.error
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    finished = {outcome.job_id for outcome in done}
    return [
        *done,
        *(failed(p.job, f"batch {batch.batch_id} failed: {reason}") for p in batch.jobs if p.job.job_id not in finished),
    ]
