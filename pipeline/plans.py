"""A run's plan: planned once, stored, then executed by whoever takes its chunks.

    plan_run     manifest rows -> jobs; fingerprint sources and resolve target poses (no photo
                 is decoded); take out the variants that are complete; batch and chunk the rest
    store_plan   {output}/_runs/{run_id}/plan/: one file per chunk, then plan.json last
    load_plan    the stored plan of a run, or None (no plan.json: never planned, or cut short)

A plan is the truth for its run. Shards, a worker that takes over a dead one's chunk and the
Prefect UI's Retry of the flow run all execute the stored plan: nothing plans again, so two
processes can never disagree about which job is in which chunk, and a manifest edited after
planning changes the next run, not this one.

A chunk is a few consecutive batches (about CHUNK_IMAGES images): the unit a task runs, a worker
claims, and a retry redoes. Batches are a model call's worth of jobs of one garment's settings.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from model_core.batch_memory import BatchSizeChoice
from model_core.errors import InputError
from model_core.pipeline_fpdm import model_checksum

from . import outputs, progress, storage
from .fingerprints import PLANNING_REQUESTS, SourceFingerprint, fingerprint_sources
from .manifest import Manifest
from .planning import SKIPPED, Batch, Job, JobOutcome, PlannedJob, PoseResolver, TargetPose, expand_jobs, failed, plan_batches

if TYPE_CHECKING:
    from .run import RunSettings

PLAN = "plan"
PLAN_INDEX = "plan.json"
PLAN_VERSION = 1
# Images per chunk. A chunk is a Prefect task run: ~0.5 s of orchestration against ~30 s of
# generation at the production model's ~250 ms per image keeps orchestration under 2 %, and a
# 100,000-row nightly stays near a thousand task runs (docs/operations.md, "Chunks").
CHUNK_IMAGES = 128


@dataclass
class Chunk:
    index: int
    batches: list[Batch]

    @property
    def images(self) -> int:
        return sum(batch.images for batch in self.batches)

    @property
    def jobs(self) -> list[PlannedJob]:
        return [planned for batch in self.batches for planned in batch.jobs]


@dataclass
class RunPlan:
    run_id: str
    manifest_uri: str
    manifest_sha256: str
    model_checksum: str
    settings: dict  # RunSettings.as_parameters() of the run that planned it
    outcomes: list[JobOutcome]  # decided while planning: failed rows and jobs, complete variants skipped
    batch: BatchSizeChoice  # the batch size planned with (settings' own, or what `auto` resolved to)
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(chunk.images for chunk in self.chunks)

    @property
    def jobs(self) -> int:
        return sum(len(chunk.jobs) for chunk in self.chunks)


def plan_run(
    manifest: Manifest,
    output: str,
    settings: RunSettings,
    run_id: str,
    resolver: PoseResolver,
    keep=None,
    chunk_images: int = CHUNK_IMAGES,
    batch: BatchSizeChoice | None = None,
) -> RunPlan:
    """Every job of the manifest (those `keep(job)` accepts, when given), decided: failed with its
    reason, skipped as complete, or batched into a chunk to generate. Batches are of
    `batch.size` images, by default the settings' batch size (`auto` must be resolved first:
    pipeline.run.resolve_batch_size).

    Reads of a source photo are a HEAD and a cached fingerprint (or, for a new or changed photo,
    one read that is hashed and measured, never decoded); keypoint files are read once each;
    completion is decided from listings of the output and the sidecars of listed variants.
    Requests run PLANNING_REQUESTS at a time."""
    if batch is None:
        if not isinstance(settings.batch_size, int):
            raise ValueError(f"batch size {settings.batch_size!r}: resolve it before planning (pipeline.run.resolve_batch_size)")
        batch = BatchSizeChoice(settings.batch_size, "given")
    checksum = model_checksum(settings.model)
    jobs, outcomes = expand_jobs(manifest, settings.defaults)
    if keep is not None:
        jobs = [job for job in jobs if keep(job)]
        outcomes = [outcome for outcome in outcomes if keep(outcome)]
    progress.stage("plan", len(jobs))
    sources = fingerprint_sources([job.source_image for job in jobs], output, settings.input_limits)
    poses = _resolve_poses(jobs, sources, resolver)

    usable: list[PlannedJob] = []
    for job in jobs:
        source = sources[job.source_image]
        if isinstance(source, InputError):
            outcomes.append(failed(job, f"row {job.row}, source_image: {source}"))
            continue
        pose = poses[(job.target_pose, source.canvas)]
        if isinstance(pose, InputError):
            outcomes.append(failed(job, f"row {job.row}, target_pose: {pose}"))
            continue
        usable.append(
            PlannedJob(job, source.sha256, pose, outputs.inputs_key(job, source.sha256, pose.sha256, checksum, pose.detector))
        )

    complete = {} if settings.force else outputs.complete_variants(output, usable)
    pending = []
    for planned in usable:
        sidecar = complete.get(planned.job.job_id)
        if sidecar is None:
            pending.append(planned)
        else:
            outcomes.append(skipped_as_complete(planned, sidecar))
    progress.advance("plan", len(jobs))
    return RunPlan(
        run_id=run_id,
        manifest_uri=manifest.uri,
        manifest_sha256=manifest.sha256,
        model_checksum=checksum,
        settings=settings.as_parameters(),
        outcomes=outcomes,
        batch=batch,
        chunks=chunk_batches(plan_batches(pending, batch.size), chunk_images),
    )


def _resolve_poses(jobs, sources: dict[str, SourceFingerprint | InputError], resolver: PoseResolver) -> dict:
    """Each (target pose, source canvas) once, concurrently: a pose library shared by thousands
    of garments is read once; a catalog with a pose file per row reads them in parallel."""
    wanted = sorted(
        {(job.target_pose, source.canvas) for job in jobs if not isinstance(source := sources[job.source_image], InputError)}
    )

    def resolve(key):
        try:
            return resolver.resolve(*key)
        except InputError as error:
            return error

    with ThreadPoolExecutor(max_workers=PLANNING_REQUESTS) as pool:
        return dict(zip(wanted, pool.map(resolve, wanted), strict=True))


def skipped_as_complete(planned: PlannedJob, sidecar: dict) -> JobOutcome:
    job = planned.job
    qc_status = sidecar.get("qc", {}).get("status", "") if isinstance(sidecar.get("qc"), dict) else ""
    return JobOutcome(
        job.garment_id, job.variant_id, job.row, SKIPPED, qc_status, "already complete (same inputs)", sidecar["image"]["uri"]
    )


def chunk_batches(batches: list[Batch], chunk_images: int = CHUNK_IMAGES) -> list[Chunk]:
    """Consecutive batches, up to `chunk_images` images a chunk (a batch larger than that is a
    chunk of its own)."""
    chunks: list[Chunk] = []
    current: list[Batch] = []
    for batch in batches:
        if current and sum(b.images for b in current) + batch.images > chunk_images:
            chunks.append(Chunk(len(chunks), current))
            current = []
        current.append(batch)
    if current:
        chunks.append(Chunk(len(chunks), current))
    return chunks


# ----- stored plans ----------------------------------------------------------------------------


def plan_folder(output: str, run_id: str) -> str:
    return storage.join(outputs.run_folder(output, run_id), PLAN)


def chunk_uri(output: str, run_id: str, index: int) -> str:
    return storage.join(plan_folder(output, run_id), f"chunk-{index:06d}.json")


def store_plan(output: str, plan: RunPlan) -> str:
    """Write every chunk, then plan.json: a plan folder without plan.json is incomplete and a
    run that finds one plans again. Returns plan.json's URI."""
    progress.stage("store plan", len(plan.chunks) + 1)

    def write_chunk(chunk: Chunk) -> None:
        # A pose library's few poses serve thousands of jobs: each pose is written once a chunk.
        poses: dict[str, dict] = {}
        batches = []
        for batch in chunk.batches:
            records = []
            for planned in batch.jobs:
                key = f"{planned.pose.uri}#{planned.pose.sha256}#{planned.pose.keypoints.width}x{planned.pose.keypoints.height}"
                poses.setdefault(key, planned.pose.to_json())
                records.append({**planned.to_json(), "pose": key})
            batches.append(records)
        record = {"index": chunk.index, "poses": poses, "batches": batches}
        storage.write_bytes(chunk_uri(output, plan.run_id, chunk.index), json.dumps(record).encode(), "application/json")
        progress.advance("store plan")

    with ThreadPoolExecutor(max_workers=PLANNING_REQUESTS) as pool:
        list(pool.map(write_chunk, plan.chunks))
    index = {
        "plan_version": PLAN_VERSION,
        "run_id": plan.run_id,
        "manifest": plan.manifest_uri,
        "manifest_sha256": plan.manifest_sha256,
        "model_checksum": plan.model_checksum,
        "settings": plan.settings,
        "batch_size": plan.batch.size,
        "batch_size_reason": plan.batch.reason,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "chunks": [{"index": c.index, "batches": len(c.batches), "jobs": len(c.jobs), "images": c.images} for c in plan.chunks],
        "outcomes": [outcome.to_json() for outcome in plan.outcomes],
    }
    uri = storage.join(plan_folder(output, plan.run_id), PLAN_INDEX)
    storage.write_bytes(uri, json.dumps(index).encode(), "application/json")
    progress.advance("store plan")
    return uri


