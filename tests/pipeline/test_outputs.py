"""What makes a variant complete, and what keeps a sidecar honest: the inputs key covers every
input that decides the image (new weights regenerate everything), a sidecar never vouches for
an image it does not describe (written after its image; an old one removed before the image is
replaced), and a replaced image is not complete, on disk and on S3."""

import dataclasses
import hashlib
import json

import pytest
from PIL import Image

from pipeline import outputs, storage
from pipeline.manifest import read_manifest
from pipeline.plans import plan_run
from pipeline.run import RunSettings, pose_resolver
from synthetic import write_catalog_manifest

SETTINGS = RunSettings(model="tiny", batch_size=2, pose_backend="keypoints", device="cpu")


@pytest.fixture
def manifest(tmp_path):
    """2 synthetic garments x 3 target poses (keypoint files)."""
    return str(write_catalog_manifest(tmp_path / "catalog", garments=2, seed=3).manifest)


def plan_jobs(manifest, out, run_id="run-1", force=False):
    settings = dataclasses.replace(SETTINGS, force=force)
    plan = plan_run(read_manifest(manifest), out, settings, run_id, pose_resolver(out, settings))
    return [planned for chunk in plan.chunks for planned in chunk.jobs]


def write_complete(out, planned, colour=(200, 40, 40)):
    """A variant as execution writes it: the image, then a sidecar with the planned inputs key."""
    sidecar = {"job_id": planned.job.job_id, "garment_id": planned.job.garment_id, "inputs_key": planned.inputs_key}
    outputs.write_variant(out, planned.job, Image.new("RGB", (32, 48), colour), sidecar)


def decisive_inputs():
    job = dict(seed=1, steps=20, guidance_scale=2.0, num_candidates=1)
    return {"source": "a" * 64, "pose": "b" * 64, "model": "c" * 64, **job}


@pytest.mark.parametrize("changed", ["source", "pose", "model", "seed", "steps", "guidance_scale", "num_candidates"])
def test_the_inputs_key_changes_with_every_input_that_decides_the_image(changed):
    from pipeline.planning import Job

    def key(inputs):
        job = Job(
            "tee",
            "side",
            2,
            "s.png",
            "p.json",
            inputs["seed"],
            inputs["steps"],
            inputs["guidance_scale"],
            inputs["num_candidates"],
        )
        return outputs.inputs_key(job, inputs["source"], inputs["pose"], inputs["model"])

    base = decisive_inputs()
    other = dict(base, **{changed: base[changed] + ("d" if isinstance(base[changed], str) else 1)})
    assert key(other) != key(base)
    assert key(dict(base)) == key(base)  # and nothing else (no clock, no run id) goes into it


