"""The nightly pose-variant job on Prefect.

    pose_variants   read the manifest → detect reference poses → plan batches (finished
                    variants skipped) → one task per batch: generate, QC, write → run report
                    and summary under {output}/_runs/{flow_run_id}/ → artifacts

With `shards=N` the flow is a parent: it detects the reference poses once, starts N-1 runs of
its own deployment (Prefect's workers of the GPU pool pick them up), runs shard 0 itself, waits,
and merges the shards' reports. Run outside a deployment (`fpdm run`), the shards run one after
the other in this process.

The domain is in `pipeline`; this module decides only what is a task (retried, visible in the
UI) and what a failure means for the run. A flow run with a failed job ends Failed, so the UI
offers Retry; a retry plans again and generates only the jobs without a complete sidecar.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run
from prefect.states import Failed

from model_core.errors import InputError
from pipeline import outputs, progress
from pipeline.manifest import Manifest, read_manifest
from pipeline.planning import FAILED, Batch, JobOutcome, expand_jobs, failed
from pipeline.run import (
    Plan,
    RunSettings,
    Selection,
    Shard,
    batch_failed,
    detect_reference_pose,
    finish_run,
    plan_run,
    qc_detector,
    reference_photos,
    run_batch,
    run_summary,
    shared_model,
)

# A batch on a GPU takes seconds to minutes; a hung one (a wedged driver) should not hold the
# worker all night. Retries cover transient faults: a flaky S3 read, a GPU reset.
BATCH_TIMEOUT_S = 30 * 60
BATCH_RETRIES = 2
BATCH_RETRY_DELAYS_S = [30, 120]
CHILD_POLL_S = 5


def _not_bad_input(task, task_run, state) -> bool:
    """Retry a task unless it failed on bad input, which fails the same way every time."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


# ----- tasks --------------------------------------------------------------------------------------


@task(name="read-manifest", retries=2, retry_delay_seconds=10, retry_condition_fn=_not_bad_input, cache_policy=NO_CACHE)
def read_manifest_task(manifest_uri: str) -> Manifest:
    return read_manifest(manifest_uri)


