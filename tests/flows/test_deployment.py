"""The deployments as production runs them: `prefect server start` on 127.0.0.1, the `gpu-pool`
process work pool with two workers, `prefect deploy` from prefect.yaml, then a sharded run of
a small manifest on the nightly deployment (its concurrency limit of one, its shards on a
deployment of their own). Both workers must do work, every job must complete exactly once, the
merged report must be complete and the output's lease released. Every process the test starts is stopped, flow-run
subprocesses included (a process worker starts them in sessions of their own)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from pipeline import outputs

pytestmark = pytest.mark.slow  # a real `prefect server start`, two workers and a deployment: a minute

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
WORKERS = ("gpu-1", "gpu-2")
GARMENTS = {
    "tee": "MEN/Tees_Tanks/id_00004047/01_1_front",
    "blouse": "WOMEN/Blouses_Shirts/id_00001530/01_4_full",
}
POSES = ("01_2_side", "01_3_back")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect_env(home: Path, api_url: str, **extra) -> dict:
    # Nothing of the caller's Prefect settings (a profile, the harness's home) may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "FPDM_CHECKOUT"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_CLI_COLORS="false",
        PREFECT_CLI_WRAP_LINES="false",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _wait_until(predicate, timeout: float, what: str, poll: float = 0.25, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        time.sleep(poll)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url + "/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGINT to the process group (the server shuts down cleanly on it), SIGKILL if it lingers."""
    try:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _processes_with(home: Path) -> list[int]:
    """Processes whose environment names this test's PREFECT_HOME: the server, the workers and
    the flow-run subprocesses, which live outside the workers' process groups."""
    needle = f"PREFECT_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def prefect_deployment(tmp_path):
    """Server, work pool, two workers, deployments: what docs/operations.md's production setup has."""
    home = tmp_path / "prefect_home"
    home.mkdir()
    started: list[subprocess.Popen] = []

    def spawn(name, command, env, cwd=tmp_path):
        with open(tmp_path / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        started.append(process)
        return process

    try:
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            port = _free_port()
            api_url = f"http://127.0.0.1:{port}/api"
            env = _prefect_env(home, api_url)
            # --no-services: no scheduler, so the nightly deployment's cron makes no runs here.
            server = spawn(
                "server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"], env
            )
            try:
                _wait_until(lambda: _healthy(api_url), 120, "the Prefect server", process=server)  # noqa: B023 - called before the loop moves on
                break
            except RuntimeError:
                continue
        else:
            pytest.fail((tmp_path / "server.log").read_text())

        for command in (
            ["work-pool", "create", "gpu-pool", "--type", "process", "--overwrite"],
            ["concurrency-limit", "create", "gpu", str(len(WORKERS))],  # one batch per GPU, as docs/operations.md says
        ):
            subprocess.run([PREFECT, *command], env=env, check=True, capture_output=True, timeout=120)
        for name in WORKERS:
            worker_env = _prefect_env(
                home, api_url, FPDM_CHECKOUT=REPO_ROOT, PREFECT_WORKER_QUERY_SECONDS=1, PREFECT_WORKER_PREFETCH_SECONDS=1
            )
            spawn(name, [PREFECT, "worker", "start", "--pool", "gpu-pool", "--name", name, "--limit", "1"], worker_env)
        # Deployed from the checkout with FPDM_CHECKOUT unset, as docs/operations.md says.
        deployed = subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield tmp_path
    finally:
        for process in reversed(started):
            _stop(process)
        left = _processes_with(home)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left running: {left}"


def test_a_sharded_nightly_through_two_workers_completes_every_job_once(prefect_deployment, deepfashion_dir):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    lines = ["garment_id,source_image,target_pose,steps"]
    for garment, photo in GARMENTS.items():
        for pose in POSES:
            pose_file = deepfashion_dir / "pose" / "MEN" / "Tees_Tanks" / "id_00004047" / f"{pose}.txt"
            lines.append(f"{garment},{deepfashion_dir / 'img' / photo}.jpg,{pose_file},2")
    manifest = prefect_deployment / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = prefect_deployment / "out"
    jobs = {f"{garment}/{pose}" for garment in GARMENTS for pose in POSES}

    with get_client(sync_client=True) as client:
        _wait_until(lambda: set(WORKERS) <= {w.name for w in client.read_workers_for_work_pool("gpu-pool")}, 60, "the workers")
        nightly = client.read_deployment_by_name("pose-variants/nightly-pose-variants")
        assert nightly.global_concurrency_limit.limit == 1
        assert nightly.concurrency_options.collision_strategy == "CANCEL_NEW"
        shard_deployment = client.read_deployment_by_name("pose-variants/nightly-pose-variants-shards")
        assert shard_deployment.global_concurrency_limit is None
        assert client.read_deployment_by_name("train-fpdm/train-fpdm").work_pool_name == "gpu-pool"  # deployed with the rest
        # The nightly's own parameters but for where and how small: its shards go to the shard deployment.
        parent = run_deployment(
            "pose-variants/nightly-pose-variants",
            parameters={
                "manifest": str(manifest),
                "output": str(out),
                "model": "tiny",
                "device": "cpu",
                "pose_backend": "keypoints",
                "batch_size": 2,
                "chunk_images": 2,  # 2 chunks of 2 jobs, for the two runners to claim
                "shards": 2,
            },  # fmt: skip
            timeout=0,
        )

        def final(run_id):
            run = client.read_flow_run(run_id)
            return run if run.state is not None and run.state.is_final() else None

        parent = _wait_until(lambda: final(parent.id), 400, "the sharded run", poll=1)
        assert parent.state.is_completed(), parent.state.message
        children = [r for r in client.read_flow_runs() if r.deployment_id == shard_deployment.id]
        assert [c.parameters["shard_of"] for c in children] == [str(parent.id)] and children[0].state.is_completed()
        # The shard ran on the other worker, in a process of its own.
        assert children[0].labels["prefect.worker.name"] != parent.labels["prefect.worker.name"]
        # The flow-run processes flush their logs after their final state: let them exit first.
        for run in (parent, children[0]):
            pid = int(run.infrastructure_pid)
            _wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, f"flow-run process {pid} to exit")  # noqa: B023 - called before the loop moves on

    merged = outputs.read_report(outputs.report_uri(str(out), str(parent.id)))
    assert Counter(o.status for o in merged) == {"succeeded": 4}  # the merged report is complete
    assert {o.job_id for o in merged} == jobs
    # Every chunk of the stored plan was claimed once, by one of the two runners, and every
    # variant is the plan's run's.
    claims = sorted((out / "_runs" / str(parent.id) / "claims" / "attempt-1").iterdir())
    assert [c.name for c in claims] == ["chunk-000000.json", "chunk-000001.json"]
    assert {json.loads(c.read_text())["taker"] for c in claims} <= {str(parent.id), str(children[0].id)}
    for job in jobs:
        assert json.loads((out / f"{job}.json").read_text())["run_id"] == str(parent.id)
    lease = json.loads((out / "_lease.json").read_text())
    assert lease["run_id"] == str(parent.id) and lease["released"]
