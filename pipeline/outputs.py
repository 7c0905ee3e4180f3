"""What a run leaves behind: variants with their sidecars, contact sheets, run reports.

    {output}/{garment_id}/{variant_id}.png    the variant
    {output}/{garment_id}/{variant_id}.json   its sidecar: inputs, settings, model, QC, timings
    {output}/{garment_id}/contact_sheet.jpg   source, skeletons and variants, QC colour-coded
    {output}/_runs/{run_id}/report.csv        one row per job; summary.json beside it

A sidecar vouches for its image: an existing sidecar is removed before its image is replaced
(`--force`, changed inputs), and the new one is written after the new image. It records an
`inputs_key` (a hash of everything that determines the image) and the image's sha256, byte size
and, on S3, ETag; a job is done when its sidecar carries the same key and the image is there as
the sidecar describes it (complete_variants), and a rerun skips it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime

from PIL import Image, ImageDraw

from model_core.errors import InputError
from model_core.images import ModelGeometry, decode_image
from model_core.keypoints import Keypoints
from model_core.skeletons import render_skeleton

from . import storage
from .planning import Job, JobOutcome

SIDECAR_VERSION = 1
RUNS = "_runs"
CONTACT_SHEET = "contact_sheet.jpg"
QC_COLOURS = {"pass": (46, 160, 67), "review": (230, 160, 20), "fail": (210, 45, 45)}


def image_uri(output: str, job: Job) -> str:
    return storage.join(output, job.garment_id, f"{job.variant_id}.png")


def sidecar_uri(output: str, job: Job) -> str:
    return storage.join(output, job.garment_id, f"{job.variant_id}.json")


def inputs_key(job: Job, source_sha256: str, pose_sha256: str, model_checksum: str, detector: str | None = None) -> str:
    """A hash of everything that decides the variant's image: same key, same image. `detector`:
    the identity of the pose detector that found a reference photo's pose (another detector
    finds other keypoints); None for a keypoint file, whose keys stay as they were."""
    decisive = {
        "source": source_sha256,
        "pose": pose_sha256,
        "model": model_checksum,
        "seed": job.seed,
        "steps": job.steps,
        "guidance_scale": job.guidance_scale,
        "num_candidates": job.num_candidates,
    }
    if detector is not None:
        decisive["detector"] = detector
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def complete_variants(output: str, planned_jobs) -> dict[str, dict]:
    """The sidecars of the jobs (PlannedJob) whose variant is complete: sidecar and image both
    on storage, the sidecar readable and made from the same inputs (inputs_key), the image of
    the byte size the sidecar records and, on S3, the ETag its PUT returned (a single-part PUT's
    ETag is the MD5 of the bytes: another image, even of the same size, has another). The
    sha256 the sidecar records is not compared here: that takes a download. Costs listings (one
    of the output, or one per garment for a few garments) and a small read per listed sidecar,
    concurrently; never an image download."""
    planned_jobs = list(planned_jobs)
    if not planned_jobs:
        return {}
    garments = sorted({p.job.garment_id for p in planned_jobs})
    if len(garments) <= GARMENTS_LISTED_ONE_BY_ONE:
        listed = [info for listing in _map(lambda g: _listing(storage.join(output, g)), garments) for info in listing]
    else:
        listed = _listing(output)
    sizes = {info.uri: info.size for info in listed}
    versions = {info.uri: info.version for info in listed}
    candidates = [p for p in planned_jobs if sidecar_uri(output, p.job) in sizes and image_uri(output, p.job) in sizes]

    def verified(planned) -> dict | None:
        sidecar = _read_sidecar(sidecar_uri(output, planned.job))
        if sidecar is None or sidecar.get("inputs_key") != planned.inputs_key:
            return None
        image = sidecar.get("image")
        if not isinstance(image, dict) or image.get("uri") != image_uri(output, planned.job):
            return None
        listed_image = image_uri(output, planned.job)
        if image.get("bytes") != sizes[listed_image]:
            return None  # the image was replaced or cut short after its sidecar was written
        if image.get("etag") is not None and image["etag"] != versions[listed_image]:
            return None  # the image was replaced by another of the same size
        return sidecar

    return {p.job.job_id: sidecar for p, sidecar in zip(candidates, _map(verified, candidates), strict=True) if sidecar}


# Up to this many garments, each garment's folder is listed; beyond, the whole output once.
GARMENTS_LISTED_ONE_BY_ONE = 32
CONCURRENT_REQUESTS = 16


def _map(function, items: list) -> list:
    with ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
        return list(pool.map(function, items))


def _listing(prefix: str) -> list[storage.ObjectInfo]:
    # The trailing '/' keeps garment 'tee' from listing garment 'tee-2' on S3.
    try:
        return storage.list_objects(prefix + "/" if storage.is_s3(prefix) else prefix)
    except InputError:
        return []  # no such folder: nothing is complete there


def _read_sidecar(uri: str) -> dict | None:
    """A sidecar, or None where it cannot be read or is not a JSON object (treated as absent)."""
    try:
        sidecar = json.loads(storage.read_bytes(uri))
    except (InputError, ValueError, RecursionError):
        return None
    return sidecar if isinstance(sidecar, dict) else None


def write_variant(output: str, job: Job, image: Image.Image, sidecar: dict) -> str:
    """Remove any old sidecar, write the image, then its new sidecar (which records the image's
    sha256, size and ETag). Returns the image URI. Cut short anywhere, no sidecar vouches for an
    image it does not describe: the job is incomplete and runs again."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    uri = image_uri(output, job)
    # An old sidecar with the same inputs key (a --force rerun) would vouch for the new image
    # if the run died between the image and the new sidecar.
    storage.delete(sidecar_uri(output, job))
    etag = storage.write_bytes(uri, data, content_type="image/png")
    image_record = {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if etag is not None:
        image_record["etag"] = etag
    sidecar = dict(sidecar, image={**image_record, "width": image.width, "height": image.height})
    sidecar.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    storage.write_bytes(sidecar_uri(output, job), json.dumps(sidecar, indent=2).encode(), content_type="application/json")
    return uri


# ----- run report -------------------------------------------------------------------------------

REPORT_COLUMNS = ("garment_id", "variant_id", "status", "qc_status", "error", "image_uri", "row")


def run_folder(output: str, run_id: str) -> str:
    return storage.join(output, RUNS, run_id)


def report_uri(output: str, run_id: str) -> str:
    return storage.join(run_folder(output, run_id), "report.csv")


def summarize(outcomes: list[JobOutcome]) -> dict:
    return {
        "jobs": len(outcomes),
        "status": dict(sorted(Counter(o.status for o in outcomes).items())),
        "qc_status": dict(sorted(Counter(o.qc_status for o in outcomes if o.qc_status).items())),
    }


def write_report(output: str, run_id: str, outcomes: list[JobOutcome], extra_summary: dict | None = None) -> str:
    """report.csv (one row per job, in manifest row order) and summary.json; returns the
    report's URI."""
    ordered = sorted(outcomes, key=lambda o: (o.row if o.row is not None else 0, o.garment_id, o.variant_id))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS)
    writer.writeheader()
    for outcome in ordered:
        writer.writerow({column: getattr(outcome, column) for column in REPORT_COLUMNS})
    folder = run_folder(output, run_id)
    report = report_uri(output, run_id)
    summary = dict(summarize(outcomes), run_id=run_id, report=report, **(extra_summary or {}))
    # The summary first: a report is what says the run is reported, and `fpdm retry` of it needs
    # the summary beside it (a run cut short between the two has neither, and `fpdm report`).
    storage.write_bytes(
        storage.join(folder, "summary.json"), json.dumps(summary, indent=2).encode(), content_type="application/json"
    )
    storage.write_bytes(report, buffer.getvalue().encode(), content_type="text/csv")
    return report


