"""A whole catalog run over S3 (moto's server on 127.0.0.1), through the pose-variants flow on
Prefect's real engine: every kind of bad input fails its own row with a clear message while the
good rows are generated, QC'd and written; a rerun skips finished work and writes no variant
twice."""

import hashlib
import io
import json
from dataclasses import dataclass

import boto3
import pytest
from PIL import Image

import flows.pose_variants as pv
from model_core.images import MAX_IMAGE_PIXELS
from model_core.pipeline_fpdm import model_checksum
from pipeline import storage
from pipeline.outputs import read_report
from pipeline.planning import stable_seed
from pipeline.run import RunSettings

BUCKET = "catalog"
TEE = "img/MEN/Tees_Tanks/id_00004047/01_1_front.jpg"
BLOUSE = "img/WOMEN/Blouses_Shirts/id_00001530/01_4_full.jpg"
SIDE = "pose/MEN/Tees_Tanks/id_00004047/01_2_side.txt"
FULL = "pose/MEN/Tees_Tanks/id_00004047/01_7_additional.txt"
BACK = "pose/MEN/Tees_Tanks/id_00004047/01_3_back.txt"
REFERENCE_PHOTO = "img/WOMEN/Shorts/id_00005138/03_4_full.jpg"

MANIFEST = """garment_id,source_image,target_pose,variant_id,seed,steps,num_candidates,enabled,season
tee,sources/tee.jpg,poses/side.txt,side,1,3,,,SS26
tee,sources/tee.jpg,poses/shorts-full.jpg,from-photo,2,3,2,,SS26
blouse,sources/blouse.jpg,poses/library/,,,3,,,
missing,sources/absent.jpg,poses/side.txt,,,3,,,
corrupt,sources/corrupt.jpg,poses/side.txt,,,3,,,
dot,sources/dot.png,poses/side.txt,,,3,,,
bomb,sources/bomb.png,poses/side.txt,,,3,,,
nobody,sources/tee.jpg,poses/wall.jpg,,,3,,,
../escape,sources/tee.jpg,poses/side.txt,,,3,,,
tee,sources/tee.jpg,poses/side.txt,../../../x,,3,,,
tee,sources/tee.jpg,poses/side.txt,seven,seven,3,,,
tee,sources/tee.jpg,poses/side.txt,off,,3,,no,
gone,sources/tee.jpg,poses/absent.json,,,3,,,
"""
GOOD_JOBS = {"tee/side", "tee/from-photo", "blouse/back", "blouse/full"}