@task(name="detect-pose", task_run_name="detect-pose {uri}", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def detect_pose(uri: str, output: str, settings: RunSettings) -> str | None:
    """Detect one reference photo's pose into the output's pose cache (a later run, or another
    shard, reads it from there). Returns the error for a photo with no person, else None."""
    return detect_reference_pose(uri, output, settings)


@task(name="plan", retries=2, retry_delay_seconds=10, retry_condition_fn=_not_bad_input, cache_policy=NO_CACHE)
def plan(manifest: Manifest, output: str, settings: RunSettings, shard: Shard, only: Selection | None) -> Plan:
    return plan_run(manifest, output, settings, shard=shard, only=only)


@task(
    name="generate-batch",
    task_run_name="batch-{batch.batch_id}",
    tags=["gpu"],  # a concurrency limit on this tag keeps two batches off one GPU
    retries=BATCH_RETRIES,
    retry_delay_seconds=BATCH_RETRY_DELAYS_S,
    timeout_seconds=BATCH_TIMEOUT_S,
    cache_policy=NO_CACHE,  # idempotence comes from the sidecars, not from Prefect's cache
)
def generate_batch(batch: Batch, output: str, settings: RunSettings, model_checksum: str, context: dict) -> list[JobOutcome]:
    pipe = shared_model(settings.model, settings.device)
    return run_batch(pipe, batch, output, qc_detector(settings), model_checksum, settings.qc, context)


@task(name="write-report", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def write_report(output: str, run_id: str, outcomes: list[JobOutcome], summary: dict) -> str:
    return finish_run(output, run_id, outcomes, summary)


# ----- the flow -----------------------------------------------------------------------------------


# The run's settings default to RunSettings' defaults (pipeline/run.py), the one place they are set.
@flow(name="pose-variants")
def pose_variants(
    manifest: str,
    output: str,
    model: str = RunSettings.model,
    batch_size: int = RunSettings.batch_size,
    pose_backend: str = RunSettings.pose_backend,
    device: str = RunSettings.device,
    force: bool = RunSettings.force,
    shard: str | None = None,
    shards: int = 1,
    retry_of: str | None = None,
    openpose_weights: str | None = RunSettings.openpose_weights,
):
    """Pose variants for every row of a catalog manifest.

    manifest: CSV manifest (path or s3:// URI). output: where variants, contact sheets and run
    reports go. model: preset name or model directory. batch_size: images per model call.
    pose_backend: auto, openpose, mediapipe or keypoints. device: auto, cpu, cuda, cuda:N.
    force: regenerate finished variants. shard: 'INDEX/COUNT', this run's share of the batches.
    shards: split the run into this many shard runs. retry_of: a run report; only its failed
    jobs run. openpose_weights: folder or s3:// prefix (default $FPDM_OPENPOSE_WEIGHTS).
    """
    settings = RunSettings(
        model=model,
        batch_size=batch_size,
        pose_backend=pose_backend,
        openpose_weights=openpose_weights,
        device=device,
        force=force,
    )
    run_id = str(flow_run.id)
    only = Selection.failed_in(retry_of) if retry_of else None
    summary = run_summary(manifest, output, settings, flow_run=run_id, retry_of=retry_of, shard=shard)
    rows = read_manifest_task(manifest)
    if shard is None:
        # A shard's parent has detected them already; the shard finds them in the pose cache.
        detect_reference_poses(rows, output, settings, only)

    if shards > 1:
        outcomes = run_shards(rows, output, settings, shards, only, summary)
    else:
        outcomes = generate(rows, output, settings, Shard.parse(shard), only, run_id)

    report = write_report(output, run_id, outcomes, summary)
    publish_artifacts(report, outcomes)
    failures = [o for o in outcomes if o.status == FAILED]
    if failures:
        return Failed(message=f"{len(failures)} of {len(outcomes)} jobs failed; report: {report}")
    return {"report": report, **outputs.summarize(outcomes)}


def detect_reference_poses(rows: Manifest, output: str, settings: RunSettings, only: Selection | None) -> None:
    photos = reference_photos(rows, settings, only)
    progress.stage("poses", len(photos))
    for uri in photos:
        detect_pose(uri, output, settings)  # a photo with no person fails its rows at planning
        progress.advance("poses")


def generate(
    rows: Manifest, output: str, settings: RunSettings, shard: Shard, only: Selection | None, run_id: str
) -> list[JobOutcome]:
    """Plan this shard's batches and generate them, one task each. A batch that still fails
    after its retries fails its jobs with the error; the other batches go on."""
    planned = plan(rows, output, settings, shard, only)
    outcomes = list(planned.outcomes)
    context = {"manifest": rows.uri, "run_id": run_id}
    progress.stage("generate", planned.images)
    for batch in planned.batches:
        state = generate_batch(batch, output, settings, planned.model_checksum, context, return_state=True)
        if state.is_completed():
            outcomes += state.result()
        else:
            outcomes += batch_failed(batch, state.result(raise_on_failure=False))
            progress.advance("generate", batch.images)
    return outcomes


# ----- scale-out ----------------------------------------------------------------------------------


def run_shards(
    rows: Manifest, output: str, settings: RunSettings, shards: int, only: Selection | None, summary: dict
) -> list[JobOutcome]:
    """Shard i of N takes every N-th batch. From a deployment, shards 1..N-1 are new runs of the
    same deployment, for the work pool's workers to pick up, while this run does shard 0; without
    one, all shards run here in turn. Returns the merged outcomes: a job that no shard reported
    (its run crashed before writing a report) is failed, so nothing goes missing."""
    logger = get_run_logger()
    parameters = {
        "manifest": rows.uri, "output": output, **settings.as_parameters(), "retry_of": summary.get("retry_of"), "shards": 1
    }  # fmt: skip
    shard_runs: dict[int, str] = {}  # shard index -> flow run id
    if deployment.id is not None:
        name = f"{flow_run.flow_name}/{deployment.name}"
        for index in range(1, shards):
            child = run_deployment(name, parameters={**parameters, "shard": f"{index}/{shards}"}, timeout=0)
            shard_runs[index] = str(child.id)
            logger.info("shard %d/%d: flow run %s of %s", index, shards, child.name, name)
        local = [0]
    else:
        local = list(range(shards))
    for index in local:
        state = pose_variants(**{**parameters, "shard": f"{index}/{shards}"}, return_state=True)
        shard_runs[index] = str(state.state_details.flow_run_id)
    ended = wait_for_runs([shard_runs[i] for i in range(1, shards) if i not in local])
    summary["shard_runs"] = [shard_runs[i] for i in range(shards)]
    return merge_shard_reports(rows, output, settings, only, shard_runs, ended)


def wait_for_runs(flow_run_ids: list[str]) -> dict[str, str]:
    """Block until the runs are final; returns each run's final state name."""
    ended: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        while len(ended) < len(flow_run_ids):
            for run_id in flow_run_ids:
                if run_id not in ended:
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.is_final():
                        ended[run_id] = state.name
            if len(ended) < len(flow_run_ids):
                time.sleep(CHILD_POLL_S)
    return ended


def merge_shard_reports(
    rows: Manifest, output: str, settings: RunSettings, only: Selection | None, shard_runs: dict[int, str], ended: dict[str, str]
) -> list[JobOutcome]:
    merged: dict[str, JobOutcome] = {}
    lost: list[str] = []
    for index, run_id in sorted(shard_runs.items()):
        try:
            shard_outcomes = outputs.read_report(outputs.report_uri(output, run_id))
        except InputError:
            lost.append(f"shard {index} (flow run {run_id}, {ended.get(run_id, 'no state')})")
            continue
        for outcome in shard_outcomes:
            merged[f"{outcome.row}:{outcome.job_id}"] = outcome
    # Every job of the manifest must be accounted for.
    jobs, invalid = expand_jobs(rows, settings.defaults)
    expected = [o for o in invalid if only is None or only.keeps(o)]
    for job in jobs:
        if only is None or only.keeps(job):
            key = f"{job.row}:{job.job_id}"
            if key not in merged:
                merged[key] = failed(job, f"no shard reported this job; no report from {', '.join(lost) or 'any shard'}")
    for outcome in expected:
        merged.setdefault(f"{outcome.row}:{outcome.job_id}", outcome)
    return list(merged.values())


# ----- artifacts ----------------------------------------------------------------------------------


def publish_artifacts(report: str, outcomes: list[JobOutcome]) -> None:
    """What an operator sees on the flow run's page: counts, the failures, where the report is."""
    counts = outputs.summarize(outcomes)
    table = [{"status": status, "jobs": n} for status, n in counts["status"].items()]
    table += [{"status": f"qc {status}", "jobs": n} for status, n in counts["qc_status"].items()]
    create_table_artifact(table, key="pose-variants-summary", description="Jobs by status and by QC status")
    failures = [o for o in outcomes if o.status == FAILED]
    if failures:
        create_table_artifact(
            [{"row": o.row, "garment_id": o.garment_id, "variant_id": o.variant_id, "error": o.error} for o in failures],
            key="pose-variants-failures",
            description=f"{len(failures)} failed job(s)",
        )
    create_markdown_artifact(
        f"**Run report**: `{report}`\n\n{counts['jobs']} jobs: "
        + ", ".join(f"{n} {status}" for status, n in counts["status"].items()),
        key="pose-variants-report",
        description="Where this run's report is",
    )
