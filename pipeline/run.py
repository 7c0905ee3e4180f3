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

import functools
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline, model_checksum

from . import outputs, progress, storage
from .manifest import Manifest, read_manifest
from .planning import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    Batch,
    JobOutcome,
    PlannedJob,
    PoseResolver,
    RunDefaults,
    SourcePhoto,
    expand_jobs,
    failed,
    is_photo,
    plan_batches,
    read_source,
)
from .pose_detection import make_pose_detector
from .qc import DEFAULT_QC, ModelReference, QCConfig, best_candidate, check_image


# The one place a run's defaults are set: the flow's parameters and `fpdm run`'s options take theirs
# from these fields, so a flow run and a CLI run left at their defaults run the same way.
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

    def as_parameters(self) -> dict:
        """The settings a run is started with (the flow's parameters, the CLI's options), as
        plain values; summary.json records them so that a retry runs the same way."""
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "pose_backend": self.pose_backend,
            "openpose_weights": self.openpose_weights,
            "device": self.device,
            "force": self.force,
        }


@dataclass(frozen=True)
class Shard:
    """Which part of a run this process does: every `count`-th batch, starting at `index`."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """'INDEX/COUNT' (e.g. '1/4'), or None for the whole run."""
        if text is None or text == "":
            return cls()
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise InputError(f"shard {text!r}: expected INDEX/COUNT, e.g. 0/2") from None
        if not 0 <= index < count:
            raise InputError(f"shard {text!r}: INDEX must be from 0 to COUNT - 1")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Selection:
    """The jobs a retry is about: job ids, and the numbers of rows that failed before they
    became jobs (invalid rows). None of either means every job of the manifest."""

    job_ids: frozenset[str]
    rows: frozenset[int]

    @classmethod
    def failed_in(cls, report_uri: str) -> Selection:
        failed = [o for o in outputs.read_report(report_uri) if o.status == FAILED]
        return cls(
            frozenset(o.job_id for o in failed if o.variant_id),
            frozenset(o.row for o in failed if not o.variant_id and o.row is not None),
        )

    def keeps(self, outcome_or_job) -> bool:
        if outcome_or_job.variant_id:
            return outcome_or_job.job_id in self.job_ids
        return outcome_or_job.row in self.rows


@dataclass
class Plan:
    batches: list[Batch]  # to generate: this shard's batches, finished jobs taken out
    outcomes: list[JobOutcome]  # decided while planning: failed or skipped
    model_checksum: str

    @property
    def images(self) -> int:
        return sum(batch.images for batch in self.batches)


@dataclass
class RunResult:
    run_id: str
    report_uri: str
    outcomes: list[JobOutcome]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# ----- plan ----------------------------------------------------------------------------------------


def plan_run(
    manifest: Manifest,
    output: str,
    settings: RunSettings,
    shard: Shard = Shard(),
    only: Selection | None = None,
    resolver: PoseResolver | None = None,
) -> Plan:
    """Read every job's inputs, batch the usable jobs and keep this shard's batches, then take
    out the jobs that are already complete.

    Batches are formed before finished jobs are taken out, so every shard of a run computes
    the same batches whatever the others have finished meanwhile: each job belongs to exactly
    one shard. Problems found while planning are reported by shard 0 only."""
    checksum = model_checksum(settings.model)
    resolver = resolver or pose_resolver(output, settings)
    jobs, outcomes = expand_jobs(manifest, settings.defaults)
    if only is not None:
        jobs = [job for job in jobs if only.keeps(job)]
        outcomes = [outcome for outcome in outcomes if only.keeps(outcome)]
    progress.stage("plan", len(jobs))
    sources: dict[str, SourcePhoto | InputError] = {}
    usable = []
    for job in jobs:
        progress.advance("plan")
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
        usable.append(PlannedJob(job, source.sha256, pose, key))

    batches = []
    outcomes = outcomes if shard.index == 0 else []
    for batch in plan_batches(usable, settings.batch_size)[shard.index :: shard.count]:
        pending = []
        for planned in batch.jobs:
            done = None if settings.force else outputs.completed_sidecar(output, planned.job, planned.inputs_key)
            if done is None:
                pending.append(planned)
            else:
                outcomes.append(skipped_as_complete(planned.job, done))
        if pending:
            batches.append(Batch(tuple(pending)))
    return Plan(batches, outcomes, checksum)


def skipped_as_complete(job, sidecar: dict) -> JobOutcome:
    qc_status = sidecar.get("qc", {}).get("status", "")
    return JobOutcome(
        job.garment_id, job.variant_id, job.row, SKIPPED, qc_status, "already complete (same inputs)", sidecar["image"]["uri"]
    )


def reference_photos(manifest: Manifest, settings: RunSettings, only: Selection | None = None) -> list[str]:
    """The target poses of the run's jobs that are photos to detect a pose on (each once)."""
    jobs, _ = expand_jobs(manifest, settings.defaults)
    return sorted({job.target_pose for job in jobs if (only is None or only.keeps(job)) and is_photo(job.target_pose)})


