"""Training from and to S3 (moto's server): pairs and images read from a bucket, checkpoints and
the final model written there whole or not at all, resumed from, pruned."""

import json
import logging
import multiprocessing
import os
import pickle
from pathlib import Path

import pytest
import torch
from stick_figures import make_pairs

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training import train_diffusion
from model_core.training_data import read_pairs
from model_core.training_files import download_directory
from model_core.training_run import TRAINING_STATE, TrainingRun, latest_checkpoint
from pipeline import training_storage
from pipeline.training_storage import S3TrainingFiles

PAIRS = "s3://catalog/set/pairs.csv"
# A constant learning rate, so that a 2-step run and a 3-step run take the same first steps.
SETTINGS = dict(
    batch_size=2, gradient_accumulation=1, learning_rate=1e-3, warmup_fraction=0, lr_decay_at=1.0, checkpoint_every=1,
    device="cpu",
)  # fmt: skip


@pytest.fixture
def files():
    return S3TrainingFiles()


@pytest.fixture
def local_pairs(tmp_path):
    return make_pairs(tmp_path / "pairs", people=2, poses_per_person=2, seed=0)


@pytest.fixture
def s3_pairs(s3, files, local_pairs):
    """The pairs on S3, their files in img/ below the CSV's folder."""
    for path in local_pairs.parent.iterdir():
        if path.suffix in (".png", ".json"):
            files.write_bytes(f"s3://catalog/set/img/{path.name}", path.read_bytes())
    lines = local_pairs.read_text().splitlines()
    rows = [",".join(f"img/{cell}" for cell in line.split(",")) for line in lines[1:]]
    files.write_bytes(PAIRS, "\n".join([lines[0], *rows]).encode())
    return PAIRS


def _checkpoint_keys(files, out):
    return sorted(files.relative(uri, out) for uri in files.list_files(out) if "checkpoint-" in uri)


def _unet(files, location, tmp_path):
    local = download_directory(files, location, tmp_path / "download" / location.rsplit("/", 1)[-1])
    return FPDMPipeline.from_pretrained(local, device="cpu").unet.state_dict()


@pytest.mark.slow  # trains 7 tiny steps: seconds
def test_training_reads_s3_writes_checkpoints_there_and_resumes_past_an_incomplete_one(
    s3_pairs, files, local_pairs, tmp_path, caplog
):
    straight = train_diffusion("tiny", local_pairs, tmp_path / "straight", max_steps=3, **SETTINGS)

    out = "s3://catalog/runs/r1"
    first = train_diffusion("tiny", s3_pairs, out, max_steps=2, files=files, **SETTINGS)
    assert first.out == out
    assert latest_checkpoint(out, files) == f"{out}/checkpoint-000001"
    # A longer run that stopped while writing its step-2 checkpoint: every file but the marker.
    for uri in files.list_files(f"{out}/checkpoint-000001"):
        if not uri.endswith(TRAINING_STATE):
            files.write_bytes(uri.replace("checkpoint-000001", "checkpoint-000002"), files.read_bytes(uri))
    assert latest_checkpoint(out, files) == f"{out}/checkpoint-000001"

    with caplog.at_level(logging.WARNING, logger="model_core.training_run"):
        resumed = train_diffusion("tiny", s3_pairs, out, max_steps=3, resume=True, files=files, **SETTINGS)
    assert f"{out}/checkpoint-000002: incomplete checkpoint" in caplog.text
    assert f"resuming from {out}/checkpoint-000001" in caplog.text

    log = [json.loads(line) for line in files.read_bytes(f"{out}/train_log.jsonl").decode().splitlines()]
    straight_log = [json.loads(line) for line in (straight.out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in straight_log], rel=1e-4)
    # The final model, downloaded, is the uninterrupted run's.
    a = FPDMPipeline.from_pretrained(straight.out, device="cpu").unet.state_dict()
    b = _unet(files, resumed.out, tmp_path)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # The step-2 checkpoint was written again, whole this time.
    assert latest_checkpoint(out, files) == f"{out}/checkpoint-000002"


@pytest.mark.slow  # trains 4 tiny steps: seconds
def test_keep_checkpoints_prunes_older_complete_ones_and_a_fresh_run_refuses_the_output(s3_pairs, files, tmp_path):
    out = "s3://catalog/runs/pruned"
    train_diffusion("tiny", s3_pairs, out, max_steps=4, keep_checkpoints=2, files=files, **SETTINGS)
    kept = _checkpoint_keys(files, out)
    assert {key.split("/")[0] for key in kept} == {"checkpoint-000002", "checkpoint-000003"}
    assert f"checkpoint-000003/{TRAINING_STATE}" in kept and "checkpoint-000003/unet/config.json" in kept
    FPDMPipeline.from_pretrained(download_directory(files, f"{out}/checkpoint-000003", tmp_path / "c3"), device="cpu")

    with pytest.raises(InputError, match="checkpoints of an earlier run; use --resume"):
        train_diffusion("tiny", s3_pairs, out, max_steps=4, files=files, **SETTINGS)


