"""`fpdm run` and `fpdm retry`: the pose-variants flow on this machine, with Prefect's embedded
server (nothing to start), a progress bar per stage and a final table."""

from __future__ import annotations

import argparse
import os

EXIT_SOME_FAILED = 1
FAILURES_SHOWN = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    from fpdm_cli.catalog_commands import add_detector_arguments
    from pipeline.pose_detection import POSE_BACKENDS

    run = subparsers.add_parser(
        "run",
        help="generate the pose variants of a catalog manifest",
        description="Run the pose-variants flow on this machine: every row of the manifest becomes variants "
        "under OUTPUT with QC sidecars, contact sheets and a run report (OUTPUT/_runs/<run id>/). Finished "
        "variants are skipped. Exit 0 if every job succeeded or was skipped, 1 if some failed, 2 if the "
        "manifest or a setting is unusable. Prefect runs embedded unless PREFECT_API_URL names a server.",
    )
    run.add_argument("manifest", help="manifest CSV: a path or an s3:// URI")
    run.add_argument("--output", required=True, help="output folder or s3:// prefix")
    run.add_argument("--model", default="tiny", help="preset name or model directory (default tiny)")
    run.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="images per model call (default 8)")
    add_detector_arguments(run, "--pose-backend", POSE_BACKENDS)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    run.add_argument("--force", action="store_true", help="regenerate variants that are already complete")
    run.set_defaults(run=run_run)

    retry = subparsers.add_parser(
        "retry",
        help="run the failed jobs of a run report again",
        description="Run again the jobs that failed in REPORT (OUTPUT/_runs/<run id>/report.csv), with the "
        "manifest, output and settings recorded beside it. The new run has a report of its own. Exit codes "
        "as for `fpdm run`.",
    )
    retry.add_argument("report", help="a run report: path or s3:// URI")
    retry.add_argument("--device", help="run on this device instead of the recorded one")
    retry.set_defaults(run=run_retry)


def run_run(args: argparse.Namespace) -> int:
    from pipeline.manifest import read_manifest
    from pipeline.run import RunSettings, check_settings

    read_manifest(args.manifest)  # unusable: one error line and exit 2 before anything starts
    settings = RunSettings(
        model=args.model,
        batch_size=args.batch_size,
        pose_backend=args.pose_backend,
        openpose_weights=args.openpose_weights,
        device=args.device,
        force=args.force,
    )
    check_settings(settings)
    return run_flow(args.manifest, args.output, settings, retry_of=None)


def run_retry(args: argparse.Namespace) -> int:
    from pipeline.run import RunSettings, check_settings, recorded_run

    manifest, output, recorded = recorded_run(args.report)
    settings = RunSettings(**{**recorded, **({"device": args.device} if args.device else {})})
    check_settings(settings)
    return run_flow(manifest, output, settings, retry_of=args.report)


def run_flow(manifest: str, output: str, settings, retry_of: str | None) -> int:
    quiet_prefect()
    from rich.console import Console

    from flows.pose_variants import pose_variants
    from model_core.errors import InputError
    from pipeline import outputs, progress
    from pipeline.planning import FAILED

    console = Console(stderr=True)
    with StageBars(console) as bars, progress.reporting(bars):
        state = pose_variants(manifest=manifest, output=output, **settings.as_parameters(), retry_of=retry_of, return_state=True)
    report = outputs.report_uri(output, str(state.state_details.flow_run_id))
    try:
        outcomes = outputs.read_report(report)
    except InputError:
        # The flow stopped before writing its report: an error in the run itself.
        error = state.result(raise_on_failure=False)
        if isinstance(error, InputError):
            raise error
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


class StageBars:
    """A rich progress bar per stage of the run (poses, plan, generate, report)."""

    LABELS = {"poses": "detect poses", "plan": "plan jobs", "generate": "generate images", "report": "write report"}

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bars = Progress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bars.start()
        return self

    def __exit__(self, *exc):
        self.bars.stop()

    def stage(self, name: str, total: int) -> None:
        if name in self.tasks:  # a stage again (a shard of the run): count on from where it was
            task = self.bars.tasks[self.tasks[name]]
            self.bars.update(self.tasks[name], total=(task.total or 0) + total)
        else:
            self.tasks[name] = self.bars.add_task(self.LABELS.get(name, name), total=total)

    def advance(self, name: str, amount: int = 1) -> None:
        if name in self.tasks:
            self.bars.advance(self.tasks[name], amount)


def print_outcomes(outcomes, report: str) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from pipeline.planning import FAILED, JOB_STATUSES

    console = Console()
    counts = Counter((o.status, o.qc_status or "-") for o in outcomes)
    table = Table(title=f"{len(outcomes)} jobs")
    for column in ("status", "QC pass", "QC review", "QC fail", "no QC", "jobs"):
        table.add_column(column, justify="left" if column == "status" else "right")
    for status in JOB_STATUSES:
        row = [counts[(status, qc)] for qc in ("pass", "review", "fail", "-")]
        if sum(row):
            table.add_row(status, *map(str, row), str(sum(row)))
    console.print(table)
    failures = [o for o in outcomes if o.status == FAILED]
    # soft_wrap: URIs and errors stay on one line each, for grep and for copying.
    for outcome in failures[:FAILURES_SHOWN]:
        job = outcome.job_id if outcome.variant_id else f"row {outcome.row}"
        console.print(f"failed  {job}: {outcome.error}", markup=False, soft_wrap=True)
    if len(failures) > FAILURES_SHOWN:
        console.print(f"... and {len(failures) - FAILURES_SHOWN} more failed jobs in the report")
    console.print(f"report: {report}", markup=False, soft_wrap=True)
