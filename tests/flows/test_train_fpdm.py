"""The train-fpdm flow on Prefect's real engine: stage 1 then stage 2 from a training manifest,
and a second attempt after a failure (what the UI's Retry starts) that resumes instead of
starting over. The manifest's checks run without Prefect."""

import json

import pytest
import yaml
from stick_figures import make_pairs

from model_core.errors import InputError
from model_core.training_monitor import TrainingMonitor
from pipeline.training_runs import read_training_manifest

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=2, poses_per_person=2, seed=0)


def _manifest(folder, pairs_csv, **changes) -> str:
    data = {
        "pairs": str(pairs_csv),
        "base_model": "tiny",
        "output": "out",
        "device": "cpu",
        "sample_every": 0,
        "stage1": {"max_steps": 2, "batch_size": 4},
        "stage2": {"max_steps": 4, "batch_size": 2, "gradient_accumulation": 1, "checkpoint_every": 2},
    }
    data.update(changes)
    path = folder / "training.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _log_steps(folder):
    return [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two short trainings, twice, on the real engine: ~30 s
def test_a_retry_after_a_failure_skips_stage_1_and_resumes_stage_2_from_its_checkpoint(
    prefect_server, pairs_csv, tmp_path, monkeypatch
):
    from flows.train_fpdm import train_fpdm

    manifest = _manifest(tmp_path, pairs_csv)
    out = tmp_path / "out"
    steps_taken = []
    original_step = TrainingMonitor.step

    def step(monitor, record, items, pipe=None):
        steps_taken.append((monitor.stage, record["step"]))
        if crash and monitor.stage == "diffusion" and record["step"] == 3:
            raise RuntimeError("the machine went away")
        return original_step(monitor, record, items, pipe)

    monkeypatch.setattr(TrainingMonitor, "step", step)

    crash = True
    first = train_fpdm(manifest, return_state=True)
    assert first.is_failed()
    assert steps_taken == [("fusion", 1), ("fusion", 2), ("diffusion", 1), ("diffusion", 2), ("diffusion", 3)]
    assert (out / "stage1.done.json").is_file() and (out / "stage1" / "model_index.json").is_file()
    assert (out / "stage2" / "checkpoint-000002").is_dir() and not (out / "stage2" / "model_index.json").exists()
    stage1_weights = {p: p.read_bytes() for p in (out / "stage1").rglob("*.safetensors")}

    # The Retry: the same flow, the same parameters.
    crash = False
    steps_taken.clear()
    second = train_fpdm(manifest, return_state=True)
    assert second.is_completed()
    assert steps_taken == [("diffusion", 3), ("diffusion", 4)]
    summary = second.result()
    assert summary["stage1"]["skipped"] and not summary["stage2"]["skipped"]
    assert summary["stage2"]["steps"] == 4
    assert _log_steps(out / "stage2") == [1, 2, 3, 4]
    assert (out / "stage2" / "model_index.json").is_file() and (out / "stage2.done.json").is_file()
    assert {p: p.read_bytes() for p in (out / "stage1").rglob("*.safetensors")} == stage1_weights
    assert list((out / "stage2" / "tensorboard").iterdir())  # the run is watchable

    # A third attempt has nothing left to do.
    steps_taken.clear()
    assert train_fpdm(manifest, return_state=True).is_completed() and steps_taken == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"base_model": None}, "missing base_model"),
        ({"epochs": 3}, "unknown key.*epochs"),
        ({"pairs": "nowhere.csv"}, "pairs 'nowhere.csv' not found"),
        ({"sample_every": -1}, "sample_every must be a whole number"),
        ({"stage1": {"learning_rate": "fast"}}, "stage1.learning_rate must be a number, got 'fast'"),
        ({"stage2": {"max_steps": 2.5}}, "stage2.max_steps must be a whole number or empty"),
        ({"stage2": {"lr": 1e-4}}, "stage2.lr is not an option of train_diffusion"),
        ({"stage1": {"resume": False}}, "stage1.resume is not an option"),
        ({"stage2": [1, 2]}, "stage2 must be a mapping"),
        ({"stage2": {"optimizer": "adam"}}, "stage2.optimizer 'adam' is not one of adamw, sgd"),
        ({"stage1": {"precision": "fp16"}}, "stage1.precision 'fp16' is not one of auto, bf16, fp32"),
        ({"output": "s3://models/run"}, "output 's3://models/run' is a URI; a training manifest takes local paths"),
    ],
)
def test_manifest_problems_are_named(pairs_csv, tmp_path, changes, message):
    with pytest.raises(InputError, match=message) as raised:
        read_training_manifest(_manifest(tmp_path, pairs_csv, **changes))
    assert str(tmp_path / "training.yaml") in str(raised.value)


def test_a_manifest_reads_paths_relative_to_itself(pairs_csv, tmp_path):
    manifest = read_training_manifest(_manifest(tmp_path, pairs_csv, stage2={"learning_rate": 1, "stage2_only": True}))
    assert manifest.output == tmp_path / "out" and manifest.pairs == pairs_csv
    assert manifest.base_model == "tiny" and manifest.device == "cpu"
    assert manifest.stage2 == {"learning_rate": 1, "stage2_only": True}


def test_the_train_fpdm_deployment_runs_the_flow_on_the_gpu_pool():
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in config["deployments"] if d["name"] == "train-fpdm")
    assert deployment["work_pool"]["name"] == "gpu-pool"
    flow = load_flow_from_entrypoint(str(REPO_ROOT / deployment["entrypoint"]))
    assert flow.name == "train-fpdm" and list(flow.parameters.properties) == ["manifest"]
