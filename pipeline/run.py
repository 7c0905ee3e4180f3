"""A catalog run, step by step: plan → generate batches → report.

    plan_run      manifest rows → jobs; read sources and target poses; skip finished variants
    run_batch     one model call for a batch; QC every candidate, keep the best; write outputs
    finish_run    contact sheets for the garments that changed; the run report

Each step is a plain function over plain data, so the Prefect flows make tasks of them and
`run_catalog` runs them in sequence in-process. Bad input fails its own job with a message that
names the row and file; anything else (a GPU error, a bug) propagates out of `run_batch`, so
the caller can retry the batch.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline, model_checksum

from . import outputs
from .manifest import Manifest, read_manifest
from .planning import (
    Batch,
    JobOutcome,
    PlannedJob,
    PoseResolver,
    RunDefaults,
    SourcePhoto,
    expand_jobs,
    failed,
    plan_batches,
    read_source,
)
from .poses import make_pose_detector
from .qc import DEFAULT_QC, ModelReference, QCConfig, best_candidate, evaluate


@dataclass(frozen=True)
class RunSettings:
    model: str = "tiny"  # preset name or model directory
    batch_size: int = 8  # images per model call (jobs x candidates)
    pose_backend: str = "auto"
    openpose_weights: str | None = None  # folder or s3:// prefix; else $FPDM_OPENPOSE_WEIGHTS
    device: str = "auto"
    force: bool = False  # regenerate variants that are already complete
    defaults: RunDefaults = field(default_factory=RunDefaults)
    qc: QCConfig = DEFAULT_QC


@dataclass
class Plan:
    planned: list[PlannedJob]  # to generate
    outcomes: list[JobOutcome]  # decided while planning: failed or skipped
    model_checksum: str


@dataclass
class RunResult:
    run_id: str
    report_uri: str
    outcomes: list[JobOutcome]

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# ----- plan ----------------------------------------------------------------------------------------


def plan_run(manifest: Manifest, output: str, settings: RunSettings, resolver: PoseResolver | None = None) -> Plan:
    checksum = model_checksum(settings.model)
    resolver = resolver or pose_resolver(output, settings)
    jobs, outcomes = expand_jobs(manifest, settings.defaults)
    sources: dict[str, SourcePhoto | InputError] = {}
    planned = []
    for job in jobs:
        if job.source_image not in sources:
            try:
                sources[job.source_image] = read_source(job.source_image)
            except InputError as error:
                sources[job.source_image] = error
        source = sources[job.source_image]
        if isinstance(source, InputError):
            outcomes.append(failed(job, f"row {job.row}, source_image: {source}"))
            continue
        try:
            pose = resolver.resolve(job.target_pose, source.image.size)
        except InputError as error:
            outcomes.append(failed(job, f"row {job.row}, target_pose: {error}"))
            continue
        key = outputs.inputs_key(job, source.sha256, pose.sha256, checksum)
        done = None if settings.force else outputs.completed_sidecar(output, job, key)
        if done is not None:
            qc_status = done.get("qc", {}).get("status", "")
            outcomes.append(
                JobOutcome(job.garment_id, job.variant_id, job.row, "skipped", qc_status, "already complete (same inputs)", done["image"]["uri"])
            )
            continue
        planned.append(PlannedJob(job, source.sha256, pose, key))
    return Plan(planned, outcomes, checksum)


def pose_resolver(output: str, settings: RunSettings) -> PoseResolver:
    return PoseResolver(output, lambda: make_pose_detector(settings.pose_backend, settings.openpose_weights), settings.pose_backend)


def qc_detector(settings: RunSettings):
    """QC detects the pose on every generated image, whatever the backend for target poses."""
    backend = "auto" if settings.pose_backend == "keypoints" else settings.pose_backend
    return make_pose_detector(backend, settings.openpose_weights)


# ----- generate --------------------------------------------------------------------------------------


def run_batch(
    pipe: FPDMPipeline,
    batch: Batch,
    output: str,
    detector,
    model_checksum: str,
    qc_config: QCConfig = DEFAULT_QC,
    context: dict | None = None,
) -> list[JobOutcome]:
    """Generate, QC and write one batch. Returns an outcome per job; a job whose source can no
    longer be read, or whose outputs cannot be written, fails alone."""
    outcomes: list[JobOutcome] = []
    ready: list[tuple[PlannedJob, SourcePhoto]] = []
    sources: dict[str, SourcePhoto] = {}
    for planned in batch.jobs:
        job = planned.job
        try:
            if job.source_image not in sources:
                sources[job.source_image] = read_source(job.source_image)
        except InputError as error:
            outcomes.append(failed(job, f"row {job.row}, source_image: {error}"))
            continue
        ready.append((planned, sources[job.source_image]))
    if not ready:
        return outcomes

    started = time.perf_counter()
    # Each garment's source is encoded once, however many of its poses share the batch.
    source_encodings = {uri: pipe.encode_source(photo.image) for uri, photo in sources.items()}
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

    for (planned, photo), pose_encoding, candidates in zip(ready, pose_encodings, images):
        job = planned.job
        qc_started = time.perf_counter()
        reference = ModelReference.for_job(pipe, source_encodings[photo.uri], pose_encoding)
        results = [
            evaluate(image, photo.image, planned.pose.keypoints, detector, model=reference, config=qc_config)
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
                "generation_s": round(seconds_per_image * job.num_candidates, 3),
                "qc_s": round(time.perf_counter() - qc_started, 3),
                "batch_id": batch.batch_id,
                "batch_images": batch.images,
            },
            "notes": job.notes,
            "extra": job.extra,
            # The source read now may differ from the one planned on; the key records what was used.
            "inputs_key": planned.inputs_key if photo.sha256 == planned.source_sha256 else outputs.inputs_key(
                job, photo.sha256, planned.pose.sha256, model_checksum
            ),
        }
        try:
            uri = outputs.write_variant(output, job, candidates[kept], sidecar)
        except InputError as error:
            outcomes.append(failed(job, f"writing the variant: {error}"))
            continue
        outcomes.append(JobOutcome(job.garment_id, job.variant_id, job.row, "succeeded", results[kept].status, "", uri))
    return outcomes


# ----- report ------------------------------------------------------------------------------------------


def finish_run(output: str, run_id: str, outcomes: list[JobOutcome], manifest_uri: str = "") -> str:
    """Contact sheets for every garment that got a new variant, then the run report."""
    for garment_id in sorted({o.garment_id for o in outcomes if o.status == "succeeded"}):
        outputs.write_contact_sheet(output, garment_id)
    return outputs.write_report(output, run_id, outcomes, {"manifest": manifest_uri, "output": output})


def run_catalog(manifest_uri: str, output: str, settings: RunSettings = RunSettings(), run_id: str | None = None) -> RunResult:
    """The whole run in this process, batch after batch. A batch that fails for a reason other
    than bad input fails its jobs with that reason; the other batches go on."""
    run_id = run_id or new_run_id()
    manifest = read_manifest(manifest_uri)
    plan = plan_run(manifest, output, settings)
    outcomes = list(plan.outcomes)
    if plan.planned:
        pipe = FPDMPipeline.from_pretrained(settings.model, device=settings.device)
        detector = qc_detector(settings)
        context = {"manifest": manifest.uri, "run_id": run_id}
        for batch in plan_batches(plan.planned, settings.batch_size):
            try:
                outcomes += run_batch(pipe, batch, output, detector, plan.model_checksum, settings.qc, context)
            except Exception as error:  # noqa: BLE001 - one broken batch must not stop the run
                reason = f"batch {batch.batch_id} failed: {type(error).__name__}: {error}"
                outcomes += [failed(p.job, reason) for p in batch.jobs]
    report = finish_run(output, run_id, outcomes, manifest.uri)
    return RunResult(run_id, report, outcomes)

