"""The chaos suite: seeded trials of a catalog run over S3 (moto's server) in which things go
wrong the way they do at night, each followed by what an operator does (`fpdm retry` of the
report, or a new `fpdm run` where the run left no report) until every job is done.

Faults, drawn from each trial's seed (each kind is forced on in every fifth trial):
- S3 errors: a proxy in front of the server (s3_fault_proxy) answers a share of requests with
  503 SlowDown, 500 InternalError or a connection reset, and may fail everything for a second
  or two (an outage), long enough for the SDK's retries to give up;
- a bug: an exception in the model call of a random garment's batch, or in writing one job's
  variant, for one to three attempts (the chunk task retries twice);
- a worker killed with SIGKILL mid-batch: a process executing the run's plan as a shard,
  killed after it wrote a few variants;
- a kill between PNG and sidecar: a worker that kills itself between writing a variant's image
  and its sidecar;
- a concurrent second run on the same output: a process that starts a new run while the first
  one works, and must be refused at once by the output's lease, naming the run that holds it.

After every trial: a final report (a plain rerun's) accounts for every manifest row exactly
once and generated nothing; every variant's PNG has the sha256 and size its sidecar records,
and no PNG is without a sidecar; no variant was written again once complete (every PUT through
the proxy is counted); the report and its summary are there. The totals are printed at the
end of the session (and are in docs/measurements.md, "Chaos suite").
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from s3_fault_proxy import FaultProxy, compress_sdk_time

import flows.pose_variants as pv
from pipeline import execution, outputs, storage
from synthetic import render_person
from synthetic.writers import keypoints_json

pytestmark = pytest.mark.slow  # 20 trials of a 32-row catalog run with faults and retries: minutes

HERE = Path(__file__).resolve().parent
BUCKET = "catalog"
OUTPUT = f"s3://{BUCKET}/out"
GARMENTS = 6
POSES = 5
TRIALS = 20
MAX_ROUNDS = 6  # an operator's runs per trial, the first included, before the trial is a failure
KINDS = ("s3 errors", "bug in a batch", "worker killed mid-batch", "killed between PNG and sidecar", "concurrent second run")
SETTINGS = {"model": "tiny", "batch_size": 4, "pose_backend": "keypoints", "device": "cpu"}
CHUNK_IMAGES = 8  # 4 chunks of 2 batches: enough for the runners to share a run's chunks


def _manifest() -> tuple[str, dict[int, str]]:
    """32 rows: 6 garments x 5 poses, and two bad rows among them (their row: the start of
    their expected error)."""
    lines = ["garment_id,source_image,target_pose,variant_id,seed,steps"]
    bad: dict[int, str] = {}
    for g in range(GARMENTS):
        for k in range(POSES):
            lines.append(f"g{g},s3://{BUCKET}/in/g{g}/source.png,s3://{BUCKET}/in/g{g}/pose{k}.json,p{k},,1")
        if g == 1:
            lines.append(f"absent,s3://{BUCKET}/in/absent.png,s3://{BUCKET}/in/g0/pose0.json,p0,,1")
            bad[len(lines)] = f"row {len(lines)}, source_image: s3://{BUCKET}/in/absent.png: no such object"
        if g == 3:
            lines.append(f"g3,s3://{BUCKET}/in/g3/source.png,s3://{BUCKET}/in/g3/pose0.json,seeded,seven,1")
            bad[len(lines)] = f"row {len(lines)}, seed: 'seven' is not a whole number"
    return "\n".join(lines) + "\n", bad


MANIFEST, BAD_ROWS = _manifest()
ROWS = range(2, MANIFEST.count("\n") + 1)  # the header is row 1
GOOD_JOBS = {f"g{g}/p{k}" for g in range(GARMENTS) for k in range(POSES)}


@dataclass
class TrialFaults:
    """The faults of one trial, drawn from its seed."""

    seed: int
    s3_rate: float
    outage: tuple[int, float] | None  # (after this many requests, for this many seconds)
    bug: tuple[str, str, int] | None  # (site, target, times)
    kill_mid_batch: int | None  # kill the worker after it wrote this many variants
    kill_before_sidecar: int | None  # the worker dies before the sidecar of its n-th variant
    concurrent: bool

    @classmethod
    def draw(cls, seed: int) -> TrialFaults:
        rng = random.Random(seed)
        forced = KINDS[seed % len(KINDS)]

        def on(kind, p):
            return kind == forced or rng.random() < p

        s3 = on("s3 errors", 0.6)
        garment = f"g{rng.randrange(GARMENTS)}"
        return cls(
            seed=seed,
            s3_rate=rng.choice((0.02, 0.05, 0.1)) if s3 else 0.0,
            outage=(rng.randrange(20, 400), rng.uniform(1.0, 2.0)) if s3 and rng.random() < 0.6 else None,
            bug=(
                rng.choice(("generate", "write")),
                garment if rng.random() < 0.5 else f"{garment}/p{rng.randrange(POSES)}",
                rng.randint(1, 3),
            )
            if on("bug in a batch", 0.3)
            else None,
            kill_mid_batch=rng.choice((1, 2, 3, 5, 6)) if on("worker killed mid-batch", 0.3) else None,
            kill_before_sidecar=rng.randint(1, 6) if on("killed between PNG and sidecar", 0.3) else None,
            concurrent=on("concurrent second run", 0.3),
        )


# ----- fixtures ---------------------------------------------------------------------------------


@dataclass
class Totals:
    trials: int = 0
    faults: Counter = field(default_factory=Counter)  # fired, by kind
    s3_faults: Counter = field(default_factory=Counter)  # injected S3 faults, by kind
    rows: int = 0
    duplicate_writes: int = 0
    runs: int = 0
    runs_without_report: int = 0  # ended by a fault before writing one: the operator ran again
    variants_written: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"chaos suite: {self.trials} trials, {self.runs} runs ({self.runs_without_report} ended with no report), {self.seconds:.0f} s",
            "faults fired: " + ", ".join(f"{kind} {self.faults[kind]}" for kind in KINDS),
            "S3 faults injected: " + ", ".join(f"{kind} {n}" for kind, n in sorted(self.s3_faults.items())),
            f"rows accounted in final reports: {self.rows} of {self.trials * len(ROWS)}; "
            f"variants written: {self.variants_written}; duplicate writes: {self.duplicate_writes}",
        ]


class _TotalsReporter:
    """Prints the suite's totals in pytest's terminal summary, with or without -s."""

    def __init__(self, totals: Totals):
        self.totals = totals

    def pytest_terminal_summary(self, terminalreporter):
        if self.totals.trials:
            terminalreporter.section("chaos suite")
            for line in self.totals.lines():
                terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def chaos_totals(request) -> Totals:
    totals = Totals()
    request.config.pluginmanager.register(_TotalsReporter(totals), "chaos-totals")
    return totals


@pytest.fixture(scope="session")
def worker_processes():
    """A fork server that has imported the pipeline and loaded the tiny model (chaos_preload);
    every worker is a fresh process forked from it. Stopped at the end of the session."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["chaos_preload"])
    # Python 3.11's fork server does not take this process's sys.path: it finds the modules
    # through PYTHONPATH, which it inherits when it starts (with the first Process started).
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parents[1]), *([saved] if saved else [])])
    try:
        warm = context.Process(target=time.sleep, args=(0,))
        warm.start()  # the first fork waits for the preload: pay it here, not in a trial's timing
        warm.join()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    try:
        yield context
    finally:
        forkserver._forkserver._stop()


