"""Catalog runs: `fpdm validate` a manifest, `fpdm run` the pose-variants flow on it on this
machine (Prefect's embedded server: nothing to start), `fpdm retry` a run's failed jobs.

Prefect, torch and the model are imported when a run starts, never for `fpdm --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from fpdm_cli.arguments import add_detector_arguments, add_device_argument, given_options

EXIT_INVALID_ROWS = 1
EXIT_SOME_FAILED = 1
# Another run holds the output (its lease): nothing was done; run again when it has finished.
EXIT_OUTPUT_BUSY = 3

# `fpdm run`'s options that are RunSettings fields. They are parsed with argparse.SUPPRESS as
# default, so an option left out is absent and RunSettings' own default applies: the defaults
# live in pipeline/run.py only. The help texts repeat them for the reader (pipeline.run imports
# torch, which `fpdm --help` must not load); tests/test_cli.py checks that they agree.
RUN_OPTIONS = (
    "model", "batch_size", "pose_backend", "openpose_weights", "device", "force",
    "allow_inputs", "max_input_bytes", "image_formats",
)  # fmt: skip
ALLOW_INPUT_HELP = (
    "with a manifest on S3, also take inputs from this folder (an s3:// prefix, or a local folder); "
    "repeatable. By default a manifest on S3 takes inputs from its own bucket only, and a local manifest "
    "from anywhere"
)


def add_allow_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-input", dest="allow_inputs", action="append", metavar="PREFIX", help=ALLOW_INPUT_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipeline.pose_detection import POSE_BACKENDS

    run = subparsers.add_parser(
        "run",
        argument_default=argparse.SUPPRESS,
        help="generate the pose variants of a catalog manifest",
        description="Run the pose-variants flow on this machine: every row of the manifest becomes variants "
        "under OUTPUT with QC sidecars, contact sheets and a run report (OUTPUT/_runs/<run id>/). Finished "
        "variants are skipped. Prints a progress bar per stage, then the jobs by status and QC status, the "
        "failed jobs and the report's location. Exit 0 if every job succeeded or was skipped, 1 if some "
        "failed, 2 if the manifest or a setting is unusable (unknown model, a batch size neither a whole number "
        "of at least 1 nor auto, openpose without weights), before anything runs, 3 if another run is working on OUTPUT (one line names it: run "
        "id, host, since). Prefect runs embedded unless PREFECT_API_URL names a "
        "server; its logs are off on the console unless PREFECT_LOGGING_LEVEL=INFO.",
    )
    run.add_argument("manifest", help="manifest CSV: a path or an s3:// URI")
    run.add_argument("--output", required=True, help="output folder or s3:// prefix")
    run.add_argument("--model", help="preset name or model directory (default tiny)")
    run.add_argument(
        "--batch-size",
        dest="batch_size",
        metavar="N|auto",
        help="images per model call, or auto: the largest batch that fits the GPU, measured once per model and "
        "device and cached (off CUDA: the default) (default 8)",
    )
    add_detector_arguments(run, "--pose-backend", POSE_BACKENDS, default=argparse.SUPPRESS)
    add_device_argument(run, default=argparse.SUPPRESS)
    run.add_argument("--force", action="store_true", help="regenerate variants that are already complete")
    add_allow_input(run)
    run.add_argument(
        "--max-input-bytes",
        dest="max_input_bytes",
        type=int,
        metavar="N",
        help="a source photo or pose file larger than this fails its row (default 67108864)",
    )
    run.add_argument(
        "--image-format",
        dest="image_formats",
        action="append",
        metavar="FORMAT",
        help="a format photos may come in, by Pillow's name (repeatable; default JPEG, PNG and WEBP)",
    )
    run.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="plan the run and print what it would do (jobs to generate, skip and fail, images, batches, chunks); "
        "writes nothing but the plan (OUTPUT/_runs/<run id>/plan/) and the pose cache",
    )
    run.set_defaults(run=run_run)

    retry = subparsers.add_parser(
        "retry",
        help="run the failed jobs of a run report again",
        description="Run again the jobs that failed in REPORT (OUTPUT/_runs/<run id>/report.csv), with the "
        "manifest, output and settings recorded in the summary.json beside it; finished variants are never "
        "redone. The new run has a report of its own. Exit codes as for `fpdm run`.",
    )
    retry.add_argument("report", help="a run report: path or s3:// URI")
    retry.add_argument("--device", metavar="D", help="run on this device instead of the recorded one")
    add_allow_input(retry)
    retry.set_defaults(run=run_retry)

    report = subparsers.add_parser(
        "report",
        help="rebuild the report of a run that died before writing it",
        description="Write OUTPUT/_runs/RUN_ID/report.csv for a run that ended without one (its process killed, "
        "its machine gone): from its stored plan, the outcomes its chunks stored and, for a chunk that never "
        "finished, the verified sidecars of the variants it wrote; its other jobs fail as not generated, so "
        "`fpdm retry` of the new report redoes them. Refused while the run still holds its output, and for a run "
        "that has a report. Prints the report's URI.",
    )
    report.add_argument("output", help="the run's output: a folder or an s3:// prefix")
    report.add_argument("run_id", help="the run's id (its flow run id: the folder name under OUTPUT/_runs/)")
    report.set_defaults(run=run_report)

    validate = subparsers.add_parser(
        "validate",
        help="check a catalog manifest and list every problem",
        description="Check a manifest (local path or s3:// URI) and list every problem by row (the header is "
        "row 1), column and reason. Exit 0 if every row is valid, 1 if some rows are invalid (the others "
        "would still run), 2 if the manifest is unusable (unreadable, not UTF-8, or missing a required "
        "column). Columns: garment_id, source_image, target_pose (required); variant_id, seed, "
        "num_candidates, steps, guidance_scale, enabled, notes (optional); any other is kept as metadata.",
    )
    validate.add_argument("manifest", help="manifest CSV: a path or an s3:// URI")
    add_allow_input(validate)
    validate.set_defaults(run=run_validate)


def run_run(args: argparse.Namespace) -> int:
    from pipeline.manifest import read_manifest
    from pipeline.run import RunSettings, check_settings

    settings = RunSettings(**given_options(args, RUN_OPTIONS))
    read_manifest(args.manifest, settings.allow_inputs)  # unusable: one error line and exit 2 before anything starts
    check_settings(settings)
    return run_flow(args.manifest, args.output, settings, retry_of=None, dry_run=getattr(args, "dry_run", False))


def run_report(args: argparse.Namespace) -> int:
    from pipeline.run import rebuild_report

    print(rebuild_report(args.output, args.run_id))
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from pipeline.run import RunSettings, check_settings, recorded_run

    manifest, output, recorded = recorded_run(args.report)
    settings = RunSettings(**{**recorded, **({"device": args.device} if args.device else {})})
    if args.allow_inputs:
        settings = dataclasses.replace(settings, allow_inputs=(*settings.allow_inputs, *args.allow_inputs))
    check_settings(settings)
    return run_flow(manifest, output, settings, retry_of=args.report)


def run_flow(manifest: str, output: str, settings, retry_of: str | None, dry_run: bool = False) -> int:
    quiet_prefect()
    from rich.console import Console

    from flows.pose_variants import pose_variants
    from fpdm_cli.run_display import StageBars, print_outcomes, print_plan
    from model_core.errors import InputError
    from pipeline import outputs, progress
    from pipeline.leases import OutputBusy
    from pipeline.planning import FAILED

    console = Console(stderr=True)
    with StageBars(console) as bars, progress.reporting(bars):
        state = pose_variants(
            manifest=manifest, output=output, **settings.as_parameters(), retry_of=retry_of, dry_run=dry_run, return_state=True
        )
    run_id = str(state.state_details.flow_run_id)
    if dry_run:
        from pipeline.plans import load_plan

        plan = load_plan(output, run_id)
        if plan is None:
            raise RuntimeError(f"the dry run ended {state.name} without a plan: {state.message}")
        print_plan(plan, outputs.run_folder(output, run_id))
        return 0
    report = outputs.report_uri(output, run_id)
    try:
        outcomes = outputs.read_report(report)
    except InputError:
        # The flow stopped before writing its report: an error in the run itself.
        error = state.result(raise_on_failure=False)
        if isinstance(error, InputError):
            raise error from None
        if isinstance(error, OutputBusy):
            print(f"fpdm: error: {error}", file=sys.stderr)
            return EXIT_OUTPUT_BUSY
        raise RuntimeError(f"the run ended {state.name} without a report: {state.message}") from None
    print_outcomes(outcomes, report)
    return EXIT_SOME_FAILED if any(o.status == FAILED for o in outcomes) else 0


def quiet_prefect() -> None:
    """Prefect's own console logs would interleave with the progress bars; the run report has
    every outcome. PREFECT_LOGGING_LEVEL=INFO shows them again."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded server's first start creates and migrates its database; on a busy 2-core
    # machine that took longer than Prefect's default 20 s and the run died before it began.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def run_validate(args: argparse.Namespace) -> int:
    from pipeline.manifest import read_manifest

    manifest = read_manifest(args.manifest, tuple(args.allow_inputs or ()))
    if manifest.problems:
        width = max(len(p.column) for p in manifest.problems)
        print(f"{'row':>5}  {'column':<{width}}  problem")
        for problem in manifest.problems:
            print(f"{problem.row:>5}  {problem.column:<{width}}  {problem.reason}")
    print(
        f"{manifest.uri}: {len(manifest.rows)} valid row(s), {len(manifest.invalid_rows)} invalid, "
        f"{len(manifest.disabled)} disabled"
    )
    return EXIT_INVALID_ROWS if manifest.problems else 0
