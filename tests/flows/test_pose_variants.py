"""The pose-variants flow on Prefect's real engine: a failed batch fails the run, a retry of
that same flow run (the UI's Retry) regenerates only that batch, and shards split the work; one
run per output (its lease), and a parent that does not wait for shards that never started or
died."""

import json
from collections import Counter

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import Running, Scheduled

import flows.pose_variants as pv
import pipeline.execution as execution
from pipeline import outputs, storage
from pipeline.execution import claim_chunk
from pipeline.leases import Lease, current_holder
from pipeline.outputs import read_report
from pipeline.plans import load_plan
from pipeline.run import collect_outcomes
from pipeline.storage import TransientStorageError
from synthetic import render_person
from synthetic.writers import keypoints_json

POSES = ("01_2_side", "01_3_back")  # variant ids, as DeepFashion's file names would give them


@pytest.fixture
def catalog(tmp_path):
    """A manifest of 2 garments x 2 poses (synthetic photos and keypoint files) and an invalid row."""
    lines = ["garment_id,source_image,target_pose,steps"]
    for index, garment in enumerate(("tee", "blouse")):
        _, _, figures = render_person(seed=7, index=index)
        folder = tmp_path / garment
        folder.mkdir()
        figures[0][1].image.save(folder / "source.png")
        for name, (_, figure) in zip(POSES, figures[1:], strict=False):
            (folder / f"{name}.json").write_text(keypoints_json(figure.keypoints))
            lines.append(f"{garment},{folder / 'source.png'},{folder / name}.json,2")
    lines.append("bad id!,x.jpg,y.txt,2")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, tmp_path / "out"


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


@pytest.fixture
def batches_run(monkeypatch):
    """The garments of every batch the flow generated, and a switch that makes the blouse's
    batch fail the way a GPU fault would."""

    class Recorder:
        fail_blouse = False
        calls: list = []

    original = execution.generate_prepared

    def recording(pipe, prepared):
        garments = sorted({p.job.garment_id for p in prepared.batch.jobs})
        Recorder.calls.append(garments)
        if Recorder.fail_blouse and "blouse" in garments:
            raise RuntimeError("CUDA error: unspecified launch failure (simulated)")
        return original(pipe, prepared)

    monkeypatch.setattr(execution, "generate_prepared", recording)
    monkeypatch.setattr(pv, "generate_chunk", pv.generate_chunk.with_options(retry_delay_seconds=0))
    Recorder.calls = []
    return Recorder


pytestmark = pytest.mark.slow  # a Prefect server for the session and flow runs: half a minute

PARAMETERS = dict(model="tiny", batch_size=2, pose_backend="keypoints", device="cpu")


def test_a_failed_batch_fails_the_run_and_the_uis_retry_regenerates_only_that_batch(prefect_server, catalog, writes, batches_run):
    manifest, out = catalog
    batches_run.fail_blouse = True
    state = pv.pose_variants(str(manifest), str(out), **PARAMETERS, return_state=True)

    assert state.is_failed()
    assert "3 of 5 jobs failed" in state.message  # the blouse batch and the invalid row
    run_id = str(state.state_details.flow_run_id)
    report = {o.job_id: o for o in read_report(outputs.report_uri(str(out), run_id))}
    assert report["tee/01_2_side"].status == report["tee/01_3_back"].status == "succeeded"
    for job in ("blouse/01_2_side", "blouse/01_3_back"):
        assert report[job].status == "failed"
        assert "CUDA error: unspecified launch failure (simulated)" in report[job].error
    assert report["/"].row == 6 and report["/"].status == "failed"
    assert report["/"].error.startswith("row 6, garment_id: 'bad id!' is not a safe id")
    # The chunk's task was retried before the flow gave up on it (1 + 2 retries), and each retry
    # redid only the failed batch: the tee's variants were complete.
    assert batches_run.calls.count(["blouse"]) == 1 + pv.CHUNK_RETRIES
    assert batches_run.calls.count(["tee"]) == 1
    assert not (out / "blouse").exists()
    assert current_holder(str(out)) is None  # a failed run releases the output too

    # Say the first attempt had crashed instead, its lease still fresh: its Retry takes it over.
    Lease(str(out), run_id, attempt=1).acquire()

    # The operator clicks Retry in the UI: the same flow run goes back to AwaitingRetry and
    # runs again. The fault is gone by then.
    batches_run.fail_blouse = False
    batches_run.calls.clear()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Scheduled(name="AwaitingRetry"), force=True)
        retried = run_flow(pv.pose_variants, flow_run=client.read_flow_run(run_id), return_type="state")
        assert client.read_flow_run(run_id).run_count == 2

    assert retried.is_failed()  # the invalid row still fails; every job that can run did
    assert batches_run.calls == [["blouse"]]  # only the failed batch ran again
    report = {o.job_id: o for o in read_report(outputs.report_uri(str(out), run_id))}
    assert {job: o.status for job, o in report.items()} == {
        "tee/01_2_side": "succeeded", "tee/01_3_back": "succeeded",  # by this run's first attempt
        "blouse/01_2_side": "succeeded", "blouse/01_3_back": "succeeded",
        "/": "failed",
    }  # fmt: skip
    assert set(writes.values()) == {1} and len(writes) == 4  # no variant written twice
    sidecar = json.loads((out / "blouse" / "01_2_side.json").read_text())
    assert sidecar["run_id"] == run_id


