"""`fpdm run` end to end over S3 (moto's server on 127.0.0.1), as an operator runs it: the
flow on Prefect's embedded server, the tiny model, the shared photos plus bad rows; then a
rerun that writes nothing, and `fpdm retry` of the failed jobs once the bad photo is fixed."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from PIL import Image

from pipeline import storage
from pipeline.leases import Lease, current_holder
from pipeline.outputs import read_report

pytestmark = pytest.mark.slow  # `fpdm run` three times in subprocesses over the moto S3 server: a minute and more

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "catalog"
TEE = "img/MEN/Tees_Tanks/id_00004047/01_1_front.jpg"
BLOUSE = "img/WOMEN/Blouses_Shirts/id_00001530/01_4_full.jpg"
SIDE = "pose/MEN/Tees_Tanks/id_00004047/01_2_side.txt"
BACK = "pose/MEN/Tees_Tanks/id_00004047/01_3_back.txt"

MANIFEST = """garment_id,source_image,target_pose,steps
tee,sources/tee.jpg,poses/side.txt,2
tee,sources/tee.jpg,poses/back.txt,2
blouse,sources/blouse.jpg,poses/side.txt,2
missing,sources/absent.jpg,poses/side.txt,2
corrupt,sources/corrupt.jpg,poses/back.txt,2
../../etc,sources/tee.jpg,poses/side.txt,2
"""
GOOD = {"tee/side", "tee/back", "blouse/side"}


def fpdm(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fpdm_cli.main", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def catalog(s3, deepfashion_dir, tmp_path):
    client = boto3.client("s3")
    for key, path in {
        "sources/tee.jpg": TEE,
        "sources/blouse.jpg": BLOUSE,
        "poses/side.txt": SIDE,
        "poses/back.txt": BACK,
    }.items():
        client.put_object(Bucket=BUCKET, Key=f"in/{key}", Body=(deepfashion_dir / path).read_bytes())
    client.put_object(Bucket=BUCKET, Key="in/sources/corrupt.jpg", Body=(deepfashion_dir / TEE).read_bytes()[:3000])
    client.put_object(Bucket=BUCKET, Key="in/manifest.csv", Body=MANIFEST.encode())
    # The subprocess gets the test server's endpoint and credentials, and a Prefect home of its own.
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_LOGGING_LEVEL", None)  # as a user runs it: the flows' fixture sets WARNING for in-process tests
    return client, env


def _variant_objects(client):
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix="out/").get("Contents", [])
    return {
        o["Key"]: (o["ETag"], o["LastModified"])
        for o in listing
        if not o["Key"].startswith(("out/_runs/", "out/_cache/", "out/_lease.json"))
    }


def _report(stdout):
    [line] = [line for line in stdout.splitlines() if line.startswith("report: ")]
    uri = line.removeprefix("report: ")
    return uri, {(o.job_id if o.variant_id else f"row {o.row}"): o for o in read_report(uri)}


def test_fpdm_run_over_s3_then_rerun_then_retry(catalog):
    client, env = catalog
    manifest, output = f"s3://{BUCKET}/in/manifest.csv", f"s3://{BUCKET}/out"
    # A dry run says what a run would do and writes its plan only.
    dry = fpdm(
        "run", manifest, "--output", output, "--model", "tiny", "--device", "cpu", "--batch-size", "2", "--dry-run", env=env
    )
    assert dry.returncode == 0, dry.stderr
    assert "to generate: 4 jobs, 4 images, 2 batches, 1 chunks" in dry.stdout  # corrupt.jpg's header reads
    assert "to fail:     2 jobs" in dry.stdout and "failed  missing/side: row 5, source_image:" in dry.stdout
    assert not _variant_objects(client)

    first = fpdm("run", manifest, "--output", output, "--model", "tiny", "--device", "cpu", "--batch-size", "2", env=env)

    assert first.returncode == 1, first.stderr
    uri, report = _report(first.stdout)
    assert uri.startswith(f"s3://{BUCKET}/out/_runs/") and uri.endswith("/report.csv")
    assert {job for job, o in report.items() if o.status == "succeeded"} == GOOD
    for job in GOOD:
        garment, variant = job.split("/")
        png = storage.read_bytes(f"{output}/{garment}/{variant}.png")
        sidecar = json.loads(storage.read_bytes(f"{output}/{garment}/{variant}.json"))
        assert Image.open(io.BytesIO(png)).size == (48, 64)
        assert sidecar["job_id"] == job and sidecar["qc"]["status"] == report[job].qc_status
    source = f"s3://{BUCKET}/in/sources"
    assert report["missing/side"].error == f"row 5, source_image: {source}/absent.jpg: no such object"
    assert report["corrupt/back"].error.startswith(f"row 6, source_image: {source}/corrupt.jpg: not a readable image")
    assert report["row 7"].error.startswith("row 7, garment_id: '../../etc' is not a safe id")
    assert "failed  missing/side: row 5, source_image:" in first.stdout  # the final table lists failures
    written = _variant_objects(client)
    assert current_holder(output) is None  # the run released the output when it ended

    # Another run works on the output: a run stops at once with one line naming it.
    other = Lease(output, "nightly-run")
    other.acquire()
    busy = fpdm("run", manifest, "--output", output, "--model", "tiny", "--device", "cpu", env=env)
    assert busy.returncode == 3
    [error] = [line for line in busy.stderr.splitlines() if line.startswith("fpdm: error:")]
    assert error.startswith(f"fpdm: error: {output} is in use by run nightly-run on host {other.record.host} since ")
    assert "Traceback" not in busy.stderr  # one line says it all (Prefect may log its own shutdown after it)
    other.release()

    # The same run again: nothing is written, every good job is skipped.
    second = fpdm("run", manifest, "--output", output, "--model", "tiny", "--device", "cpu", env=env)
    assert second.returncode == 1  # the bad rows are still bad
    _, again = _report(second.stdout)
    assert {job for job, o in again.items() if o.status == "skipped"} == GOOD
    assert _variant_objects(client) == written

    # The photo is fixed; `fpdm retry` runs the failed jobs of the first report, and only those.
    client.put_object(
        Bucket=BUCKET,
        Key="in/sources/corrupt.jpg",
        Body=client.get_object(Bucket=BUCKET, Key="in/sources/tee.jpg")["Body"].read(),
    )
    retried = fpdm("retry", uri, env=env)
    assert retried.returncode == 1  # the missing photo and the unsafe id still fail
    _, retry_report = _report(retried.stdout)
    assert {job: o.status for job, o in retry_report.items()} == {
        "missing/side": "failed", "corrupt/back": "succeeded", "row 7": "failed",
    }  # fmt: skip
    new = set(_variant_objects(client)) - set(written)
    assert new == {"out/corrupt/back.png", "out/corrupt/back.json", "out/corrupt/contact_sheet.jpg"}


def test_fpdm_run_refuses_an_unusable_manifest_or_setting_before_starting(tmp_path, capsys):
    from fpdm_cli.main import main

    no_column = tmp_path / "m.csv"
    no_column.write_text("garment_id,source_image\ntee,a.jpg\n")
    assert main(["run", str(no_column), "--output", str(tmp_path / "out")]) == 2
    assert "target_pose" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text("garment_id,source_image,target_pose\ntee,a.jpg,b.json\n")
    assert main(["run", str(good), "--output", str(tmp_path / "out"), "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["run", str(good), "--output", str(tmp_path / "out"), "--batch-size", "0"]) == 2
    assert "batch size must be a whole number of at least 1, or auto; got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_dry_run_with_batch_size_auto_on_the_cpu_plans_batches_of_the_default(tmp_path):
    from synthetic import write_catalog_manifest

    example = write_catalog_manifest(tmp_path / "catalog", garments=3, seed=5)  # 9 jobs of one setting
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    output = tmp_path / "out"
    dry = fpdm(
        "run", str(example.manifest), "--output", str(output), "--model", "tiny", "--device", "cpu",
        "--pose-backend", "keypoints", "--batch-size", "auto", "--dry-run", env=env,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert "to generate: 9 jobs, 9 images, 2 batches, 1 chunks" in dry.stdout
    assert "batch size:  8 (auto on cpu: no device memory to measure there, so the default batch size 8)" in dry.stdout
    [plan] = output.glob("_runs/*/plan/plan.json")
    recorded = json.loads(plan.read_text())
    assert recorded["batch_size"] == 8 and recorded["settings"]["batch_size"] == "auto"
