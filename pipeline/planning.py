"""From manifest rows to jobs, target poses and batches.

A job is one variant: one garment's source photo in one target pose, with its settings. Its id
`{garment_id}/{variant_id}` is stable across runs, because it is also where the variant is
written. A row whose `target_pose` is a pose set (a prefix ending in '/') becomes one job per
pose file under it.

Target poses are resolved once per run: a keypoint file is read as it is; a reference photo goes
through the pose detector, and the detected keypoints are cached under `{output}/_poses/` by the
photo's content hash, so a pose library shared by thousands of garments is detected once.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from model_core.errors import InputError
from model_core.images import decode_image
from model_core.keypoints import KEYPOINT_SUFFIXES, Keypoints, parse_keypoints

from . import storage
from .inputs import DEFAULT_LIMITS, InputLimits
from .manifest import SAFE_ID, Manifest, ManifestRow

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
POSE_CACHE = "_poses"


def is_photo(uri: str) -> bool:
    """A reference photo (the detector finds its pose), as opposed to a keypoint file."""
    return uri.lower().endswith(PHOTO_SUFFIXES)


@dataclass(frozen=True)
class RunDefaults:
    """Settings for rows that leave them empty."""

    steps: int = 20
    guidance_scale: float = 2.0
    num_candidates: int = 1


@dataclass(frozen=True)
class Job:
    garment_id: str
    variant_id: str
    row: int  # the manifest row (spreadsheet numbering) the job comes from
    source_image: str
    target_pose: str
    seed: int
    steps: int
    guidance_scale: float
    num_candidates: int
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return f"{self.garment_id}/{self.variant_id}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Job:
        return cls(**{**data, "extra": dict(data.get("extra", {}))})


# What became of a job (a line of the run report).
SUCCEEDED, SKIPPED, FAILED = "succeeded", "skipped", "failed"
JOB_STATUSES = (SUCCEEDED, SKIPPED, FAILED)


@dataclass(frozen=True)
class JobOutcome:
    """One line of the run report."""

    garment_id: str
    variant_id: str
    row: int | None
    status: str  # one of JOB_STATUSES
    qc_status: str = ""  # pass | review | fail, for jobs that produced (or already had) a variant
    error: str = ""  # why it failed, or why it was skipped
    image_uri: str = ""

    @property
    def job_id(self) -> str:
        return f"{self.garment_id}/{self.variant_id}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> JobOutcome:
        return cls(**data)


def failed(job: Job, error: str) -> JobOutcome:
    return JobOutcome(job.garment_id, job.variant_id, job.row, FAILED, error=error)


def stable_seed(job_id: str) -> int:
    """The seed of a row that gives none: derived from the job id, so reruns are reproducible."""
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % (2**31)


# ----- rows -> jobs ---------------------------------------------------------------------------


def expand_jobs(manifest: Manifest, defaults: RunDefaults = RunDefaults()) -> tuple[list[Job], list[JobOutcome]]:
    """Every job the manifest asks for, and an outcome for every row that yields none: invalid
    rows (each problem named), disabled rows, pose sets that cannot be listed or are empty."""
    outcomes = [_invalid_row(manifest, row) for row in manifest.invalid_rows]
    outcomes += [JobOutcome("", "", row, SKIPPED, error="disabled in the manifest (enabled = no)") for row in manifest.disabled]
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for row in manifest.rows:
        try:
            pose_files = _pose_files(row)
        except InputError as error:
            # A pose set's jobs are named after its files, unknown until it can be listed: the
            # outcome names no variant, so a retry finds the row by its number.
            variant_id = "" if row.is_pose_set else row.variant_id or ""
            outcomes.append(JobOutcome(row.garment_id, variant_id, row.row, FAILED, error=f"row {row.row}, target_pose: {error}"))
            continue
        for pose_file in pose_files:
            variant_id = _variant_id(row, pose_file)
            job = Job(
                garment_id=row.garment_id,
                variant_id=variant_id,
                row=row.row,
                source_image=row.source_image,
                target_pose=pose_file,
                seed=row.seed if row.seed is not None else stable_seed(f"{row.garment_id}/{variant_id}"),
                steps=row.steps or defaults.steps,
                guidance_scale=row.guidance_scale if row.guidance_scale is not None else defaults.guidance_scale,
                num_candidates=row.num_candidates or defaults.num_candidates,
                notes=row.notes,
                extra=dict(row.extra),
            )
            if not SAFE_ID.fullmatch(variant_id):
                outcomes.append(
                    failed(
                        job,
                        f"row {row.row}, variant_id: the pose file name {PurePosixPath(pose_file).name!r} "
                        "does not make a safe id; set variant_id in the manifest",
                    )
                )
            elif job.job_id in seen:
                outcomes.append(failed(job, f"row {row.row}: duplicate of variant {job.job_id} from row {seen[job.job_id]}"))
            else:
                seen[job.job_id] = row.row
                jobs.append(job)
    return jobs, outcomes


def _invalid_row(manifest: Manifest, row: int) -> JobOutcome:
    problems = [p for p in manifest.problems if p.row == row]
    return JobOutcome("", "", row, FAILED, error="; ".join(str(p) for p in problems))


def _pose_files(row: ManifestRow) -> list[str]:
    if not row.is_pose_set:
        return [row.target_pose]
    files = [uri for uri in storage.list_prefix(row.target_pose) if uri.lower().endswith(KEYPOINT_SUFFIXES + PHOTO_SUFFIXES)]
    if not files:
        raise InputError(f"{row.target_pose}: pose set has no pose files ({', '.join(KEYPOINT_SUFFIXES + PHOTO_SUFFIXES)})")
    return files


def _variant_id(row: ManifestRow, pose_file: str) -> str:
    """A row's variant_id names its variant; in a pose set it prefixes each pose file's stem."""
    stem = PurePosixPath(pose_file).stem
    if not row.is_pose_set:
        return row.variant_id or stem
    return f"{row.variant_id}-{stem}" if row.variant_id else stem


# ----- sources and target poses ---------------------------------------------------------------


@dataclass(frozen=True)
class TargetPose:
    uri: str
    sha256: str
    keypoints: Keypoints
    detector: str | None  # identity of the detector that found it; None for a keypoint file

    def to_json(self) -> dict:
        return {"uri": self.uri, "sha256": self.sha256, "detector": self.detector, "keypoints": self.keypoints.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> TargetPose:
        keypoints = Keypoints.from_json(data["keypoints"], source=data["uri"])
        return cls(data["uri"], data["sha256"], keypoints, data.get("detector"))


class PoseResolver:
    """Turns target-pose URIs into keypoints, once per (file, canvas) within a run, and once per
    photo content across runs through the `_poses/` cache.

    `detector` is a pipeline.pose_detection detector, or None for the `keypoints` backend, which refuses
    reference photos. It is created on first use (`make_detector`), so a run over keypoint files
    never loads a detection model.
    """

    def __init__(self, output: str, make_detector, backend: str, limits: InputLimits = DEFAULT_LIMITS):
        self.output = output
        self.backend = backend
        self.limits = limits
        self._make_detector = make_detector
        self._detector = None
        self._detector_lock = threading.Lock()  # planning resolves poses from several threads
        self._resolved: dict[tuple[str, tuple[int, int]], TargetPose] = {}
        self._failures: dict[str, InputError] = {}
        self.detection_seconds = 0.0

    @property
    def detector(self):
        with self._detector_lock:
            if self._detector is None:
                self._detector = self._make_detector()
        return self._detector

    def resolve(self, uri: str, canvas: tuple[int, int] | None) -> TargetPose:
        """The target pose at `uri`; `canvas` (the source photo's width, height) is the frame of
        keypoint files that state none (None: only files that state theirs, and photos)."""
        key = (uri, canvas if uri.lower().endswith(KEYPOINT_SUFFIXES) else (0, 0))
        if uri in self._failures:
            raise self._failures[uri]
        if key not in self._resolved:
            try:
                self._resolved[key] = self._resolve(uri, canvas)
            except InputError as error:
                self._failures[uri] = error
                raise
        return self._resolved[key]

    def _resolve(self, uri: str, canvas: tuple[int, int]) -> TargetPose:
        suffix = PurePosixPath(uri).suffix.lower()
        if suffix not in KEYPOINT_SUFFIXES + PHOTO_SUFFIXES:
            raise InputError(
                f"{uri}: not a pose file; give a keypoint file ({', '.join(KEYPOINT_SUFFIXES)}) "
                f"or a reference photo ({', '.join(PHOTO_SUFFIXES)})"
            )
        data = storage.read_bytes(uri, max_bytes=self.limits.max_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        if suffix in KEYPOINT_SUFFIXES:
            return TargetPose(uri, sha256, parse_keypoints(data, uri, default_size=canvas), None)
        if self.backend == "keypoints":
            raise InputError(f"{uri}: a reference photo, but the pose backend is 'keypoints' (no detection)")
        detector = self.detector
        cache_uri = storage.join(self.output, POSE_CACHE, _safe_key(detector.identity), f"{sha256}.json")
        if storage.exists(cache_uri):
            try:
                cached = Keypoints.from_json(json.loads(storage.read_bytes(cache_uri)), source=cache_uri)
                return TargetPose(uri, sha256, cached, detector.identity)
            except (InputError, ValueError, TypeError, RecursionError):
                pass  # a damaged cache entry is detected again and rewritten
        started = time.perf_counter()
        keypoints = detector.detect(decode_image(data, uri, self.limits.image_formats), uri)
        self.detection_seconds += time.perf_counter() - started
        storage.write_bytes(cache_uri, json.dumps(keypoints.to_json()).encode(), content_type="application/json")
        return TargetPose(uri, sha256, keypoints, detector.identity)


def _safe_key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


# ----- planned jobs and batches ---------------------------------------------------------------


@dataclass(frozen=True)
class PlannedJob:
    """A job whose inputs were read and found usable, and which is not done yet."""

    job: Job
    source_sha256: str
    pose: TargetPose
    inputs_key: str

    def to_json(self) -> dict:
        return {
            "job": self.job.to_json(),
            "source_sha256": self.source_sha256,
            "pose": self.pose.to_json(),
            "inputs_key": self.inputs_key,
        }

    @classmethod
    def from_json(cls, data: dict) -> PlannedJob:
        return cls(Job.from_json(data["job"]), data["source_sha256"], TargetPose.from_json(data["pose"]), data["inputs_key"])


@dataclass(frozen=True)
class Batch:
    """Jobs generated in one model call: same steps, guidance and candidate count, grouped by
    garment so that a garment's source is encoded once for all its poses."""

    jobs: tuple[PlannedJob, ...]

    @property
    def batch_id(self) -> str:
        return hashlib.sha256("\n".join(p.job.job_id for p in self.jobs).encode()).hexdigest()[:12]

    @property
    def images(self) -> int:
        return sum(p.job.num_candidates for p in self.jobs)


def plan_batches(planned: list[PlannedJob], batch_size: int) -> list[Batch]:
    """Fill batches of at most `batch_size` images (jobs x candidates) with jobs of the same
    settings, keeping each garment's jobs together. A job with more candidates than the batch
    size gets a batch of its own. Deterministic: the same jobs give the same batches."""
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")

    def settings(p: PlannedJob) -> tuple:
        return (p.job.steps, p.job.guidance_scale, p.job.num_candidates)

    batches: list[Batch] = []
    current: list[PlannedJob] = []
    for p in sorted(planned, key=lambda p: (*settings(p), p.job.garment_id, p.job.variant_id)):
        fits = sum(q.job.num_candidates for q in current) + p.job.num_candidates <= batch_size
        if current and not (fits and settings(current[0]) == settings(p)):
            batches.append(Batch(tuple(current)))
            current = []
        current.append(p)
    if current:
        batches.append(Batch(tuple(current)))
    return batches