def test_a_shard_executes_the_stored_plan_taking_only_unclaimed_chunks(prefect_server, catalog, writes, batches_run):
    manifest, out = catalog
    # A dry run plans and stores the plan, and generates nothing.
    planned = pv.pose_variants(str(manifest), str(out), **PARAMETERS, dry_run=True, return_state=True)
    run_id = str(planned.state_details.flow_run_id)
    assert planned.result()["counts"] == {
        "to_generate": 4, "images": 4, "chunks": 1, "batch_size": 2, "batch_size_reason": "given", "decided": {"failed": 1},
    }  # fmt: skip
    assert not writes and not batches_run.calls

    # Shards work under their run's lease (here held as its parent would).
    parent = Lease(str(out), run_id, attempt=1)
    parent.acquire()
    # Another shard of the run holds chunk 0: this one executes the same plan and takes nothing.
    assert claim_chunk(str(out), run_id, 1, 0, taker="another shard")
    shard = pv.pose_variants(str(manifest), str(out), **PARAMETERS, shard_of=run_id, attempt=1, return_state=True)
    assert shard.is_completed() and not batches_run.calls
    # In the next attempt the chunk is free again, and the shard runs it from the stored plan,
    # even after the manifest changed: a plan is the truth for its run.
    manifest.write_text(manifest.read_text().replace("tee,", "polo,"))
    # A shard of attempt 1 that starts now takes nothing: the lease is attempt 2's.
    Lease(str(out), run_id, attempt=2).acquire()
    late = pv.pose_variants(str(manifest), str(out), **PARAMETERS, shard_of=run_id, attempt=1, return_state=True)
    assert late.is_completed() and not batches_run.calls
    shard = pv.pose_variants(str(manifest), str(out), **PARAMETERS, shard_of=run_id, attempt=2, return_state=True)
    assert shard.is_completed()
    assert sorted(batches_run.calls) == [["blouse"], ["tee"]]
    assert dict(writes) == {job: 1 for job in writes} and len(writes) == 4
    outcomes = collect_outcomes(str(out), load_plan(str(out), run_id))
    assert Counter(o.status for o in outcomes) == {"succeeded": 4, "failed": 1}


def test_a_read_fault_in_a_shard_is_retried_and_every_job_is_done_exactly_once(
    prefect_server, catalog, writes, batches_run, monkeypatch
):
    manifest, out = catalog
    planned = pv.pose_variants(str(manifest), str(out), **PARAMETERS, dry_run=True, chunk_images=2, return_state=True)
    run_id = str(planned.state_details.flow_run_id)
    assert planned.result()["counts"]["chunks"] == 2  # a chunk per garment

    # The shard meets one S3 SlowDown reading the blouse's source photo while generating.
    faults = {"left": 1}
    read_bytes = storage.read_bytes

    def throttled_once(uri, **options):
        if str(uri).endswith("blouse/source.png") and faults["left"]:
            faults["left"] -= 1
            raise TransientStorageError(f"{uri}: S3 error SlowDown (transient)")
        return read_bytes(uri, **options)

    monkeypatch.setattr(storage, "read_bytes", throttled_once)
    Lease(str(out), run_id, attempt=1).acquire()  # the parent's, which its shards work under
    for _ in range(2):  # two shards of the run, one after the other here: the second finds nothing left
        shard = pv.pose_variants(str(manifest), str(out), **PARAMETERS, shard_of=run_id, attempt=1, return_state=True)
        assert shard.is_completed()
    assert faults["left"] == 0
    # The blouse's chunk failed reading its source (before the model) and its retry generated it.
    assert sorted(batches_run.calls) == [["blouse"], ["tee"]]
    outcomes = collect_outcomes(str(out), load_plan(str(out), run_id))
    assert Counter(o.status for o in outcomes) == {"succeeded": 4, "failed": 1}  # the invalid row
    assert set(writes.values()) == {1} and len(writes) == 4  # no job written twice, none missing