@dataclass
class StoredPlan:
    """A stored plan's index: what a run executes and reports, with its chunks left on storage
    (a worker reads only the chunks it takes)."""

    run_id: str
    manifest_uri: str
    manifest_sha256: str
    model_checksum: str
    settings: dict
    outcomes: list[JobOutcome]
    chunks: list[dict]  # index, batches, jobs, images
    batch: BatchSizeChoice

    @property
    def images(self) -> int:
        return sum(chunk["images"] for chunk in self.chunks)


def load_plan(output: str, run_id: str) -> StoredPlan | None:
    """The stored plan of `run_id`, or None if there is none (or only an unreadable one)."""
    uri = storage.join(plan_folder(output, run_id), PLAN_INDEX)
    if not storage.exists(uri):
        return None
    try:
        data = json.loads(storage.read_bytes(uri))
        if data.get("plan_version") != PLAN_VERSION:
            return None
        return StoredPlan(
            run_id=data["run_id"],
            manifest_uri=data["manifest"],
            manifest_sha256=data["manifest_sha256"],
            model_checksum=data["model_checksum"],
            settings=dict(data["settings"]),
            outcomes=[JobOutcome.from_json(o) for o in data["outcomes"]],
            chunks=list(data["chunks"]),
            # A plan stored before `auto` existed was planned with its settings' batch size.
            batch=BatchSizeChoice(
                int(data.get("batch_size", data["settings"]["batch_size"])), str(data.get("batch_size_reason", "given"))
            ),
        )
    except (InputError, ValueError, KeyError, TypeError, RecursionError):
        return None


def load_chunk(output: str, run_id: str, index: int) -> Chunk:
    uri = chunk_uri(output, run_id, index)
    try:
        data = json.loads(storage.read_bytes(uri))
        poses = {key: TargetPose.from_json(pose) for key, pose in data["poses"].items()}
        return Chunk(
            index,
            [
                Batch(
                    tuple(
                        PlannedJob(Job.from_json(j["job"]), j["source_sha256"], poses[j["pose"]], j["inputs_key"]) for j in batch
                    )
                )
                for batch in data["batches"]
            ],
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise RuntimeError(f"{uri}: a damaged plan chunk ({exc.__class__.__name__}); plan the run again") from None
