"""Training a model on Prefect: stage 1 (fusion), then stage 2 (diffusion), from a training
manifest (pipeline.training_runs describes it).

    train_fpdm   read the manifest → train stage 1 → train stage 2 → a summary artifact

An operator's Retry of a failed run (a lost machine, a full disk, a killed process) skips the
stages that are done and resumes the other from its newest checkpoint, so days of training are
not started over. (A diverged loss is not for Retry: the resumed steps would replay it;
docs/operations.md says what to do.) The stages are not retried
automatically: a training that fails mid-way is worth a look before it goes on.

The domain is in `pipeline.training_runs`; this module decides only what is a task.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.training_runs import TrainingManifest, read_training_manifest, train_stage


@task(name="read-training-manifest", cache_policy=NO_CACHE)
def read_manifest_task(manifest: str) -> TrainingManifest:
    return read_training_manifest(manifest)


@task(name="train-stage", task_run_name="train-{stage}", tags=["gpu"], cache_policy=NO_CACHE)
def train_stage_task(manifest: TrainingManifest, stage: str) -> dict:
    summary = train_stage(manifest, stage)
    logger = get_run_logger()
    if summary["skipped"]:
        logger.info("%s: done by an earlier attempt, model in %s", stage, summary["model"])
    else:
        logger.info("%s: %d steps, last %s, model in %s", stage, summary["steps"], summary["last"], summary["model"])
    return summary


@flow(name="train-fpdm")
def train_fpdm(manifest: str) -> dict:
    """Train stage 1, then stage 2, as the training manifest says; returns each stage's summary."""
    settings = read_manifest_task(manifest)
    get_run_logger().info("training into %s; watch it with: tensorboard --logdir %s", settings.output, settings.output)
    stages = {stage: train_stage_task(settings, stage) for stage in ("stage1", "stage2")}
    rows = "\n".join(f"| {s} | {v['steps']} | {v['model']} | {'yes' if v['skipped'] else 'no'} |" for s, v in stages.items())
    create_markdown_artifact(
        key="train-fpdm",
        markdown=f"# Training from {manifest}\n\n| stage | steps | model | done earlier |\n|---|---|---|---|\n{rows}\n",
        description="the stages' models",
    )
    return stages