def _encoded(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def catalog(s3, deepfashion_dir):
    """The shared photos, broken photos and a manifest with a row for every kind of bad input."""
    client = boto3.client("s3")

    def put(key, data):
        client.put_object(Bucket=BUCKET, Key=f"in/{key}", Body=data)

    put("sources/tee.jpg", (deepfashion_dir / TEE).read_bytes())
    put("sources/blouse.jpg", (deepfashion_dir / BLOUSE).read_bytes())
    put("poses/side.txt", (deepfashion_dir / SIDE).read_bytes())
    put("poses/library/back.txt", (deepfashion_dir / BACK).read_bytes())
    put("poses/library/full.txt", (deepfashion_dir / FULL).read_bytes())
    put("poses/library/notes.md", b"not a pose")
    put("poses/shorts-full.jpg", (deepfashion_dir / REFERENCE_PHOTO).read_bytes())
    put("poses/wall.jpg", _encoded(Image.linear_gradient("L").convert("RGB").resize((300, 400)), "JPEG"))
    jpeg = (deepfashion_dir / TEE).read_bytes()
    put("sources/corrupt.jpg", jpeg[: len(jpeg) // 3])
    put("sources/dot.png", _encoded(Image.new("RGB", (1, 1)), "PNG"))
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    put("sources/bomb.png", _encoded(Image.new("1", (side, side)), "PNG"))
    put("manifest.csv", MANIFEST.encode())
    return client


def _objects(client, prefix):
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {item["Key"]: (item["ETag"], item["LastModified"]) for item in listing}


SETTINGS = RunSettings(model="tiny", batch_size=3, pose_backend="mediapipe", device="cpu")

pytestmark = pytest.mark.slow  # a Prefect server and several flow runs over S3: half a minute


@dataclass
class Run:
    run_id: str
    report_uri: str
    outcomes: list


def run_catalog(manifest: str, output: str, settings: RunSettings) -> Run:
    state = pv.pose_variants(manifest, output, **settings.as_parameters(), return_state=True)
    run_id = str(state.state_details.flow_run_id)
    report = f"{output}/_runs/{run_id}/report.csv"
    return Run(run_id, report, read_report(report))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_rows_fail_alone_good_rows_are_written_and_a_rerun_skips_them(prefect_server, catalog, deepfashion_dir, monkeypatch):
    result = run_catalog(f"s3://{BUCKET}/in/manifest.csv", f"s3://{BUCKET}/out", SETTINGS)

    by_row: dict[int, list] = {}
    for outcome in result.outcomes:
        by_row.setdefault(outcome.row, []).append(outcome)
    assert sorted(by_row) == list(range(2, 15))  # every manifest row is in the report

    succeeded = {o.job_id for o in result.outcomes if o.status == "succeeded"}
    assert succeeded == GOOD_JOBS  # a pose set row became two jobs; notes.md is no pose

    def error(row):
        [outcome] = by_row[row]
        assert outcome.status == "failed"
        return outcome.error

    src = f"s3://{BUCKET}/in/sources"
    assert error(5) == f"row 5, source_image: {src}/absent.jpg: no such object"
    assert error(6).startswith(f"row 6, source_image: {src}/corrupt.jpg: not a readable image")
    assert error(7).startswith(f"row 7, source_image: {src}/dot.png: image is 1x1")
    assert error(8).startswith(f"row 8, source_image: {src}/bomb.png: image is")
    assert error(9) == f"row 9, target_pose: s3://{BUCKET}/in/poses/wall.jpg: no person found in the image"
    assert error(10).startswith("row 10, garment_id: '../escape' is not a safe id")
    assert error(11).startswith("row 11, variant_id: '../../../x' is not a safe id")
    assert error(12).startswith("row 12, seed: 'seven' is not a whole number")
    assert [(o.status, o.error) for o in by_row[13]] == [("skipped", "disabled in the manifest (enabled = no)")]
    assert error(14) == f"row 14, target_pose: s3://{BUCKET}/in/poses/absent.json: no such object"

    # Outputs of the good jobs: image, then the sidecar that describes it.
    written = _objects(catalog, "")
    assert all(key.startswith(("in/", "out/")) for key in written)  # no id walked out of the prefix
    sidecar = json.loads(storage.read_bytes(f"s3://{BUCKET}/out/tee/from-photo.json"))
    png = storage.read_bytes(f"s3://{BUCKET}/out/tee/from-photo.png")
    assert sidecar["image"]["sha256"] == hashlib.sha256(png).hexdigest()
    assert Image.open(io.BytesIO(png)).size == (48, 64)  # the tiny model's frame
    assert sidecar["source"] == {
        "uri": f"{src}/tee.jpg",
        "sha256": hashlib.sha256((deepfashion_dir / TEE).read_bytes()).hexdigest(),
    }
    assert sidecar["pose"]["uri"] == f"s3://{BUCKET}/in/poses/shorts-full.jpg"
    assert sidecar["pose"]["detector"].startswith("mediapipe")
    assert sidecar["keypoints"]["format"] == "coco18"
    assert sidecar["model"]["name"] == "tiny" and sidecar["model"]["checksum"] == model_checksum("tiny")
    assert (sidecar["seed"], sidecar["steps"], sidecar["num_candidates"]) == (2, 3, 2)
    assert len(sidecar["candidates_qc"]) == 2 and sidecar["kept_candidate"] in (0, 1)
    assert sidecar["qc"]["status"] in ("pass", "review", "fail") and sidecar["qc"]["reasons"] is not None
    assert sidecar["extra"] == {"season": "SS26"} and sidecar["run_id"] == result.run_id
    assert sidecar["timings"]["generation_s"] > 0
    blouse = json.loads(storage.read_bytes(f"s3://{BUCKET}/out/blouse/back.json"))
    assert blouse["seed"] == stable_seed("blouse/back")  # no seed in the row: derived from the job id

    # The untrained tiny model renders noise: QC must say so rather than pass it.
    assert {o.qc_status for o in result.outcomes if o.status == "succeeded"} == {"fail"}

    # A detected reference photo is cached by content; contact sheets and the report are there.
    assert [k for k in written if k.startswith("out/_poses/")]
    for garment in ("tee", "blouse"):
        sheet = Image.open(io.BytesIO(storage.read_bytes(f"s3://{BUCKET}/out/{garment}/contact_sheet.jpg")))
        assert sheet.format == "JPEG" and sheet.width > sheet.height
    report = read_report(result.report_uri)

    assert sorted(report, key=repr) == sorted(result.outcomes, key=repr)
    summary = json.loads(storage.read_bytes(f"s3://{BUCKET}/out/_runs/{result.run_id}/summary.json"))
    assert summary["status"] == {"failed": 9, "skipped": 1, "succeeded": 4}

    # Rerun: nothing is generated again, nothing under the garments' folders is rewritten.
    # (The run folders and the lease, which every run takes and releases, change with each run.)
    before = {k: v for k, v in _objects(catalog, "out/").items() if not k.startswith(("out/_runs/", "out/_lease.json"))}
    reads = []
    read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri, **options: reads.append(str(uri)) or read_bytes(uri, **options))
    again = run_catalog(f"s3://{BUCKET}/in/manifest.csv", f"s3://{BUCKET}/out", SETTINGS)
    # The rerun downloaded no source of a complete variant: their fingerprints were cached, so
    # planning made a HEAD each. (The broken photos are read again, and fail again.)
    assert reads and not {f"{src}/tee.jpg", f"{src}/blouse.jpg"} & set(reads)
    after = {k: v for k, v in _objects(catalog, "out/").items() if not k.startswith(("out/_runs/", "out/_lease.json"))}
    assert after == before
    skipped = {o.job_id: o for o in again.outcomes if o.status == "skipped" and o.variant_id}
    assert set(skipped) == GOOD_JOBS
    assert skipped["tee/side"].image_uri == f"s3://{BUCKET}/out/tee/side.png" and skipped["tee/side"].qc_status == "fail"
    assert {o.row for o in again.outcomes if o.status == "failed"} == {5, 6, 7, 8, 9, 10, 11, 12, 14}


def test_a_changed_setting_regenerates_only_that_variant_and_force_regenerates_all(prefect_server, catalog):
    manifest = f"s3://{BUCKET}/in/manifest.csv"
    output = f"s3://{BUCKET}/out"
    run_catalog(manifest, output, SETTINGS)
    catalog.put_object(Bucket=BUCKET, Key="in/manifest.csv", Body=MANIFEST.replace("side,1,3", "side,9,3").encode())
    changed = run_catalog(manifest, output, SETTINGS)
    assert {o.job_id for o in changed.outcomes if o.status == "succeeded"} == {"tee/side"}
    assert json.loads(storage.read_bytes(f"{output}/tee/side.json"))["seed"] == 9

    forced = run_catalog(manifest, output, RunSettings(**{**SETTINGS.__dict__, "force": True}))
    assert {o.job_id for o in forced.outcomes if o.status == "succeeded"} == GOOD_JOBS
