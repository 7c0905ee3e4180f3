"""What a training run shows: TensorBoard event files read back as TensorBoard reads them, the
progress bar, and the stop on a diverged loss."""

import json
import time

import pytest
from stick_figures import make_pairs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fpdm_cli.main import main
from model_core.errors import TrainingDiverged
from model_core.evaluation import METRICS
from model_core.training import latest_checkpoint, train_diffusion
from model_core.training_monitor import GRID_GAP, Monitoring, TrainingMonitor

TINY_HEIGHT, TINY_WIDTH = 64, 48


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=2, poses_per_person=2, seed=0)


def _events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a few stage-2 steps and two small evaluations: ~15 s on a shared CPU
def test_a_stage2_run_writes_scalars_per_step_and_a_sample_grid_with_metrics_every_n_steps(pairs_csv, tmp_path):
    out = tmp_path / "run"
    train_diffusion(
        "tiny", pairs_csv, out, max_steps=4, batch_size=2, gradient_accumulation=1, device="cpu",
        monitoring=Monitoring(sample_every=2, eval_count=3, sample_steps=2),
    )  # fmt: skip
    events = _events(out / "tensorboard")
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/pairs_per_s"} <= set(tags["scalars"])
    for tag in ("train/loss", "train/lr", "train/pairs_per_s"):
        assert [event.step for event in events.Scalars(tag)] == [1, 2, 3, 4], tag
    # The scalars are the JSONL log's (which stays as it was).
    log = _log(out)
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in log])
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in log])
    assert all(e.value > 0 for e in events.Scalars("train/pairs_per_s"))

    for metric in METRICS:
        assert [event.step for event in events.Scalars(f"eval/{metric}")] == [2, 4], metric
    ssim = events.Scalars("eval/ssim")[0].value
    assert 0 < ssim <= 1
    grids = events.Images("samples")
    assert [grid.step for grid in grids] == [2, 4]
    # Three evaluation pairs, three pictures each: source | generated | target.
    assert grids[0].height == 3 * TINY_HEIGHT + 2 * GRID_GAP
    assert grids[0].width == 3 * TINY_WIDTH + 2 * GRID_GAP
    assert (out / "model_index.json").is_file()


@pytest.mark.slow  # a few stage-2 steps: ~10 s on a shared CPU
def test_a_diverging_run_stops_at_the_nan_step_keeping_its_checkpoints_and_writing_no_model(pairs_csv, tmp_path):
    out = tmp_path / "diverging"
    # A learning rate of 1e6 takes the first step's weights far enough that the next loss is NaN.
    with pytest.raises(TrainingDiverged) as stopped:
        train_diffusion(
            "tiny", pairs_csv, out, max_steps=6, batch_size=2, gradient_accumulation=1, learning_rate=1e6,
            warmup_fraction=0, checkpoint_every=1, device="cpu",
        )  # fmt: skip
    step = stopped.value.step
    assert step >= 2  # step 1's loss comes from the untouched model
    assert f"training diverged at step {step}: the loss is {stopped.value.loss}" in str(stopped.value)
    assert str(stopped.value.loss) in ("nan", "inf", "-inf")
    # The checkpoints before the diverged step are there; none at or after it; no final model.
    assert latest_checkpoint(out).name == f"checkpoint-{step - 1:06d}"
    assert not (out / "model_index.json").exists()
    assert [r["step"] for r in _log(out)] == list(range(1, step))
    assert [e.step for e in _events(out / "tensorboard").Scalars("train/loss")] == list(range(1, step))