def detect_reference_pose(uri: str, output: str, settings: RunSettings) -> str | None:
    """Detect the pose on one reference photo into the output's pose cache, so that planning
    (in this process or any other) finds it there. Returns the error, or None."""
    try:
        pose_resolver(output, settings).resolve(uri, None)
    except InputError as error:
        return str(error)
    return None


def pose_resolver(output: str, settings: RunSettings) -> PoseResolver:
    return PoseResolver(
        output, lambda: shared_pose_detector(settings.pose_backend, settings.openpose_weights), settings.pose_backend
    )


def qc_detector(settings: RunSettings):
    """QC detects the pose on every generated image, whatever the backend for target poses."""
    backend = "auto" if settings.pose_backend == "keypoints" else settings.pose_backend
    return shared_pose_detector(backend, settings.openpose_weights)


@functools.lru_cache(maxsize=4)
def shared_pose_detector(backend: str, openpose_weights: str | None):
    """One detector per backend and process: loading OpenPose's weights takes seconds."""
    return make_pose_detector(backend, openpose_weights)


@functools.lru_cache(maxsize=1)
def shared_model(model: str, device: str) -> FPDMPipeline:
    """The model, loaded once per process (a worker runs many batches) and kept for the next
    batch; asking for another model replaces it, so two never share the GPU."""
    return FPDMPipeline.from_pretrained(model, device=device)


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
    longer be read, or whose outputs cannot be written, fails alone.

    Out of GPU memory, the batch is split in halves and each is tried again, down to single
    jobs: a batch size that fits most garments need not fit the one with many candidates.
    Any other error propagates, for the caller to retry the batch or fail its jobs."""
    import torch

    try:
        outcomes = _generate(pipe, batch, output, detector, model_checksum, qc_config, context)
    except torch.OutOfMemoryError:
        if len(batch.jobs) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch.jobs) // 2
        return [
            outcome
            for part in (Batch(batch.jobs[:half]), Batch(batch.jobs[half:]))
            for outcome in run_batch(pipe, part, output, detector, model_checksum, qc_config, context)
        ]
    progress.advance("generate", batch.images)
    return outcomes


def batch_failed(batch: Batch, error: BaseException | str) -> list[JobOutcome]:
    """Every job of a batch that could not be generated, failed with the batch's error."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return [failed(p.job, f"batch {batch.batch_id} failed: {reason}") for p in batch.jobs]


