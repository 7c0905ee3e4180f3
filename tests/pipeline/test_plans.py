"""A run's plan and its execution, without Prefect: planning reads no photo's pixels and, on a
rerun, no source at all; the stored plan is what chunks execute; one loop runs a chunk's
batches, splits a batch out of GPU memory, and leaves a failed batch to a retry that redoes only
what is unfinished; a chunk goes to one taker."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import pipeline.execution as execution
from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline
from pipeline import outputs, storage
from pipeline.execution import ChunkIncomplete, claim_chunk, execute_chunk, load_chunk_outcomes, run_batch
from pipeline.manifest import read_manifest
from pipeline.planning import JobOutcome
from pipeline.plans import load_chunk, load_plan, plan_run, store_plan
from pipeline.run import RunSettings, Selection, collect_outcomes, pose_resolver, qc_detector
from synthetic import write_catalog_manifest

SETTINGS = RunSettings(model="tiny", batch_size=2, pose_backend="keypoints", device="cpu")


@pytest.fixture
def manifest(tmp_path):
    """3 synthetic garments x 3 target poses (keypoint files), 2 sampling steps each."""
    example = write_catalog_manifest(tmp_path / "catalog", garments=3, seed=5)
    lines = example.manifest.read_text().splitlines()
    example.manifest.write_text("\n".join([lines[0] + ",steps", *(line + ",2" for line in lines[1:])]) + "\n")
    return str(example.manifest)


def planned(manifest, out, settings=SETTINGS, run_id="run-1", **options):
    plan = plan_run(read_manifest(manifest), out, settings, run_id, pose_resolver(out, settings), **options)
    store_plan(out, plan)
    return plan


@pytest.fixture
def reads(monkeypatch):
    """Every storage read, by URI."""
    counted = Counter()
    original = storage.read_bytes

    def counting(uri, **options):
        counted[str(uri)] += 1
        return original(uri, **options)

    monkeypatch.setattr(storage, "read_bytes", counting)
    return counted


@pytest.fixture
def writes(monkeypatch):
    """Every variant written, by job id."""
    written = Counter()
    original = outputs.write_variant

    def counting(output, job, image, sidecar):
        written[job.job_id] += 1
        return original(output, job, image, sidecar)

    monkeypatch.setattr(outputs, "write_variant", counting)
    return written


def test_planning_decodes_no_photo_and_a_rerun_reads_no_source(manifest, tmp_path, monkeypatch, reads):
    def no_decoding(*args, **kwargs):
        raise AssertionError("planning decoded a photo")

    monkeypatch.setattr(execution, "decode_image", no_decoding)
    out = str(tmp_path / "out")
    first = planned(manifest, out, chunk_images=4)
    assert first.jobs == 9 and first.images == 9
    assert [chunk.images for chunk in first.chunks] == [4, 4, 1]  # batches of 2 images, chunks of at most 4
    sources = {uri for uri in reads if uri.endswith("source.png")}
    assert len(sources) == 3 and all(reads[uri] == 1 for uri in sources)  # each source read once, to hash it

    reads.clear()
    planned(manifest, out, run_id="run-2")
    assert not [uri for uri in reads if uri.endswith("source.png")]  # fingerprints came from the cache


def test_the_stored_plan_is_what_executes(manifest, tmp_path):
    out = str(tmp_path / "out")
    plan = planned(manifest, out, chunk_images=4)
    stored = load_plan(out, "run-1")
    assert [c["images"] for c in stored.chunks] == [c.images for c in plan.chunks]
    for chunk in plan.chunks:
        assert load_chunk(out, "run-1", chunk.index).jobs == chunk.jobs
    # A plan folder without plan.json (planning cut short) is no plan.
    storage.delete(storage.join(out, "_runs", "run-1", "plan", "plan.json"))
    assert load_plan(out, "run-1") is None


def test_a_chunk_with_a_failed_batch_is_retried_and_redoes_only_the_unfinished(manifest, tmp_path, monkeypatch, writes):
    out = str(tmp_path / "out")
    plan = planned(manifest, out, chunk_images=4)
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    second_batch = plan.chunks[0].batches[1].jobs[0].job.job_id
    original = execution.generate_prepared
    fail = {"on": True}

    def flaky(pipe, prepared):
        if fail["on"] and prepared.batch.jobs[0].job.job_id == second_batch:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
        return original(pipe, prepared)

    monkeypatch.setattr(execution, "generate_prepared", flaky)
    detector = qc_detector(SETTINGS)
    with pytest.raises(ChunkIncomplete, match="illegal memory access"):
        execute_chunk(pipe, out, "run-1", 0, detector, plan.model_checksum)
    stored = {o.job_id: o for o in load_chunk_outcomes(out, "run-1", 0)}
    assert [o.status for o in stored.values()].count("succeeded") == 2
    assert all("illegal memory access" in o.error for o in stored.values() if o.status == "failed")

    fail["on"] = False
    outcomes = execute_chunk(pipe, out, "run-1", 0, detector, plan.model_checksum)
    assert {o.status for o in outcomes} == {"succeeded"} and len(outcomes) == 4
    assert set(writes.values()) == {1} and len(writes) == 4  # the retry wrote only the failed batch's jobs

    # The report accounts for every job: chunk 0's outcomes, the others' not generated yet.
    report = collect_outcomes(out, load_plan(out, "run-1"))
    assert len(report) == 9
    assert Counter(o.status for o in report) == {"succeeded": 4, "failed": 5}


def test_complete_means_the_image_is_there_as_its_sidecar_says(manifest, tmp_path):
    out = str(tmp_path / "out")
    plan = planned(manifest, out, chunk_images=2)
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    execute_chunk(pipe, out, "run-1", 0, qc_detector(SETTINGS), plan.model_checksum)
    jobs = plan.chunks[0].jobs
    assert set(outputs.complete_variants(out, jobs)) == {p.job.job_id for p in jobs}
    storage.delete(outputs.image_uri(out, jobs[0].job))  # the image went missing
    storage.write_bytes(outputs.image_uri(out, jobs[1].job), b"cut short")  # the image was replaced
    assert outputs.complete_variants(out, jobs) == {}
    pending = {p.job.job_id for chunk in planned(manifest, out, run_id="run-2").chunks for p in chunk.jobs}
    assert {jobs[0].job.job_id, jobs[1].job.job_id} <= pending  # a new run generates both again


def test_an_unreadable_sidecar_is_treated_as_absent(manifest, tmp_path):
    out = str(tmp_path / "out")
    plan = planned(manifest, out, chunk_images=4)
    execute_chunk(FPDMPipeline.from_pretrained("tiny", device="cpu"), out, "run-1", 0, qc_detector(SETTINGS), plan.model_checksum)
    jobs = plan.chunks[0].jobs
    key = jobs[0].inputs_key
    damaged = [
        json.dumps({"inputs_key": key}),  # the right key, but no image entry
        json.dumps({"inputs_key": key, "image": "a string"}),
        json.dumps({"inputs_key": key, "image": {"uri": ["a list"]}}),
        "[" * 60_000 + "]" * 60_000,
        "not json",
    ]
    for planned_job, text in zip(jobs, damaged, strict=False):
        storage.write_bytes(outputs.sidecar_uri(out, planned_job.job), text.encode())
    again = planned(manifest, out, run_id="run-2")
    pending = {p.job.job_id for chunk in again.chunks for p in chunk.jobs}
    assert {p.job.job_id for p in jobs} <= pending  # generated again, nothing crashed


def test_a_chunk_is_taken_once_per_attempt(tmp_path):
    out = str(tmp_path / "out")
    assert claim_chunk(out, "run-1", 1, 0, taker="a")
    assert not claim_chunk(out, "run-1", 1, 0, taker="b")
    assert claim_chunk(out, "run-1", 1, 1, taker="b")
    assert claim_chunk(out, "run-1", 2, 0, taker="b")  # an operator's Retry is a new attempt


def test_a_retry_selects_the_failed_jobs_and_rows_of_a_report(manifest, tmp_path):
    out = str(tmp_path / "out")
    job = load_first_job(manifest, out)
    report = outputs.write_report(out, "night", [
        JobOutcome(job.garment_id, job.variant_id, job.row, "failed", error="batch failed"),
        JobOutcome("other", "front", 2, "succeeded", "fail"),
        JobOutcome("", "", 14, "failed", error="row 14, garment_id: empty"),
    ])  # fmt: skip
    selection = Selection.failed_in(report)
    assert selection == Selection(frozenset({job.job_id}), frozenset({14}))
    plan = planned(manifest, out, run_id="retry", keep=selection.keeps)
    assert [p.job.job_id for chunk in plan.chunks for p in chunk.jobs] == [job.job_id]


def load_first_job(manifest, out):
    return planned(manifest, out, run_id="look").chunks[0].jobs[0].job


def raising_above_one_image(error: Exception, calls: list[int]):
    """The model's call, raising `error` for any batch of more than one image (the size of each
    call goes to `calls`): a device on which only one image fits."""
    generate = FPDMPipeline.__call__

    def one_image_at_most(self, sources, poses, seeds, **kwargs):
        calls.append(len(sources))
        if len(sources) > 1:
            raise error
        return generate(self, sources, poses, seeds, **kwargs)

    return one_image_at_most


def test_out_of_memory_splits_the_batch_until_it_fits(manifest, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    settings = RunSettings(**{**SETTINGS.__dict__, "batch_size": 3})
    plan = planned(manifest, out, settings)
    batch = plan.chunks[0].batches[0]
    assert len(batch.jobs) == 3
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    calls = []
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(FPDMPipeline, "__call__", raising_above_one_image(error, calls))
    outcomes = run_batch(pipe, batch, out, qc_detector(settings), plan.model_checksum)
    assert calls == [3, 1, 2, 1, 1]
    assert [o.status for o in outcomes] == ["succeeded"] * 3
    assert [o.job_id for o in outcomes] == [p.job.job_id for p in batch.jobs]

    # A single job that does not fit is an error for the caller (retry, or fail the job).
    def never_fits(self, sources, *args, **kwargs):
        calls.append(len(sources))
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(FPDMPipeline, "__call__", never_fits)
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        run_batch(pipe, plan.chunks[0].batches[1], out, qc_detector(settings), plan.model_checksum)
    assert calls == [3, 1]


def test_pipelined_and_sequential_execution_write_the_same_variants(manifest, tmp_path):
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    written = {}
    for pipelined in (False, True):
        out = tmp_path / f"out-{pipelined}"
        plan = planned(manifest, str(out))
        assert len(plan.chunks) == 1 and len(plan.chunks[0].batches) == 5
        outcomes = execute_chunk(pipe, str(out), "run-1", 0, qc_detector(SETTINGS), plan.model_checksum, pipelined=pipelined)
        assert [o.status for o in outcomes] == ["succeeded"] * 9
        images = {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.glob("*/*.png"))}
        sidecars = {}
        for path in sorted(out.glob("*/*.json")):
            sidecar = json.loads(path.read_text())
            del sidecar["timings"], sidecar["created"]
            sidecar["image"]["uri"] = str(Path(sidecar["image"]["uri"]).relative_to(out))
            sidecars[str(path.relative_to(out))] = sidecar
        written[pipelined] = (images, sidecars)
    assert len(written[True][0]) == 9
    assert written[True] == written[False]  # byte-identical images, the same sidecars but timings


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    ],
)
def test_out_of_memory_from_cuda_libraries_splits_the_batch_too(manifest, tmp_path, monkeypatch, error):
    out = str(tmp_path / "out")
    plan = planned(manifest, out, RunSettings(**{**SETTINGS.__dict__, "batch_size": 3}))
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    calls = []
    monkeypatch.setattr(FPDMPipeline, "__call__", raising_above_one_image(error, calls))
    outcomes = run_batch(pipe, plan.chunks[0].batches[0], out, qc_detector(SETTINGS), plan.model_checksum)
    assert calls == [3, 1, 2, 1, 1] and [o.status for o in outcomes] == ["succeeded"] * 3

    def a_bug(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")

    monkeypatch.setattr(FPDMPipeline, "__call__", a_bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # not split: a bug fails its batch
        run_batch(pipe, plan.chunks[0].batches[1], out, qc_detector(SETTINGS), plan.model_checksum)


def test_an_input_over_the_byte_cap_fails_its_jobs_at_planning(manifest, tmp_path):
    from dataclasses import replace

    rows = read_manifest(manifest).rows
    source, pose = rows[0].source_image, rows[0].target_pose
    cap = max(Path(pose).stat().st_size, Path(source).stat().st_size) - 1
    settings = replace(SETTINGS, max_input_bytes=cap)
    plan = planned(manifest, str(tmp_path / "out"), settings=settings)
    errors = {o.error for o in plan.outcomes if o.row == rows[0].row}
    too_large = f"bytes, over the {cap}-byte limit for an input (max_input_bytes)"
    assert len(errors) == 1 and too_large in errors.pop()


class FixedDetector:
    """A pose detector that finds the same standing pose on any photo, under a given identity."""

    def __init__(self, identity: str):
        self.identity = identity

    def detect(self, image, name):
        from model_core.keypoints import Keypoints

        points = [[image.width / 2, image.height * (0.1 + 0.04 * i), 1.0] for i in range(18)]
        return Keypoints(points, image.width, image.height)


def test_the_pose_detector_is_part_of_a_photo_poses_inputs_key(manifest, tmp_path):
    from PIL import Image

    from pipeline.planning import PoseResolver

    rows = read_manifest(manifest).rows
    reference = Path(rows[0].source_image).with_name("reference.png")
    Image.open(rows[1].source_image).save(reference)
    photo_pose = tmp_path / "photo-pose.csv"
    photo_pose.write_text(
        f"garment_id,source_image,target_pose,variant_id,steps\n"
        f"tee,{rows[0].source_image},{reference},from-photo,2\n"
        f"tee,{rows[0].source_image},{rows[0].target_pose},from-file,2\n"
    )
    out = str(tmp_path / "out")

    def plan_with(identity):
        resolver = PoseResolver(out, lambda: FixedDetector(identity), "auto")
        plan = plan_run(read_manifest(str(photo_pose)), out, SETTINGS, "run", resolver)
        return {p.job.variant_id: p for chunk in plan.chunks for p in chunk.jobs}, plan

    first, _ = plan_with("mediapipe-0.10")
    for planned_job in first.values():
        outputs.write_variant(out, planned_job.job, Image.new("RGB", (48, 64)), {"inputs_key": planned_job.inputs_key})

    same, _ = plan_with("mediapipe-0.10")
    assert same == {}  # both complete
    switched, plan = plan_with("openpose-body25")
    assert set(switched) == {"from-photo"}  # the photo's pose is regenerated; the keypoint file's is not
    assert [o.variant_id for o in plan.outcomes if o.status == "skipped"] == ["from-file"]


def test_auto_batch_size_on_the_cpu_plans_with_the_default_and_records_it(manifest, tmp_path, monkeypatch):
    import pipeline.run as run

    def no_model(*args):
        raise AssertionError("auto off CUDA loaded the model")

    monkeypatch.setattr(run, "shared_model", no_model)
    out = str(tmp_path / "out")
    settings = RunSettings(**{**SETTINGS.__dict__, "batch_size": "auto"})
    stored = run.plan_and_store(read_manifest(manifest), out, settings, "run-auto", chunk_images=100)
    assert stored.batch.size == run.DEFAULT_BATCH_SIZE == 8
    assert stored.batch.reason.startswith("auto on cpu: no device memory to measure")
    assert stored.settings["batch_size"] == "auto"  # a retry resolves it again, on its own device
    assert [len(batch.jobs) for batch in load_chunk(out, "run-auto", 0).batches] == [8, 1]  # 9 jobs
    recorded = json.loads(storage.read_bytes(storage.join(out, "_runs", "run-auto", "plan", "plan.json")))
    assert (recorded["batch_size"], recorded["batch_size_reason"]) == (8, stored.batch.reason)


@pytest.mark.parametrize("value", [0, -3, "big", "8.0", 2.5, True, None, ""])
def test_a_batch_size_other_than_a_positive_whole_number_or_auto_is_refused(value):
    from model_core.errors import InputError

    with pytest.raises(InputError, match=r"batch size must be a whole number of at least 1, or auto; got "):
        RunSettings(batch_size=value)


def test_a_batch_size_given_as_text_is_a_number():
    assert RunSettings(batch_size="12").batch_size == 12 and RunSettings(batch_size="auto").batch_size == "auto"


def test_the_report_of_a_run_that_died_is_rebuilt_from_its_plan_chunks_and_sidecars(manifest, tmp_path, capsys):
    """Chunk 0 finished; chunk 1's worker was killed after writing three of its four variants
    (no stored outcomes); chunk 2 was never taken. `fpdm report` accounts for every job."""
    from fpdm_cli.main import main
    from pipeline.leases import Lease
    from pipeline.run import rebuild_report

    out = str(tmp_path / "out")
    plan = planned(manifest, out, chunk_images=4)
    assert [c.images for c in plan.chunks] == [4, 4, 1]
    pipe, detector = FPDMPipeline.from_pretrained("tiny", device="cpu"), qc_detector(SETTINGS)
    for index in (0, 1):
        execute_chunk(pipe, out, "run-1", index, detector, plan.model_checksum)
    storage.delete(execution.outcomes_uri(out, "run-1", 1))
    lost = plan.chunks[1].jobs[-1].job
    storage.delete(outputs.sidecar_uri(out, lost))  # killed between its image and its sidecar

    lease = Lease(out, "run-1")
    lease.acquire()
    assert main(["report", out, "run-1"]) == 2
    assert "run run-1 is still working on" in capsys.readouterr().err
    lease.release()

    assert main(["report", out, "run-1"]) == 0
    report = capsys.readouterr().out.strip()
    assert report == outputs.report_uri(out, "run-1")
    outcomes = {o.job_id: o for o in outputs.read_report(report)}
    assert len(outcomes) == 9 + len(plan.outcomes)
    never_generated = {lost.job_id, plan.chunks[2].jobs[0].job.job_id}
    assert {job for job, o in outcomes.items() if o.status == "failed"} == never_generated
    assert all(o.error.startswith("not generated: the run ended before") for job, o in outcomes.items() if job in never_generated)
    assert Selection.failed_in(report).job_ids == never_generated  # what `fpdm retry` of it redoes

    with pytest.raises(InputError, match="has its report already"):
        rebuild_report(out, "run-1")
    with pytest.raises(InputError, match="is not a run's id"):
        rebuild_report(out, "../../etc")


def test_a_claim_retried_after_its_response_was_lost_is_still_its_takers(tmp_path):
    out = str(tmp_path / "out")
    assert claim_chunk(out, "run-1", 1, 0, taker="shard-a")
    assert claim_chunk(out, "run-1", 1, 0, taker="shard-a")  # the same process asking again: its own claim
    assert not claim_chunk(out, "run-1", 1, 0, taker="shard-b")


def test_a_report_is_written_after_its_summary_so_a_report_can_always_be_retried(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    written = []
    write_bytes = storage.write_bytes

    def recording(uri, data, content_type=None):
        written.append(uri.rsplit("/", 1)[-1])
        return write_bytes(uri, data, content_type)

    monkeypatch.setattr(storage, "write_bytes", recording)
    outputs.write_report(out, "run-1", [JobOutcome("tee", "side", 2, "succeeded")], {"manifest": "m.csv"})
    assert written == ["summary.json", "report.csv"]