def read_report(uri: str) -> list[JobOutcome]:
    text = storage.read_bytes(uri).decode("utf-8")
    names = {f.name for f in fields(JobOutcome)}
    outcomes = []
    for record in csv.DictReader(io.StringIO(text)):
        values = {k: v for k, v in record.items() if k in names}
        values["row"] = int(values["row"]) if values.get("row") else None
        outcomes.append(JobOutcome(**values))
    return outcomes


# ----- contact sheet ----------------------------------------------------------------------------

TILE_HEIGHT = 256
# A sheet is a grid this many cells wide, and shows at most this many variants (the rest are counted).
CONTACT_SHEET_COLUMNS = 10
CONTACT_SHEET_MAX_VARIANTS = 199


def write_contact_sheet(output: str, garment_id: str) -> str | None:
    """One JPEG per garment: the source, then every finished variant as its target skeleton
    above the variant, framed in its QC colour and labelled. Built from the sidecars on storage,
    so it shows every variant of the garment, including those from earlier runs."""
    folder = storage.join(output, garment_id)
    sidecars = []
    # The trailing '/' keeps garment 'tee' from listing garment 'tee-2' on S3.
    for uri in storage.list_prefix(folder + "/" if storage.is_s3(folder) else folder):
        if uri.endswith(".json"):
            sidecars.append(_read_sidecar(uri))
    sidecars = [s for s in sidecars if s and s.get("garment_id") == garment_id and isinstance(s.get("image"), dict)]
    if not sidecars:
        return None
    sidecars.sort(key=lambda s: s["variant_id"])

    shown, hidden = sidecars[:CONTACT_SHEET_MAX_VARIANTS], len(sidecars) - CONTACT_SHEET_MAX_VARIANTS
    first = sidecars[0]
    variant_size = (first["image"]["width"], first["image"]["height"])
    scale = TILE_HEIGHT / variant_size[1]
    tile = (round(variant_size[0] * scale), TILE_HEIGHT)
    pad, label = 8, 34
    # A grid of cells (the source, then each variant: its skeleton above it), so that no garment,
    # however many variants it has, makes a sheet wider than JPEG's 65,500 pixels.
    cell = (tile[0] + pad, 2 * tile[1] + 3 * pad + label)
    columns = min(CONTACT_SHEET_COLUMNS, 1 + len(shown))
    rows = -(-(1 + len(shown)) // columns)
    sheet = Image.new("RGB", (columns * cell[0] + pad, rows * cell[1]), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)

    def corner(index: int) -> tuple[int, int]:
        return pad + (index % columns) * cell[0], pad + (index // columns) * cell[1]

    try:
        source = decode_image(storage.read_bytes(first["source"]["uri"]), first["source"]["uri"])
        geometry = ModelGeometry(height=variant_size[1], width=variant_size[0])
        sheet.paste(geometry.photo(source).resize(tile), (pad, pad))
        draw.text((pad, 2 * pad + tile[1]), "source", fill=(0, 0, 0))
    except InputError:
        draw.text((pad, pad), "source unreadable", fill=(200, 0, 0))
    if hidden > 0:
        draw.text((pad, 2 * pad + tile[1] + 18), f"+{hidden} variants not shown", fill=(200, 0, 0))

    for index, sidecar in enumerate(shown, start=1):
        x, y = corner(index)
        keypoints = Keypoints.from_json(sidecar["keypoints"]).fitted(*variant_size, mode="pad")
        sheet.paste(render_skeleton(keypoints).resize(tile), (x, y))
        try:
            variant = decode_image(storage.read_bytes(sidecar["image"]["uri"]), sidecar["image"]["uri"])
        except InputError:
            continue
        status = sidecar.get("qc", {}).get("status", "")
        top = y + pad + tile[1]
        colour = QC_COLOURS.get(status, (120, 120, 120))
        draw.rectangle((x - 4, top - 4, x + tile[0] + 3, top + tile[1] + 3), fill=colour)
        sheet.paste(variant.resize(tile), (x, top))
        draw.text((x, top + tile[1] + 6), sidecar["variant_id"][:24], fill=(0, 0, 0))
        draw.text((x, top + tile[1] + 18), f"QC {status or '?'}", fill=colour)

    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=88)
    uri = storage.join(folder, CONTACT_SHEET)
    storage.write_bytes(uri, buffer.getvalue(), content_type="image/jpeg")
    return uri
