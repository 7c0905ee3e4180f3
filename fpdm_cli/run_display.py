"""What `fpdm run` and `fpdm retry` show: a progress bar per stage while the run goes, then a table of
jobs by status and QC status, the failed jobs and where the report is. rich is imported here only
when a run starts."""

from __future__ import annotations

FAILURES_SHOWN = 20


class StageBars:
    """A rich progress bar per stage of the run (poses, plan, generate, report); pipeline.progress
    reports to it."""

    LABELS = {
        "poses": "detect poses",
        "plan": "plan jobs",
        "store plan": "store plan",
        "generate": "generate images",
        "report": "write report",
    }

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


def print_plan(plan, folder: str) -> None:
    """What a dry run found: jobs to generate, skip and fail (with the failures), images,
    batches and chunks, and where the plan is."""
    from collections import Counter

    from rich.console import Console

    from pipeline.planning import FAILED, SKIPPED

    console = Console()
    decided = Counter(o.status for o in plan.outcomes)
    to_generate = sum(chunk["jobs"] for chunk in plan.chunks)
    batches = sum(chunk["batches"] for chunk in plan.chunks)
    console.print(f"to generate: {to_generate} jobs, {plan.images} images, {batches} batches, {len(plan.chunks)} chunks")
    console.print(f"to skip:     {decided[SKIPPED]} jobs (complete, or disabled in the manifest)")
    console.print(f"to fail:     {decided[FAILED]} jobs (bad input)")
    console.print(f"batch size:  {plan.batch.size} ({plan.batch.reason})", markup=False, soft_wrap=True)
    failures = [o for o in plan.outcomes if o.status == FAILED]
    for outcome in failures[:FAILURES_SHOWN]:
        job = outcome.job_id if outcome.variant_id else f"row {outcome.row}"
        console.print(f"failed  {job}: {outcome.error}", markup=False, soft_wrap=True)
    if len(failures) > FAILURES_SHOWN:
        console.print(f"... and {len(failures) - FAILURES_SHOWN} more in the plan")
    console.print(f"plan: {folder}/plan/", markup=False, soft_wrap=True)