def _generate(
    pipe: FPDMPipeline,
    batch: Batch,
    output: str,
    detector,
    model_checksum: str,
    qc_config: QCConfig,
    context: dict | None,
) -> list[JobOutcome]:
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

    for (planned, photo), pose_encoding, candidates in zip(ready, pose_encodings, images, strict=True):
        job = planned.job
        qc_started = time.perf_counter()
        reference = ModelReference.for_job(pipe, source_encodings[photo.uri], pose_encoding)
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
                "generation_s": round(seconds_per_image * job.num_candidates, 3),
                "qc_s": round(time.perf_counter() - qc_started, 3),
                "batch_id": batch.batch_id,
                "batch_images": batch.images,
            },
            "notes": job.notes,
            "extra": job.extra,
            # The source read now may differ from the one planned on; the key records what was used.
            "inputs_key": planned.inputs_key
            if photo.sha256 == planned.source_sha256
            else outputs.inputs_key(job, photo.sha256, planned.pose.sha256, model_checksum),
        }
        try:
            uri = outputs.write_variant(output, job, candidates[kept], sidecar)
        except InputError as error:
            outcomes.append(failed(job, f"writing the variant: {error}"))
            continue
        outcomes.append(JobOutcome(job.garment_id, job.variant_id, job.row, SUCCEEDED, results[kept].status, "", uri))
    return outcomes


# ----- report ------------------------------------------------------------------------------------------


def finish_run(output: str, run_id: str, outcomes: list[JobOutcome], summary: dict | None = None) -> str:
    """Contact sheets for every garment that got a new variant, then the run report (and its
    summary, with `summary`'s entries added). Returns the report's URI."""
    garments = sorted({o.garment_id for o in outcomes if o.status == SUCCEEDED})
    progress.stage("report", len(garments) + 1)
    for garment_id in garments:
        outputs.write_contact_sheet(output, garment_id)
        progress.advance("report")
    report = outputs.write_report(output, run_id, outcomes, summary)
    progress.advance("report")
    return report


def run_summary(manifest_uri: str, output: str, settings: RunSettings, **more) -> dict:
    """What summary.json records about a run besides its counts: enough to run it again."""
    return {
        "manifest": manifest_uri,
        "output": output,
        "settings": settings.as_parameters(),
        **more,
    }


def check_settings(settings: RunSettings) -> None:
    """Refuse settings that would fail every job, before a run starts: an unknown model, a
    batch size below 1, an unknown pose backend or openpose without its weights."""
    model_checksum(settings.model)
    if settings.batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {settings.batch_size}")
    if settings.pose_backend != "keypoints":
        shared_pose_detector(settings.pose_backend, settings.openpose_weights)


def recorded_run(report_uri: str) -> tuple[str, str, dict]:
    """The manifest, output and settings of the run that wrote `report_uri`, from the
    summary.json beside it: what a retry of its failed jobs needs."""
    summary_uri = report_uri.rsplit("/", 1)[0] + "/summary.json"
    try:
        summary = json.loads(storage.read_bytes(summary_uri))
        return summary["manifest"], summary["output"], dict(summary["settings"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{summary_uri}: not the summary of a run (expected manifest, output and settings)") from None


def run_catalog(
    manifest_uri: str,
    output: str,
    settings: RunSettings = RunSettings(),
    run_id: str | None = None,
    only: Selection | None = None,
) -> RunResult:
    """The whole run in this process, batch after batch, with no orchestrator. A batch that
    fails for a reason other than bad input fails its jobs with that reason; the others go on."""
    run_id = run_id or new_run_id()
    manifest = read_manifest(manifest_uri)
    plan = plan_run(manifest, output, settings, only=only)
    outcomes = list(plan.outcomes)
    progress.stage("generate", plan.images)
    if plan.batches:
        pipe = shared_model(settings.model, settings.device)
        detector = qc_detector(settings)
        context = {"manifest": manifest.uri, "run_id": run_id}
        for batch in plan.batches:
            try:
                outcomes += run_batch(pipe, batch, output, detector, plan.model_checksum, settings.qc, context)
            except Exception as error:  # noqa: BLE001 - one broken batch must not stop the run
                outcomes += batch_failed(batch, error)
    report = finish_run(output, run_id, outcomes, run_summary(manifest.uri, output, settings))
    return RunResult(run_id, report, outcomes)