@pytest.mark.slow  # trains 2 tiny steps: seconds
def test_an_s3_run_uploads_its_tensorboard_events_and_sample_grids_need_local_eval_pairs(s3_pairs, files, local_pairs):
    from model_core.training_monitor import Monitoring

    out = "s3://catalog/runs/watched"
    train_diffusion("tiny", s3_pairs, out, max_steps=2, files=files, **SETTINGS)
    events = [uri for uri in files.list_files(f"{out}/tensorboard") if "events.out.tfevents" in uri]
    assert len(events) == 1 and files.read_bytes(events[0])

    with pytest.raises(InputError, match="sample grids of pairs on S3 need a local held-out pairs CSV"):
        train_diffusion("tiny", s3_pairs, "s3://catalog/runs/grids", max_steps=2, files=files,
                        monitoring=Monitoring(sample_every=1), **SETTINGS)  # fmt: skip
    grids = train_diffusion("tiny", s3_pairs, "s3://catalog/runs/grids", max_steps=2, files=files,
                            monitoring=Monitoring(sample_every=2, eval_pairs=local_pairs, eval_count=1), **SETTINGS)  # fmt: skip
    assert grids.steps == 2


def test_pairs_on_s3_resolve_below_the_csv_and_bad_paths_are_named_by_row(s3_pairs, files):
    pairs = read_pairs(s3_pairs, files)
    assert len(pairs) == 4 and pairs[0].source_image == "s3://catalog/set/img/p000_0.png"

    bad = "s3://catalog/set/bad.csv"
    files.write_bytes(
        bad,
        b"source_image,target_image,target_pose\n"
        b"../img/p000_0.png,img/p000_1.png,img/p000_1.json\n"
        b"/img/p000_0.png,img/p000_1.png,img/p000_1.json\n"
        b"img/p000_0.png,s3://other/p000_1.png,img/p000_1.json\n"
        b"img/p000_0.png,img//p000_1.png,img/p000_1.json\n"
        b"img/p000_0.png,img/nope.png,img/p000_1.json\n",
    )
    calls = []
    training_storage._client().meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    with pytest.raises(InputError) as refused:
        read_pairs(bad, files)
    message = str(refused.value)
    assert message.startswith(f"{bad}: row 2: source_image '../img/p000_0.png' has a '.' or '..' segment")
    assert "row 3: source_image '/img/p000_0.png' is absolute" in message
    assert "row 4: target_image 's3://other/p000_1.png' is absolute" in message
    assert "row 5: target_image 'img//p000_1.png' has an empty folder name" in message
    assert "row 6: target_image 'img/nope.png' not found" in message
    # Existence from one listing of the CSV's folder, not a request per file.
    assert calls == ["GetObject", "ListObjectsV2"]


def test_a_checkpoint_without_its_marker_is_never_resumed_from(s3, files):
    out = "s3://catalog/runs/crashed"
    files.write_bytes(f"{out}/checkpoint-000004/model_index.json", b"{}")
    files.write_bytes(f"{out}/train_log.jsonl", b'{"step": 1, "loss": 9.0}\n')
    assert latest_checkpoint(out, files) is None
    run = TrainingRun(out, resume=True, files=files)  # nothing complete: a fresh start, a fresh log
    assert run.resume_from is None
    assert f"{out}/train_log.jsonl" not in files.list_files(out)


def _client_id(files: S3TrainingFiles) -> tuple[int, bytes]:
    return id(training_storage._client()), files.read_bytes("s3://catalog/set/img/p000_0.png")


def test_the_reader_pickles_and_a_forked_worker_opens_its_own_client(s3_pairs, files):
    parent_client = id(training_storage._client())
    copy = pickle.loads(pickle.dumps(files))
    expected = files.read_bytes("s3://catalog/set/img/p000_0.png")
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child_client, data = pool.apply(_client_id, (copy,))
    assert data == expected
    assert child_client != parent_client  # a forked worker must not share the parent's connections


@pytest.mark.slow  # starts the CLI's training: seconds
def test_fpdm_train_takes_s3_model_pairs_and_out(s3_pairs, files, tmp_path):
    from fpdm_cli.main import main

    FPDMPipeline.from_pretrained("tiny").save_pretrained(tmp_path / "tiny")
    for path in (tmp_path / "tiny").rglob("*"):
        if path.is_file():
            files.write_bytes(f"s3://catalog/models/tiny/{path.relative_to(tmp_path / 'tiny').as_posix()}", path.read_bytes())
    common = ["train", "vae", "--model", "s3://catalog/models/tiny", "--pairs", s3_pairs, "--max-steps", "2"]
    assert main([*common, "--out", "s3://catalog/runs/vae", "--checkpoint-every", "1", "--device", "cpu"]) == 0
    model = download_directory(files, "s3://catalog/runs/vae", tmp_path / "vae")
    assert Path(model, "model_index.json").is_file() and os.path.isdir(model / "checkpoint-000001")
    trained = FPDMPipeline.from_pretrained(model, device="cpu").vae.state_dict()
    start = FPDMPipeline.from_pretrained(tmp_path / "tiny", device="cpu").vae.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start)
