"""The completion rule of checkpoints and models on local disk: a directory counts only once its
marker, written last, exists; pruning keeps the newest; URIs need an implementation that knows them."""

import pytest
import torch

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training_data import read_pairs
from model_core.training_files import LocalTrainingFiles
from model_core.training_run import TRAINING_STATE, TrainingRun, latest_checkpoint


@pytest.fixture(scope="module")
def tiny():
    return FPDMPipeline.from_pretrained("tiny", device="cpu", dtype=torch.float32)


def _optimiser():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


class StopsAfter(LocalTrainingFiles):
    """Local disk whose writer stops (a crash, a killed job) after `files` files."""

    def __init__(self, files: int):
        self.left = files

    def put_file(self, local_path, location):
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        super().put_file(local_path, location)


def test_a_checkpoint_cut_short_between_files_is_not_a_checkpoint(tiny, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(out, resume=False, files=StopsAfter(3)).checkpoint(tiny, *_optimiser(), step=2)
    assert (out / "checkpoint-000002").is_dir() and not (out / "checkpoint-000002" / TRAINING_STATE).exists()
    assert latest_checkpoint(out) is None
    assert [p.name for p in out.iterdir()] == ["checkpoint-000002"]  # the staging folder is gone too

    TrainingRun(out, resume=False).checkpoint(tiny, *_optimiser(), step=2)  # a fresh run writes it over
    assert latest_checkpoint(out) == out / "checkpoint-000002"
    # Rewriting a complete one: its marker goes first, so a crash leaves it incomplete, never mixed.
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(out, resume=True, files=StopsAfter(1)).checkpoint(tiny, *_optimiser(), step=2)
    assert latest_checkpoint(out) is None


def test_keep_checkpoints_deletes_all_but_the_newest_complete_ones(tiny, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-000001").mkdir(parents=True)  # an incomplete leftover, older than what follows
    (out / "checkpoint-000001" / "model_index.json").write_text("{}")
    run = TrainingRun(out, resume=False, keep_checkpoints=2)
    for step in (2, 3, 4):
        run.checkpoint(tiny, *_optimiser(), step=step)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-000003", "checkpoint-000004"]
    assert FPDMPipeline.from_pretrained(out / "checkpoint-000003", device="cpu").name == tiny.name

    run = TrainingRun(out, resume=True, keep_checkpoints=1)
    assert run.resume_from == out / "checkpoint-000004"
    run.checkpoint(tiny, *_optimiser(), step=5)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-000005"]

    with pytest.raises(InputError, match="keep_checkpoints must be at least 1"):
        TrainingRun(tmp_path / "other", resume=False, keep_checkpoints=0)


def test_the_final_model_replaces_an_earlier_one_index_last(tiny, tmp_path):
    out = tmp_path / "out"
    run = TrainingRun(out, resume=False)
    run.save_final(tiny)
    (out / "unet" / "stale.bin").write_bytes(b"from an earlier model")
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(out, resume=False, files=StopsAfter(2)).save_final(tiny)
    assert not (out / "model_index.json").exists()  # half rewritten: no longer a model directory
    TrainingRun(out, resume=False).save_final(tiny)
    assert (out / "model_index.json").is_file() and not (out / "unet" / "stale.bin").exists()
    FPDMPipeline.from_pretrained(out, device="cpu")


def test_uris_need_an_implementation_that_knows_them():
    with pytest.raises(InputError, match=r"s3://b/pairs.csv: not a local path.*S3TrainingFiles"):
        read_pairs("s3://b/pairs.csv")


def test_a_training_output_downloaded_as_a_starting_model_leaves_out_checkpoints_events_and_log(tmp_path):
    from model_core.training_files import LOCAL_FILES, download_directory
    from model_core.training_run import MODEL_DOWNLOAD_SKIPS

    out = tmp_path / "out"
    for name in ("model_index.json", "unet/config.json", "checkpoint-000500/unet/config.json",
                 "checkpoint-000500/training_state.pt", "tensorboard/events.out.tfevents.1", "train_log.jsonl"):  # fmt: skip
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    copy = download_directory(LOCAL_FILES, out, tmp_path / "copy", skip=MODEL_DOWNLOAD_SKIPS)
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == ["model_index.json", "unet/config.json"]
