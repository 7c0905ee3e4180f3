"""Batches at run time: shards split them the same way whatever is already finished, a retry
selects the failed jobs of a report, and a batch that runs out of GPU memory is split."""

import pytest
import torch

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline
from pipeline.manifest import read_manifest
from pipeline.outputs import write_report
from pipeline.planning import JobOutcome
from pipeline.run import RunSettings, Selection, Shard, plan_run, qc_detector, run_batch, run_catalog

POSES = ["01_1_front", "01_2_side", "01_3_back", "01_7_additional"]
SETTINGS = RunSettings(model="tiny", batch_size=2, pose_backend="keypoints", device="cpu")


@pytest.fixture
def manifest(tmp_path, deepfashion_dir):
    """3 garments x 4 poses (keypoint files), 2 steps."""

    lines = ["garment_id,source_image,target_pose,steps"]
    for garment in ("tee", "polo", "vest"):
        for pose in POSES:
            lines.append(f"{garment},{deepfashion_dir}/img/MEN/Tees_Tanks/id_00004047/01_1_front.jpg,"
                         f"{deepfashion_dir}/pose/MEN/Tees_Tanks/id_00004047/{pose}.txt,2")  # fmt: skip
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")

    return str(path)


def _job_ids(plan):
    return [p.job.job_id for batch in plan.batches for p in batch.jobs]


def test_shards_take_every_nth_batch_and_stay_disjoint_while_others_finish(manifest, tmp_path):
    out = str(tmp_path / "out")
    rows = read_manifest(manifest)
    whole = _job_ids(plan_run(rows, out, SETTINGS))
    assert len(whole) == 12
    first, second, third = (plan_run(rows, out, SETTINGS, shard=Shard(i, 3)) for i in range(3))
    assert sorted(_job_ids(first) + _job_ids(second) + _job_ids(third)) == sorted(whole)
    assert len(first.batches) == len(second.batches) == len(third.batches) == 2  # 6 batches of 2

    # Shard 0 finishes before shard 1 plans: shard 1 still gets exactly its own batches.
    run_catalog(manifest, out, SETTINGS, only=Selection(frozenset(_job_ids(first)), frozenset()))
    again = plan_run(rows, out, SETTINGS, shard=Shard(1, 3))
    assert _job_ids(again) == _job_ids(second)
    assert plan_run(rows, out, SETTINGS, shard=Shard(0, 3)).batches == []  # done: skipped
    assert {o.status for o in plan_run(rows, out, SETTINGS, shard=Shard(0, 3)).outcomes} == {"skipped"}
    # Problems found while planning are reported once, by shard 0.
    assert plan_run(rows, out, SETTINGS, shard=Shard(1, 3)).outcomes == []


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/3"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(InputError, match="shard"):
        Shard.parse(text)


def test_a_retry_selects_the_failed_jobs_and_rows_of_a_report(manifest, tmp_path):
    out = str(tmp_path / "out")
    report = write_report(out, "night", [
        JobOutcome("tee", "01_2_side", 3, "failed", error="batch failed"),
        JobOutcome("tee", "01_1_front", 2, "succeeded", "fail"),
        JobOutcome("", "", 14, "failed", error="row 14, garment_id: empty"),
    ])  # fmt: skip
    selection = Selection.failed_in(report)
    assert selection == Selection(frozenset({"tee/01_2_side"}), frozenset({14}))
    plan = plan_run(read_manifest(manifest), out, SETTINGS, only=selection)
    assert _job_ids(plan) == ["tee/01_2_side"]


def test_out_of_memory_splits_the_batch_until_it_fits(manifest, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    plan = plan_run(read_manifest(manifest), out, RunSettings(**{**SETTINGS.__dict__, "batch_size": 4}))
    batch = plan.batches[0]
    assert len(batch.jobs) == 4
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    calls = []
    generate = FPDMPipeline.__call__

    def one_image_at_most(self, sources, poses, seeds, **kwargs):
        calls.append(len(sources))
        if len(sources) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return generate(self, sources, poses, seeds, **kwargs)

    monkeypatch.setattr(FPDMPipeline, "__call__", one_image_at_most)
    outcomes = run_batch(pipe, batch, out, qc_detector(SETTINGS), plan.model_checksum)
    assert calls == [4, 2, 1, 1, 2, 1, 1]
    assert [o.status for o in outcomes] == ["succeeded"] * 4
    assert [o.job_id for o in outcomes] == [p.job.job_id for p in batch.jobs]

    # A single job that does not fit is an error for the caller (retry, or fail the job).
    def never_fits(self, sources, *args, **kwargs):
        calls.append(len(sources))
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(FPDMPipeline, "__call__", never_fits)
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        run_batch(pipe, plan.batches[1], out, qc_detector(SETTINGS), plan.model_checksum)
    assert calls == [4, 2, 1]