@pytest.fixture
def fault_proxy(s3, monkeypatch):
    """The fault proxy in front of the `s3` server, as the pipeline's S3 endpoint."""
    proxy = FaultProxy(s3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    storage._client.cache_clear()
    compress_sdk_time(monkeypatch.setattr)
    # Prefect's retry delays (10 s, and 30 s then 120 s for a chunk) are for a production night.
    for name in ("read_manifest_task", "detect_pose", "plan", "generate_chunk", "write_report"):
        monkeypatch.setattr(pv, name, getattr(pv, name).with_options(retry_delay_seconds=0))
    monkeypatch.setattr(pv, "FLOW_STEP_RETRY_DELAYS_S", (0.05, 0.25, 0.75))
    try:
        yield proxy
    finally:
        proxy.stop()
        storage._client.cache_clear()


@functools.cache
def catalog_objects() -> dict[str, bytes]:
    """The catalog's inputs by key: a synthetic photo per garment, a keypoint file per pose."""
    objects = {"in/manifest.csv": MANIFEST.encode()}
    for g in range(GARMENTS):
        _, _, figures = render_person(seed=11, index=g, size=(64, 48), poses=POSES)
        buffer = io.BytesIO()
        figures[0][1].image.save(buffer, format="PNG")
        objects[f"in/g{g}/source.png"] = buffer.getvalue()
        for k, (_, figure) in enumerate(figures):
            objects[f"in/g{g}/pose{k}.json"] = keypoints_json(figure.keypoints).encode()
    return objects


@pytest.fixture
def direct(s3):
    """A client of the server itself, past the proxy, which the checks read with; the catalog
    uploaded."""
    client = boto3.client("s3", endpoint_url=s3)
    for key, data in catalog_objects().items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return client


# ----- injected bugs ----------------------------------------------------------------------------


class InjectedBug(RuntimeError):
    pass


def install_bug(monkeypatch, bug: tuple[str, str, int] | None) -> Counter:
    """Make the model call of a batch with the target garment's jobs (site 'generate'), or the
    write of the target's variant (site 'write'), raise for `times` calls. Returns the count of
    times it fired."""
    fired = Counter()
    if bug is None:
        return fired
    site, target, times = bug

    def hits(job) -> bool:
        return job.job_id == target or job.garment_id == target

    if site == "generate":
        generate_prepared = execution.generate_prepared

        def failing_generate(pipe, prepared):
            if fired["bug"] < times and any(hits(p.job) for p in prepared.batch.jobs):
                fired["bug"] += 1
                raise InjectedBug(f"injected bug in the model call of batch {prepared.batch.batch_id}")
            return generate_prepared(pipe, prepared)

        monkeypatch.setattr(execution, "generate_prepared", failing_generate)
    else:
        write_variant = outputs.write_variant

        def failing_write(output, job, image, sidecar):
            if fired["bug"] < times and hits(job):
                fired["bug"] += 1
                raise InjectedBug(f"injected bug writing {job.job_id}")
            return write_variant(output, job, image, sidecar)

        monkeypatch.setattr(outputs, "write_variant", failing_write)
    return fired


# ----- workers ----------------------------------------------------------------------------------


@dataclass
class Worker:
    kind: str
    process: object
    events: Path
    killed_by_us: bool = False

    def lines(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []

    @property
    def found_plan(self) -> bool:
        return any(line.startswith("plan ") for line in self.lines())

    @property
    def found_holder(self) -> bool:
        return any(line.startswith("holder ") for line in self.lines())

    @property
    def variants(self) -> int:
        return sum(line.startswith("variant ") for line in self.lines())


def start_worker(context, kind: str, tmp_path: Path, die_before_sidecar: int | None = None, new_run: str | None = None) -> Worker:
    from chaos_worker import WorkerSpec, work

    events = tmp_path / f"{kind.replace(' ', '-')}.events"
    environment = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    spec = WorkerSpec(
        environment, OUTPUT, attempt=1, taker=kind, events=str(events), die_before_sidecar=die_before_sidecar, new_run=new_run
    )
    process = context.Process(target=work, args=(spec,), name=kind, daemon=True)
    process.start()
    return Worker(kind, process, events)


def kill_after(worker: Worker, variants: int) -> threading.Thread:
    """SIGKILL the worker as soon as it has written `variants` variants, wherever it is then."""

    def watch():
        while worker.process.is_alive():
            if worker.variants >= variants:
                worker.killed_by_us = True
                worker.process.kill()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def settle(workers: list[Worker]) -> None:
    """After the operator's first run: a worker still waiting for a plan (the run died before
    storing one) is stopped; the others are waited for, as an operator waits for a run's
    processes to end before retrying it."""
    for worker in workers:
        if worker.process.is_alive() and not (worker.found_plan or worker.found_holder):
            worker.process.kill()
    for worker in workers:
        worker.process.join(timeout=240)
        assert not worker.process.is_alive(), f"the {worker.kind} worker did not finish in 4 minutes"


def second_run_on_the_same_output(context, tmp_path: Path) -> Worker:
    """The concurrent second run: a new run (its own id) on the output the first run works on."""
    return start_worker(context, "concurrent second run", tmp_path, new_run=f"second-run-{tmp_path.name}")


# ----- the operator -----------------------------------------------------------------------------


@dataclass
class Round:
    run_id: str
    report: str | None  # key of report.csv, if the run wrote one
    outcomes: list[dict] | None


def run_pipeline(retry_of: str | None) -> str:
    """`fpdm run` (or `fpdm retry REPORT`): the pose-variants flow, in this process."""
    state = pv.pose_variants(
        f"s3://{BUCKET}/in/manifest.csv", OUTPUT, **SETTINGS, retry_of=retry_of, chunk_images=CHUNK_IMAGES, return_state=True
    )
    return str(state.state_details.flow_run_id)


def read_report(direct, run_id: str) -> Round:
    key = f"out/_runs/{run_id}/report.csv"
    try:
        text = direct.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    except direct.exceptions.NoSuchKey:
        return Round(run_id, None, None)
    return Round(run_id, key, list(csv.DictReader(io.StringIO(text))))


def retryable(outcomes: list[dict]) -> list[dict]:
    """The failures a retry may cure: all but the bad rows."""
    return [o for o in outcomes if o["status"] == "failed" and int(o["row"]) not in BAD_ROWS]


# ----- checks -----------------------------------------------------------------------------------


def check_outputs(direct) -> int:
    """Every good job's variant complete and consistent; nothing else under the garments.
    Returns the number of variants checked."""
    keys = [
        item["Key"]
        for page in direct.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="out/")
        for item in page.get("Contents", [])
    ]
    variant_keys = [k for k in keys if not k.startswith("out/_") and not k.endswith("/contact_sheet.jpg")]
    pngs = {k.removeprefix("out/").removesuffix(".png") for k in variant_keys if k.endswith(".png")}
    sidecars = {k.removeprefix("out/").removesuffix(".json") for k in variant_keys if k.endswith(".json")}
    assert pngs == GOOD_JOBS, f"PNGs that are no job's: {sorted(pngs - GOOD_JOBS)}, jobs without one: {sorted(GOOD_JOBS - pngs)}"
    assert sidecars == GOOD_JOBS, f"PNGs without a sidecar: {sorted(pngs - sidecars)}"
    for job in sorted(GOOD_JOBS):
        png = direct.get_object(Bucket=BUCKET, Key=f"out/{job}.png")["Body"].read()
        sidecar = json.loads(direct.get_object(Bucket=BUCKET, Key=f"out/{job}.json")["Body"].read())
        recorded = sidecar["image"]
        assert (recorded["sha256"], recorded["bytes"]) == (hashlib.sha256(png).hexdigest(), len(png)), (
            f"{job}: the PNG is not the one its sidecar describes"
        )
        assert recorded["uri"] == f"{OUTPUT}/{job}.png"
    return len(GOOD_JOBS)


def check_final_report(direct, final: Round) -> None:
    assert final.report is not None, f"the final run {final.run_id} wrote no report"
    direct.head_object(Bucket=BUCKET, Key=final.report.replace("report.csv", "summary.json"))
    rows = Counter(int(o["row"]) for o in final.outcomes)
    assert rows == Counter(ROWS), (
        f"rows not exactly once in the report: {sorted((rows - Counter(ROWS)) + (Counter(ROWS) - rows))}"
    )
    for outcome in final.outcomes:
        row = int(outcome["row"])
        if row in BAD_ROWS:
            assert outcome["status"] == "failed" and outcome["error"].startswith(BAD_ROWS[row]), outcome
        else:
            # Everything was done before: the final run generated nothing.
            assert outcome["status"] == "skipped" and outcome["image_uri"].endswith(f"/{outcome['variant_id']}.png"), outcome


# ----- a trial ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(TRIALS))
def test_chaos_trial(seed, prefect_server, fault_proxy, direct, worker_processes, chaos_totals, monkeypatch, tmp_path):
    started = time.monotonic()
    faults = TrialFaults.draw(seed)
    fault_proxy.watch_variants_under(f"{BUCKET}/out")
    bug = install_bug(monkeypatch, faults.bug)

    workers = []
    if faults.kill_mid_batch is not None:
        workers.append(start_worker(worker_processes, "worker killed mid-batch", tmp_path))
        kill_after(workers[-1], faults.kill_mid_batch)
    if faults.kill_before_sidecar is not None:
        workers.append(start_worker(worker_processes, "killed between PNG and sidecar", tmp_path, faults.kill_before_sidecar))
    if faults.concurrent:
        workers.append(second_run_on_the_same_output(worker_processes, tmp_path))
    fault_proxy.inject(faults.s3_rate, *(faults.outage or (None, 0.0)), seed=seed)

    rounds: list[Round] = []
    retry_of = None
    for _ in range(MAX_ROUNDS):
        run_id = run_pipeline(retry_of)
        if len(rounds) == 0:
            settle(workers)
        rounds.append(read_report(direct, run_id))
        last = rounds[-1]
        if last.outcomes is not None and not retryable(last.outcomes):
            break
        # A report with failures: `fpdm retry REPORT`. No report (the run died): `fpdm run` again.
        retry_of = f"s3://{BUCKET}/{last.report}" if last.report else None
    else:
        pytest.fail(f"seed {seed}: jobs still failing after {MAX_ROUNDS} runs: {[(r.run_id, r.report) for r in rounds]}")

    # The operator's final check: a plain rerun, which must find everything done (run again if
    # a fault ended it before its report: see docs/measurements.md, "Chaos suite").
    finals = [read_report(direct, run_pipeline(None))]
    while finals[-1].report is None and len(finals) < 3:
        finals.append(read_report(direct, run_pipeline(None)))
    final = finals[-1]
    rewrites = list(fault_proxy.books.rewrites)
    variants_written = sum(n for key, n in fault_proxy.books.puts.items() if key.endswith(".json") and "/_" not in key)

    fired = Counter()
    if sum(n for kind, n in fault_proxy.books.faults.items() if kind != "outage"):
        fired["s3 errors"] += 1
    if bug["bug"]:
        fired["bug in a batch"] += 1
    for worker in workers:
        if worker.kind == "worker killed mid-batch" and worker.killed_by_us and worker.process.exitcode == -9:
            fired[worker.kind] += 1
        if worker.kind == "killed between PNG and sidecar" and any(
            line.startswith("png-without-sidecar ") for line in worker.lines()
        ):
            assert worker.process.exitcode == -9
            fired[worker.kind] += 1
        if worker.kind == "concurrent second run":
            [refusal] = [line for line in worker.lines() if line.startswith("busy ")] or [None]
            if refusal is not None:
                # Refused at once, naming the first run, which holds the output.
                assert f"{OUTPUT} is in use by run {rounds[0].run_id} on host " in refusal, refusal
                fired[worker.kind] += 1
            assert not any(line.startswith("variant ") for line in worker.lines())

    chaos_totals.trials += 1
    chaos_totals.faults.update(fired)
    chaos_totals.s3_faults.update(fault_proxy.books.faults)
    chaos_totals.runs += len(rounds) + len(finals)
    chaos_totals.runs_without_report += sum(r.report is None for r in [*rounds, *finals])
    chaos_totals.duplicate_writes += len(rewrites)
    chaos_totals.variants_written += variants_written
    chaos_totals.rows += len(final.outcomes or [])
    chaos_totals.seconds += time.monotonic() - started

    assert rewrites == [], f"seed {seed}: complete variants written again: {rewrites}"
    check_final_report(direct, final)
    check_outputs(direct)
