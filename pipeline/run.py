"""A catalog run's steps, each a plain function over plain data that the Prefect flow makes a
task of (flows/pose_variants.py):

    detect_reference_pose   one reference photo's pose into the output's pose cache
    plan_and_store          plan the run once and store the plan (pipeline.plans), or find the
                            plan a first attempt at this run stored
    execute_chunk           one chunk of the stored plan (pipeline.execution)
    collect_outcomes        every job's outcome: planning's, and each chunk's
    finish_run              the report and summary first, then the contact sheets

Bad input fails its own job with a message that names the row and file; anything else (a GPU
error, a bug) fails its batch and is retried with its chunk.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field

from PIL import Image

from model_core.batch_memory import BatchSizeChoice, auto_batch_size, without_device_memory
from model_core.errors import InputError
from model_core.images import PHOTO_FORMATS
from model_core.pipeline_fpdm import FPDMPipeline, model_checksum, resolve_device

from . import outputs, progress, storage
from .execution import load_chunk_outcomes, succeeded_earlier
from .inputs import InputLimits, has_dot_segments
from .manifest import SAFE_ID, Manifest
from .planning import FAILED, SUCCEEDED, JobOutcome, PoseResolver, RunDefaults, expand_jobs, failed, is_photo
from .plans import CHUNK_IMAGES, StoredPlan, load_chunk, load_plan, plan_run, store_plan
from .pose_detection import make_pose_detector
from .qc import DEFAULT_QC, QCConfig

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
# The batch size that fits the planning machine's GPU (model_core.batch_memory); the default off CUDA.
AUTO_BATCH_SIZE = "auto"


# The one place a run's defaults are set: the flow's parameters and `fpdm run`'s options take theirs
# from these fields, so a flow run and a CLI run left at their defaults run the same way.
@dataclass(frozen=True)
class RunSettings:
    model: str = "tiny"  # preset name or model directory
    batch_size: int | str = DEFAULT_BATCH_SIZE  # images per model call (jobs x candidates), or "auto"
    pose_backend: str = "auto"
    openpose_weights: str | None = None  # folder or s3:// prefix; else $FPDM_OPENPOSE_WEIGHTS
    device: str = "auto"
    force: bool = False  # regenerate variants that are already complete
    # Folders (s3:// prefixes or local) that a manifest on S3 may take inputs from besides its
    # own bucket (pipeline/inputs.py).
    allow_inputs: tuple[str, ...] = ()
    max_input_bytes: int = 64 * 2**20  # a source photo or pose file larger than this fails its row
    image_formats: tuple[str, ...] = PHOTO_FORMATS  # Pillow's names of the formats photos may come in
    defaults: RunDefaults = field(default_factory=RunDefaults)
    qc: QCConfig = DEFAULT_QC

    def __post_init__(self):
        # Recorded settings (summary.json, a flow's parameters) come back as lists.
        object.__setattr__(self, "allow_inputs", tuple(self.allow_inputs))
        object.__setattr__(self, "image_formats", tuple(f.upper() for f in self.image_formats))
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size))

    @property
    def input_limits(self) -> InputLimits:
        return InputLimits(self.max_input_bytes, self.image_formats)

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
            "allow_inputs": list(self.allow_inputs),
            "max_input_bytes": self.max_input_bytes,
            "image_formats": list(self.image_formats),
        }


def parse_batch_size(value) -> int | str:
    """A batch size as given (a number, its text from the command line or a deployment's
    parameters, or "auto"), checked: a whole number of at least 1, or "auto"."""
    if value == AUTO_BATCH_SIZE:
        return value
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InputError(f"batch size must be a whole number of at least 1, or {AUTO_BATCH_SIZE}; got {value!r}")


def resolve_batch_size(settings: RunSettings) -> BatchSizeChoice:
    """The batch size to plan with. `auto` is resolved here, in the process that plans, on the
    run's device: on CUDA the largest batch that fits (measured once per model, resolution,
    dtype and device, and cached in the local cache), elsewhere the default. Shards execute the
    plan's batches, so the planning machine's GPU decides; a batch that does not fit another is
    split by the out-of-memory fallback (pipeline.execution.generate_prepared)."""
    if settings.batch_size != AUTO_BATCH_SIZE:
        return BatchSizeChoice(settings.batch_size, "given")
    device = resolve_device(settings.device)
    if device.type != "cuda":
        choice = without_device_memory(device, DEFAULT_BATCH_SIZE)  # no model to load for that
    else:
        pipe = shared_model(settings.model, settings.device)  # the one this process's chunks use
        choice = auto_batch_size(pipe, model_checksum(settings.model), storage.local_cache_root(), DEFAULT_BATCH_SIZE)
    logger.info("batch size %d: %s", choice.size, choice.reason)
    return choice


@dataclass(frozen=True)
class Selection:
    """The jobs a retry is about: job ids, and the numbers of rows that failed before they
    became jobs (invalid rows). A row fixed since is jobs now, kept by its row number; rows are
    the sheet's, so an edit that moves rows moves what a retry takes up. None (no Selection)
    means every job of the manifest."""

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
        if outcome_or_job.variant_id and outcome_or_job.job_id in self.job_ids:
            return True
        return outcome_or_job.row in self.rows


def plan_and_store(
    manifest: Manifest,
    output: str,
    settings: RunSettings,
    run_id: str,
    only: Selection | None = None,
    chunk_images: int = CHUNK_IMAGES,
) -> StoredPlan:
    """The run's stored plan: the one a first attempt at this run stored (an operator's Retry
    executes the same plan), or a new one, planned now and stored."""
    stored = load_plan(output, run_id)
    if stored is not None:
        return stored
    keep = only.keeps if only else None
    plan = plan_run(
        manifest,
        output,
        settings,
        run_id,
        pose_resolver(output, settings),
        keep=keep,
        chunk_images=chunk_images,
        batch=resolve_batch_size(settings),
    )
    store_plan(output, plan)
    return load_plan(output, run_id)


def collect_outcomes(output: str, plan: StoredPlan, missing: str = "its chunk never finished") -> list[JobOutcome]:
    """Every job of the plan, accounted for: planning's outcomes and each chunk's stored ones; a
    chunk that no worker finished is read from its sidecars (unfinished_chunk_outcomes)."""
    outcomes = list(plan.outcomes)
    for chunk in plan.chunks:
        stored = load_chunk_outcomes(output, plan.run_id, chunk["index"])
        if stored is None:
            stored = unfinished_chunk_outcomes(output, plan.run_id, chunk["index"], f"not generated: {missing}")
        outcomes += stored
    return outcomes


def unfinished_chunk_outcomes(output: str, run_id: str, index: int, reason: str) -> list[JobOutcome]:
    """The outcomes of a chunk that stored none of its own (its worker died, its task failed
    before the end): a job whose variant is complete on storage succeeded, the others failed
    with `reason`, for a retry. The one rule for the report, the flow and `fpdm report`."""
    jobs = load_chunk(output, run_id, index).jobs
    complete = outputs.complete_variants(output, jobs)
    return [
        succeeded_earlier(planned, complete[planned.job.job_id])
        if planned.job.job_id in complete
        else failed(planned.job, reason)
        for planned in jobs
    ]


def rebuild_report(output: str, run_id: str) -> str:
    """The report of a run that died before writing its own (its process killed, its machine
    gone), from what it left on storage: its stored plan, the outcomes its chunks stored, and
    for a chunk that never finished the sidecars of the variants it wrote (verified as a rerun
    verifies them); its other jobs fail as not generated, for `fpdm retry`. Refused while the
    run still holds its output, and for a run that has a report."""
    from .leases import current_holder

    if not SAFE_ID.fullmatch(run_id):
        raise InputError(f"run id {run_id[:80]!r} is not a run's id (letters, digits, '.', '_', '-')")
    plan = load_plan(output, run_id)
    if plan is None:
        raise InputError(f"{output}: no stored plan of run {run_id} (see {outputs.run_folder(output, run_id)})")
    if storage.exists(outputs.report_uri(output, run_id)):
        raise InputError(f"run {run_id} has its report already: {outputs.report_uri(output, run_id)}")
    holder = current_holder(output)
    if holder is not None and holder.run_id == run_id:
        raise InputError(f"run {run_id} is still working on {output} (since {holder.since}); its report comes at its end")
    outcomes = collect_outcomes(output, plan, missing="the run ended before its chunk finished; a retry of the run redoes it")
    summary = {"manifest": plan.manifest_uri, "output": output, "settings": plan.settings, "rebuilt": True}
    return outputs.write_report(output, run_id, outcomes, summary)


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
        output,
        lambda: shared_pose_detector(settings.pose_backend, settings.openpose_weights),
        settings.pose_backend,
        settings.input_limits,
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


# ----- report ------------------------------------------------------------------------------------------


def finish_run(output: str, run_id: str, outcomes: list[JobOutcome], summary: dict | None = None) -> tuple[str, list[str]]:
    """The run report and its summary first (nothing optional may cost a run its report), then
    a contact sheet for every garment that got a new variant. Returns the report's URI and a
    warning per contact sheet that could not be written."""
    garments = sorted({o.garment_id for o in outcomes if o.status == SUCCEEDED})
    progress.stage("report", len(garments) + 1)
    report = outputs.write_report(output, run_id, outcomes, summary)
    progress.advance("report")
    warnings = []
    for garment_id in garments:
        try:
            outputs.write_contact_sheet(output, garment_id)
        except Exception as error:  # noqa: BLE001 - a contact sheet is optional; the run is not lost for it
            warnings.append(f"contact sheet of {garment_id}: {type(error).__name__}: {error}")
        progress.advance("report")
    return report, warnings


def run_summary(manifest_uri: str, output: str, settings: RunSettings, **more) -> dict:
    """What summary.json records about a run besides its counts: enough to run it again."""
    return {
        "manifest": manifest_uri,
        "output": output,
        "settings": settings.as_parameters(),
        **more,
    }


def check_settings(settings: RunSettings) -> None:
    """Refuse settings that would fail every job, before a run starts: an unknown model, an
    unknown pose backend or openpose without its weights. (A bad batch size is refused when the
    settings are made.)"""
    model_checksum(settings.model)
    if settings.max_input_bytes < 1:
        raise InputError(f"max input bytes must be at least 1, got {settings.max_input_bytes}")
    unknown = sorted(set(settings.image_formats) - set(Image.registered_extensions().values()))
    if unknown or not settings.image_formats:
        raise InputError(f"image formats: {', '.join(unknown) or 'none given'}; Pillow's names are e.g. JPEG, PNG, WEBP, TIFF")
    for prefix in settings.allow_inputs:
        if storage.is_s3(prefix):
            storage.parse_s3(prefix)  # a bucket at least
            if has_dot_segments(prefix):
                raise InputError(f"--allow-input {prefix}: '.' or '..' in an S3 prefix")
        elif not prefix.startswith("/"):
            raise InputError(f"--allow-input {prefix}: give an s3:// prefix or an absolute folder")
    if settings.pose_backend != "keypoints":
        shared_pose_detector(settings.pose_backend, settings.openpose_weights)


def recorded_run(report_uri: str) -> tuple[str, str, dict]:
    """The manifest, output and settings of the run that wrote `report_uri`, from the
    summary.json beside it: what a retry of its failed jobs needs."""
    summary_uri = report_uri.rsplit("/", 1)[0] + "/summary.json"
    try:
        summary = json.loads(storage.read_bytes(summary_uri))
        return summary["manifest"], summary["output"], dict(summary["settings"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InputError(f"{summary_uri}: not the summary of a run (expected manifest, output and settings)") from None