def test_a_second_run_on_the_same_output_fails_at_once_naming_the_holder(prefect_server, catalog, writes):
    manifest, out = catalog
    other = Lease(str(out), "nightly-run")
    other.acquire()
    state = pv.pose_variants(str(manifest), str(out), **PARAMETERS, return_state=True)
    assert state.is_failed()
    holder = f"{out} is in use by run nightly-run on host {other.record.host} since {other.record.since}"
    assert holder in state.message
    assert not writes and not (out / "_runs").exists()  # stopped before planning
    assert current_holder(str(out)).run_id == "nightly-run"  # and left the holder's lease alone

    other.release()
    state = pv.pose_variants(str(manifest), str(out), **PARAMETERS, return_state=True)
    assert "1 of 5 jobs failed" in state.message and len(writes) == 4  # only the invalid row
    assert current_holder(str(out)) is None
    record = json.loads((out / "_lease.json").read_text())
    assert record["run_id"] == str(state.state_details.flow_run_id) and record["released"]

    # A run that fails part-way (an unreadable manifest) releases the output as well.
    state = pv.pose_variants(str(out / "absent.csv"), str(out), **PARAMETERS, return_state=True)
    assert state.is_failed() and current_holder(str(out)) is None


def test_the_parent_does_not_wait_for_shards_that_never_started_and_fails_a_dead_shards_chunk(
    prefect_server, catalog, writes, batches_run, monkeypatch
):
    """Two shards: one died holding chunk 0 (its run still says Running), one never left
    Scheduled (its machine is down). The parent takes chunk 1, waits for the running shard until
    the deadline, then cancels both; the dead shard's jobs fail in the report, for a Retry."""
    manifest, out = catalog
    shards = {}

    def start_dead_and_stuck_shards(output, run_id, attempt, count, shard_deployment):
        with get_client(sync_client=True) as client:
            for name, state in (("dead", Running()), ("stuck", Scheduled())):
                child = client.create_flow_run(pv.pose_variants, parameters={"manifest": str(manifest), "output": output})
                client.set_flow_run_state(child.id, state, force=True)
                shards[name] = str(child.id)
        assert claim_chunk(output, run_id, attempt, 0, taker=shards["dead"])
        return list(shards.values())

    monkeypatch.setattr(pv, "start_shards", start_dead_and_stuck_shards)
    monkeypatch.setattr(pv, "SHARD_DEADLINE_S", 2)
    monkeypatch.setattr(pv, "CHILD_POLL_S", 0.5)
    state = pv.pose_variants(str(manifest), str(out), **PARAMETERS, chunk_images=2, shards=3, return_state=True)

    assert state.is_failed()
    run_id = str(state.state_details.flow_run_id)
    report = {o.job_id: o for o in read_report(outputs.report_uri(str(out), run_id))}
    dead_chunk = {p.job.job_id for p in load_chunk_jobs(out, run_id, 0)}
    assert len(dead_chunk) == 2 and len(writes) == 2 and not dead_chunk & set(writes)
    for job in dead_chunk:
        assert report[job].status == "failed"
        assert (
            report[job].error
            == "not generated: its shard did not finish it (see the run's shard_runs); a retry of the run redoes it"
        )
    assert {report[job].status for job in writes} == {"succeeded"}
    summary = json.loads((out / "_runs" / run_id / "summary.json").read_text())
    assert summary["shard_runs"] == {
        shards["dead"]: "cancelled: did not finish in time",
        shards["stuck"]: "cancelled: never started: every chunk was taken by the other runners",
    }
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(shards["stuck"]).state.is_cancelled()  # it will never start now
        assert client.read_flow_run(shards["dead"]).state.name == "Cancelling"  # its worker ends it, if alive
    assert current_holder(str(out)) is None


def load_chunk_jobs(out, run_id, index):
    from pipeline.plans import load_chunk

    return load_chunk(str(out), run_id, index).jobs


def test_a_transient_storage_error_in_the_flows_own_steps_is_retried_and_the_run_keeps_its_report(
    prefect_server, catalog, writes, monkeypatch
):
    """Finding the stored plan, claiming a chunk and gathering the outcomes run in the flow
    itself, outside any task. After an S3 outage has used up the SDK's retry quota, one 503
    there reached the flow and ended the run with no report (found by the chaos suite)."""
    manifest, out = catalog
    monkeypatch.setattr(pv, "FLOW_STEP_RETRY_DELAYS_S", (0, 0, 0))
    failures = Counter()

    def once(name):
        step = getattr(pv, name)

        def throttled(*args, **kwargs):
            if not failures[name]:
                failures[name] += 1
                raise TransientStorageError(f"{out}/...: S3 error SlowDown (transient)")
            return step(*args, **kwargs)

        monkeypatch.setattr(pv, name, throttled)

    for name in ("load_plan", "claim_chunk", "collect_outcomes"):
        once(name)
    state = pv.pose_variants(str(manifest), str(out), **PARAMETERS, return_state=True)

    assert failures == {"load_plan": 1, "claim_chunk": 1, "collect_outcomes": 1}
    report = {o.job_id: o.status for o in read_report(outputs.report_uri(str(out), str(state.state_details.flow_run_id)))}
    assert report == {
        "tee/01_2_side": "succeeded",
        "tee/01_3_back": "succeeded",
        "blouse/01_2_side": "succeeded",
        "blouse/01_3_back": "succeeded",
        "/": "failed",
    }
    assert set(writes.values()) == {1} and len(writes) == 4