@pytest.mark.slow  # a few stage-2 steps through the CLI
def test_fpdm_train_prints_the_divergence_as_one_error_line_and_exits_non_zero(pairs_csv, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        ["train", "diffusion", "--model", "tiny", "--pairs", str(pairs_csv), "--out", str(out), "--max-steps", "4",
         "--batch-size", "2", "--grad-accum", "1", "--lr", "1e6", "--warmup-fraction", "0", "--device", "cpu"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fpdm: error: training diverged at step ")
    assert "trained diffusion" not in captured.out
    assert not (out / "model_index.json").exists()


def test_the_progress_bar_shows_steps_rate_eta_and_loss(tmp_path, capsys):
    monitor = TrainingMonitor(Monitoring(progress=True, tensorboard=False), tmp_path, "diffusion", total=3)
    for step in (1, 2, 3):
        monitor.step({"step": step, "loss": 0.5 / step, "lr": 1e-4}, items=6)
    monitor.finish()
    shown = capsys.readouterr().err
    assert "diffusion" in shown and "3/3" in shown
    assert "steps/s" in shown and "pairs/s" in shown and "ETA" in shown
    assert "loss 0.1667" in shown
    assert not (tmp_path / "tensorboard").exists()


def test_no_progress_bar_off_a_terminal(tmp_path, capsys):
    monitor = TrainingMonitor(Monitoring(tensorboard=False), tmp_path, "fusion", total=2)  # pytest's stderr is no terminal
    monitor.step({"step": 1, "loss": 0.5, "lr": 1e-4}, items=6)
    monitor.finish()
    assert capsys.readouterr().err == ""


def test_a_monitor_not_enabled_writes_nothing_but_still_stops_on_nan(tmp_path, capsys):
    monitor = TrainingMonitor(Monitoring(enabled=False, progress=True), tmp_path, "diffusion", total=3)
    monitor.step({"step": 1, "loss": 0.5, "lr": 1e-4}, items=6)
    with pytest.raises(TrainingDiverged, match="at step 2: the loss is inf"):
        monitor.step({"step": 2, "loss": float("inf"), "lr": 1e-4}, items=6)
    assert capsys.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


def test_a_resumed_run_replaces_the_steps_logged_after_its_checkpoint(tmp_path):
    first = TrainingMonitor(Monitoring(), tmp_path, "fusion", total=4)
    for step in (1, 2, 3):
        first.step({"step": step, "loss": 1.0, "lr": 1e-4}, items=2)
    first.close()  # interrupted after step 3, resumed from the checkpoint of step 2
    # TensorBoard reads event files in name order: time in seconds, then a per-process counter
    # (".9" sorts after ".10"). A resumed run is a new process, a second later at least.
    time.sleep(1.1)
    resumed = TrainingMonitor(Monitoring(), tmp_path, "fusion", total=4, done=2)
    for step in (3, 4):
        resumed.step({"step": step, "loss": 0.25, "lr": 1e-4}, items=2)
    resumed.finish()
    losses = [(e.step, e.value) for e in _events(tmp_path / "tensorboard").Scalars("train/loss")]
    assert losses == [(1, 1.0), (2, 1.0), (3, 0.25), (4, 0.25)]


def test_a_retry_from_the_start_replaces_the_events_of_the_attempt_before(tmp_path):
    first = TrainingMonitor(Monitoring(), tmp_path, "fusion", total=4)
    for step in (1, 2, 3):
        first.step({"step": step, "loss": 1.0, "lr": 1e-4}, items=2)
    first.close()  # failed before its first checkpoint: the retry starts from step 1
    time.sleep(1.1)  # a new writer's file sorts after the old one (see above)
    retry = TrainingMonitor(Monitoring(), tmp_path, "fusion", total=4, done=0)
    for step in (1, 2):
        retry.step({"step": step, "loss": 0.25, "lr": 1e-4}, items=2)
    retry.finish()
    losses = [(e.step, e.value) for e in _events(tmp_path / "tensorboard").Scalars("train/loss")]
    assert losses == [(1, 0.25), (2, 0.25)]


def test_a_bad_eval_pairs_file_fails_before_the_first_step(pairs_csv, tmp_path):
    from model_core.errors import InputError

    with pytest.raises(InputError, match="nowhere.csv"):
        train_diffusion("tiny", pairs_csv, tmp_path / "out", max_steps=2, batch_size=2, device="cpu",
                        monitoring=Monitoring(sample_every=1, eval_pairs=tmp_path / "nowhere.csv"))  # fmt: skip
    assert not (tmp_path / "out" / "train_log.jsonl").exists()
