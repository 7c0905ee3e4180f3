"""Several training processes (torchrun + DDP over gloo, for real) against one, and batches
built by loader workers against batches built in the training process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stick_figures import make_pairs

from model_core.distributed import World, rank_positions
from model_core.loading import MicroBatches, micro_batch_loader
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training import REFERENCE_AUGMENTATION, train_diffusion, train_fusion
from model_core.training_data import PairTensors, read_pairs

ROOT = Path(__file__).resolve().parents[2]
# One process's float sums in another order than two processes' (a gradient is summed per rank,
# then averaged): equal up to float32 rounding.
LOSS_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-5  # of the largest gradient (measured: up to 1.1e-6)
WEIGHT_TOLERANCE = 1e-6
# AdamW's first update is lr * g / (|g| + eps): a weight whose gradient is float noise (measured:
# |g| below 1e-7 where the largest is 0.2) moves by up to lr either way in either run. Weights are
# compared where the gradient stands clear of that noise.
CLEAR_GRADIENT = 1e-4  # of the largest gradient


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=3, poses_per_person=2, seed=0)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _torchrun(processes: int, *arguments: str, timeout: float = 300) -> None:
    """`fpdm` under torchrun on this machine (a free port on 127.0.0.1); waits for every process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "fpdm_cli.main", *arguments]
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    # torchrun ends its workers when it ends; on a timeout the whole group is killed.
    process = subprocess.Popen(
        command, env=environment, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        raise
    assert process.returncode == 0, output.decode()[-3000:]


def _assert_same_first_step(one: Path, two: Path, parts: tuple[str, ...]) -> None:
    """Same gradients (AdamW's first exp_avg is (1 - beta1) g), and the same weights after the step."""
    state_one = torch.load(one / "training_state.pt", weights_only=True)["optimizer"]["state"]
    state_two = torch.load(two / "training_state.pt", weights_only=True)["optimizer"]["state"]
    largest = max(state["exp_avg"].abs().max().item() for state in state_one.values())
    for key, state in state_one.items():
        assert (state["exp_avg"] - state_two[key]["exp_avg"]).abs().max().item() < GRADIENT_TOLERANCE * largest, key
    parameters_one = [p for part in parts for p in FPDMPipeline.from_pretrained(one, device="cpu").modules()[part].parameters()]
    parameters_two = [p for part in parts for p in FPDMPipeline.from_pretrained(two, device="cpu").modules()[part].parameters()]
    clear = 0
    for index, (a, b) in enumerate(zip(parameters_one, parameters_two, strict=True)):
        mask = state_one[index]["exp_avg"].abs() > CLEAR_GRADIENT * largest
        clear += mask.sum().item()
        assert (a - b)[mask].abs().max().item() < WEIGHT_TOLERANCE if mask.any() else True, index
    assert clear > 0.8 * sum(p.numel() for p in parameters_one)  # measured: 86% (stage 1), over 90% (stage 2)


def _max_difference(a: Path, b: Path, part: str) -> float:
    first = FPDMPipeline.from_pretrained(a, device="cpu").modules()[part].state_dict()
    second = FPDMPipeline.from_pretrained(b, device="cpu").modules()[part].state_dict()
    return max((first[k] - second[k]).abs().max().item() for k in first)


def test_each_rank_takes_its_contiguous_share_of_every_global_batch():
    assert [list(rank_positions(5, World(rank=r, size=2))) for r in range(2)] == [[0, 1, 2], [3, 4]]
    shares = [list(rank_positions(7, World(rank=r, size=3))) for r in range(3)]
    assert sum(shares, []) == list(range(7)) and [len(s) for s in shares] == [3, 2, 2]


def test_loader_workers_build_the_same_batches_as_the_training_process(pairs_csv):
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    data = PairTensors(read_pairs(pairs_csv), pipe, REFERENCE_AUGMENTATION)
    batches = MicroBatches(data, batch_size=4, seed=3, world=World())
    built = {workers: list(micro_batch_loader(batches, 2, 8, workers, torch.device("cpu"))) for workers in (0, 2)}
    assert len(built[0]) == len(built[2]) == 6
    for alone, in_workers in zip(built[0], built[2], strict=True):
        assert alone.keys() == in_workers.keys()
        assert all(torch.equal(alone[key], in_workers[key]) for key in alone)
    # the augmentations are drawn per sample: flips and low-resolution sources differ between visits
    assert not torch.equal(built[0][0]["target"], built[0][1]["target"])


@pytest.mark.slow  # trains twice
def test_training_with_loader_workers_takes_the_same_steps(pairs_csv, tmp_path):
    settings = dict(max_steps=2, batch_size=4, gradient_accumulation=2, learning_rate=1e-3, warmup_fraction=0, device="cpu")
    alone = train_diffusion("tiny", pairs_csv, tmp_path / "alone", loader_workers=0, **settings)
    workers = train_diffusion("tiny", pairs_csv, tmp_path / "workers", loader_workers=2, **settings)
    assert [r["loss"] for r in _log(alone.out)] == [r["loss"] for r in _log(workers.out)]
    assert _max_difference(alone.out, workers.out, "unet") == 0


@pytest.mark.slow  # two torchrun launches and three runs in this process
def test_stage2_on_two_gloo_processes_matches_one_process_and_resumes_with_one(pairs_csv, tmp_path):
    # Batch 5 splits 3 + 2: the ranks' shares are weighted, not averaged. Accumulation 2: DDP
    # exchanges gradients only at a step's last micro-step.
    settings = dict(max_steps=3, batch_size=5, gradient_accumulation=2, learning_rate=1e-3, warmup_fraction=0, checkpoint_every=1)
    one = train_diffusion("tiny", pairs_csv, tmp_path / "one", device="cpu", loader_workers=0, **settings)
    _torchrun(
        2, "train", "diffusion", "--model", "tiny", "--pairs", str(pairs_csv), "--out", str(tmp_path / "two"),
        "--max-steps", "3", "--batch-size", "5", "--grad-accum", "2", "--lr", "1e-3", "--warmup-fraction", "0",
        "--checkpoint-every", "1", "--device", "cpu", "--loader-workers", "0",
    )  # fmt: skip
    two = tmp_path / "two"
    losses_one, losses_two = [r["loss"] for r in _log(one.out)], [r["loss"] for r in _log(two)]
    assert len(losses_two) == 3 and losses_two == pytest.approx(losses_one, rel=LOSS_TOLERANCE)
    assert losses_one[0] != losses_one[1]  # a step's loss is not constant: the comparison means something
    # the optimiser's parameter order: model_core.training's trainable list
    _assert_same_first_step(
        one.out / "checkpoint-000001",
        two / "checkpoint-000001",
        ("unet", "pose_embedding", "source_projector", "fusion_projector"),
    )

    # A checkpoint saved by two processes resumes in one, to the uninterrupted run's weights.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(two / "checkpoint-000002", resumed / "checkpoint-000002")
    train_diffusion("tiny", pairs_csv, resumed, device="cpu", resume=True, loader_workers=0, **settings)
    assert [r["step"] for r in _log(resumed)] == [3]
    assert _log(resumed)[0]["loss"] == pytest.approx(losses_one[2], rel=LOSS_TOLERANCE)
    assert _max_difference(one.out, resumed, "unet") < settings["learning_rate"]  # Adam's noise floor, see CLEAR_GRADIENT


@pytest.mark.slow  # a torchrun launch and a run in this process
def test_stage1_on_two_gloo_processes_matches_one_process(pairs_csv, tmp_path):
    # The contrastive loss of the global batch: each rank needs the others' embeddings.
    one = train_fusion(
        "tiny", pairs_csv, tmp_path / "one", max_steps=2, batch_size=5, learning_rate=1e-3, device="cpu", checkpoint_every=1
    )
    _torchrun(
        2, "train", "fusion", "--model", "tiny", "--pairs", str(pairs_csv), "--out", str(tmp_path / "two"),
        "--max-steps", "2", "--batch-size", "5", "--lr", "1e-3", "--checkpoint-every", "1", "--device", "cpu",
    )  # fmt: skip
    two = tmp_path / "two"
    for key in ("loss", "top1", "top5"):
        assert [r[key] for r in _log(two)] == pytest.approx([r[key] for r in _log(one.out)], rel=LOSS_TOLERANCE), key
    _assert_same_first_step(one.out / "checkpoint-000001", two / "checkpoint-000001", ("fusion",))