def test_new_model_weights_regenerate_every_variant(manifest, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    jobs = plan_jobs(manifest, out)
    assert len(jobs) == 6
    for planned in jobs:
        write_complete(out, planned)
    assert plan_jobs(manifest, out, run_id="rerun") == []  # same inputs: every variant is complete

    # The model directory now holds retrained weights: its checksum changed.
    monkeypatch.setattr("pipeline.plans.model_checksum", lambda model: "retrained-weights")
    assert {p.job.job_id for p in plan_jobs(manifest, out, run_id="new-weights")} == {p.job.job_id for p in jobs}


def test_a_sidecar_is_written_only_after_its_image(manifest, out, monkeypatch):
    planned = plan_jobs(manifest, out)[0]
    write_bytes = storage.write_bytes

    def image_write_dies(uri, data, content_type=None):
        if str(uri).endswith(".png"):
            raise OSError("killed while writing the image (simulated)")
        return write_bytes(uri, data, content_type)

    monkeypatch.setattr(storage, "write_bytes", image_write_dies)
    with pytest.raises(OSError, match="killed"):
        write_complete(out, planned)
    assert not storage.exists(outputs.sidecar_uri(out, planned.job))  # nothing vouches for a missing image


def test_force_removes_the_old_sidecar_before_it_replaces_the_image(manifest, out, monkeypatch):
    jobs = plan_jobs(manifest, out)
    planned = jobs[0]
    write_complete(out, planned)
    assert set(outputs.complete_variants(out, [planned])) == {planned.job.job_id}

    # A --force rerun with the same inputs dies after the new image, before its sidecar.
    write_bytes = storage.write_bytes

    def dies_after_the_image(uri, data, content_type=None):
        version = write_bytes(uri, data, content_type)
        if str(uri).endswith(".png"):
            raise OSError("killed after writing the image (simulated)")
        return version

    monkeypatch.setattr(storage, "write_bytes", dies_after_the_image)
    with pytest.raises(OSError, match="killed"):
        write_complete(out, planned, colour=(10, 200, 10))
    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    # The old sidecar is gone, so the new image is not taken for the old one: the job runs again.
    assert not storage.exists(outputs.sidecar_uri(out, planned.job))
    assert outputs.complete_variants(out, jobs) == {}
    assert planned.job.job_id in {p.job.job_id for p in plan_jobs(manifest, out, run_id="after")}


def test_a_replaced_or_missing_image_is_not_complete(manifest, out):
    jobs = plan_jobs(manifest, out)
    for planned in jobs[:3]:
        write_complete(out, planned)
    assert set(outputs.complete_variants(out, jobs)) == {p.job.job_id for p in jobs[:3]}
    sidecar = json.loads(storage.read_bytes(outputs.sidecar_uri(out, jobs[0].job)))
    png = storage.read_bytes(outputs.image_uri(out, jobs[0].job))
    assert {key: sidecar["image"][key] for key in ("bytes", "sha256", "width", "height")} == {
        "bytes": len(png), "sha256": hashlib.sha256(png).hexdigest(), "width": 32, "height": 48,
    }  # fmt: skip
    storage.delete(outputs.image_uri(out, jobs[0].job))  # the image went missing
    storage.write_bytes(outputs.image_uri(out, jobs[1].job), b"cut short")  # the image was cut short
    assert set(outputs.complete_variants(out, jobs)) == {jobs[2].job.job_id}


def test_on_s3_an_image_replaced_by_another_of_the_same_size_is_not_complete(manifest, s3):
    out = "s3://catalog/out"
    planned = plan_jobs(manifest, out)[0]
    write_complete(out, planned)
    uri = outputs.image_uri(out, planned.job)
    data = storage.read_bytes(uri)
    sidecar = json.loads(storage.read_bytes(outputs.sidecar_uri(out, planned.job)))
    assert sidecar["image"]["etag"] == storage.stat(uri).version
    storage.write_bytes(uri, data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    assert outputs.complete_variants(out, [planned]) == {}
    storage.write_bytes(uri, data)  # the very bytes the sidecar describes: complete again
    assert set(outputs.complete_variants(out, [planned])) == {planned.job.job_id}


def test_a_sidecar_that_does_not_describe_its_image_is_not_complete(manifest, out):
    jobs = plan_jobs(manifest, out)
    for planned in jobs[:4]:
        write_complete(out, planned)

    def rewrite(planned, change):
        uri = outputs.sidecar_uri(out, planned.job)
        storage.write_bytes(uri, change(json.loads(storage.read_bytes(uri))))

    rewrite(jobs[0], lambda s: json.dumps({k: v for k, v in s.items() if k != "image"}).encode())  # no image entry
    rewrite(jobs[1], lambda s: json.dumps({**s, "image": {**s["image"], "uri": outputs.image_uri(out, jobs[2].job)}}).encode())
    rewrite(jobs[2], lambda s: json.dumps([s]).encode())  # JSON, but not a sidecar
    rewrite(jobs[3], lambda s: b"{not json")
    assert outputs.complete_variants(out, jobs) == {}


def test_with_many_garments_one_listing_of_the_output_decides(manifest, out, monkeypatch):
    monkeypatch.setattr(outputs, "GARMENTS_LISTED_ONE_BY_ONE", 1)  # 2 garments: the whole output is listed
    listed = []
    list_objects = storage.list_objects
    monkeypatch.setattr(storage, "list_objects", lambda prefix: listed.append(str(prefix)) or list_objects(prefix))
    jobs = plan_jobs(manifest, out)
    listed.clear()
    for planned in jobs[:2] + jobs[-1:]:
        write_complete(out, planned)
    assert len({p.job.garment_id for p in jobs}) == 2
    assert set(outputs.complete_variants(out, jobs)) == {p.job.job_id for p in jobs[:2] + jobs[-1:]}
    assert [prefix.rstrip("/") for prefix in listed] == [out]


def test_a_garment_with_hundreds_of_variants_gets_a_contact_sheet_in_rows(manifest, tmp_path):
    """A sheet one variant wide per column broke JPEG's 65,500-pixel limit at about 330 variants
    and cost the run its contact sheets; a grid of CONTACT_SHEET_COLUMNS, capped at
    CONTACT_SHEET_MAX_VARIANTS, fits any garment."""
    out = str(tmp_path / "out")
    planned = plan_jobs(manifest, out)[0]
    count = 400
    for index in range(count):
        job = dataclasses.replace(planned.job, variant_id=f"pose-{index:03d}")
        sidecar = {
            "job_id": job.job_id,
            "garment_id": job.garment_id,
            "variant_id": job.variant_id,
            "source": {"uri": job.source_image},
            "keypoints": json.loads(storage.read_bytes(job.target_pose)),
            "qc": {"status": "pass"},
        }
        outputs.write_variant(out, job, Image.new("RGB", (48, 64), (200, 40, 40)), sidecar)

    uri = outputs.write_contact_sheet(out, planned.job.garment_id)
    sheet = Image.open(uri)
    tile_width = round(48 * outputs.TILE_HEIGHT / 64)
    cell_height = 2 * outputs.TILE_HEIGHT + 3 * 8 + 34
    cells = 1 + outputs.CONTACT_SHEET_MAX_VARIANTS  # the source, then the variants shown
    assert sheet.width == outputs.CONTACT_SHEET_COLUMNS * (tile_width + 8) + 8 < 65_500
    assert sheet.height == -(-cells // outputs.CONTACT_SHEET_COLUMNS) * cell_height < 65_500
