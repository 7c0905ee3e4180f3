"""Training both stages on synthetic pairs: learning, logs, checkpoints, resume, bad input."""

import json
import shutil

import pytest
import torch
from stick_figures import make_pairs

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training import fusion_retrieval_accuracy, train_diffusion, train_fusion
from model_core.training_data import read_pairs


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    # 12 people x 3 target poses = 36 pairs: chance top-1 is 1/36.
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=12, poses_per_person=3, seed=0)


@pytest.fixture(scope="module")
def fusion_model(pairs_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion")
    result = train_fusion(
        "tiny", pairs_csv, out, max_steps=200, batch_size=36, learning_rate=1e-3, device="cpu", checkpoint_every=100
    )
    return result


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow  # trains for seconds
def test_stage1_training_raises_retrieval_accuracy_well_above_chance(pairs_csv, fusion_model):
    before, _ = fusion_retrieval_accuracy(FPDMPipeline.from_pretrained("tiny", device="cpu"), pairs_csv)
    after, after_top5 = fusion_retrieval_accuracy(FPDMPipeline.from_pretrained(fusion_model.out, device="cpu"), pairs_csv)
    chance = 1 / 36
    assert before < 4 * chance
    assert after > 0.5 > 10 * chance and after_top5 > 0.9
    log = _log(fusion_model.out)
    assert [r["step"] for r in log] == list(range(1, 201))
    assert {"step", "loss", "top1", "top5", "lr"} <= set(log[-1])
    assert sum(r["loss"] for r in log[-10:]) < sum(r["loss"] for r in log[:10])
    assert (fusion_model.out / "checkpoint-000100" / "training_state.pt").is_file()


@pytest.mark.slow  # trains for seconds
def test_stage2_training_lowers_the_loss(pairs_csv, fusion_model, tmp_path):
    result = train_diffusion(
        fusion_model.out,
        pairs_csv,
        tmp_path / "diffusion",
        max_steps=24,
        batch_size=12,
        gradient_accumulation=1,
        learning_rate=1e-3,
        warmup_fraction=0,
        device="cpu",
    )
    losses = [r["loss"] for r in _log(result.out)]
    assert len(losses) == 24
    assert sum(losses[-6:]) / 6 < 0.6 * sum(losses[:6]) / 6
    trained = FPDMPipeline.from_pretrained(result.out, device="cpu")
    assert trained.uses_fusion
    # the frozen parts did not move
    original = FPDMPipeline.from_pretrained(fusion_model.out, device="cpu")
    for part in ("vae", "source_encoder", "fusion"):
        a, b = original.modules()[part].state_dict(), trained.modules()[part].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    # ...and the trained ones did
    assert not torch.equal(original.unet.conv_in.weight, trained.unet.conv_in.weight)


def test_stage2_only_training_drops_the_fusion_part(pairs_csv, tmp_path):
    result = train_diffusion(
        "tiny",
        pairs_csv,
        tmp_path / "s2",
        stage2_only=True,
        max_steps=2,
        batch_size=4,
        gradient_accumulation=2,
        warmup_fraction=0,
        device="cpu",
    )
    model = FPDMPipeline.from_pretrained(result.out, device="cpu")
    assert model.fusion is None and model.unet.class_embedding is None


def test_resume_continues_from_the_newest_checkpoint_to_the_same_weights(pairs_csv, tmp_path):
    settings = dict(
        max_steps=4, batch_size=6, gradient_accumulation=2, learning_rate=1e-3, warmup_fraction=0.5, checkpoint_every=2,
        device="cpu",
    )  # fmt: skip
    straight = train_diffusion("tiny", pairs_csv, tmp_path / "straight", **settings)

    # An interrupted run: only what existed after step 2 survives.
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(straight.out / "checkpoint-000002", interrupted / "checkpoint-000002")
    lines = (straight.out / "train_log.jsonl").read_text().splitlines()
    (interrupted / "train_log.jsonl").write_text("\n".join(lines[:3]) + "\n")  # step 3 logged, not checkpointed

    resumed = train_diffusion("tiny", pairs_csv, interrupted, resume=True, **settings)
    assert [r["step"] for r in _log(resumed.out)] == [1, 2, 3, 4]
    # The schedule resumes too: warm-up over steps 1-2, x0.1 from 55% of the run (step 3) on.
    assert (
        [r["lr"] for r in _log(resumed.out)] == [r["lr"] for r in _log(straight.out)] == pytest.approx([5e-4, 1e-3, 1e-4, 1e-4])
    )
    a = FPDMPipeline.from_pretrained(straight.out, device="cpu").unet.state_dict()
    b = FPDMPipeline.from_pretrained(resumed.out, device="cpu").unet.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_pairs_csv_problems_are_named(tmp_path, pairs_csv):
    missing_column = tmp_path / "bad.csv"
    missing_column.write_text("source_image,target_image\na.png,b.png\n")
    with pytest.raises(InputError, match="missing column.*target_pose"):
        read_pairs(missing_column)

    missing_file = pairs_csv.parent / "missing.csv"
    missing_file.write_text("source_image,target_image,target_pose\np000_0.png,nope.png,p000_1.json\n")
    with pytest.raises(InputError, match=r"row 2: target_image 'nope.png' not found"):
        read_pairs(missing_file)

    # Excel habits: BOM, stray spaces, trailing blank rows
    excel = pairs_csv.parent / "excel.csv"
    excel.write_text("\ufeffsource_image, target_image ,target_pose\n p000_0.png,p000_1.png,p000_1.json\n,,\n", encoding="utf-8")
    assert len(read_pairs(excel)) == 1


@pytest.mark.parametrize("dropout", [1.0, 0.0])
def test_condition_dropout_zeroes_what_sampling_zeroes(pairs_csv, tmp_path, monkeypatch, dropout):
    """Guidance's unconditional branch feeds the UNet zero context, zero pose residual and a
    zero fusion embedding; dropout must teach the model exactly those inputs."""
    import model_core.training as training

    seen = []
    real_denoise = training.denoise

    def recording_denoise(unet, latents, timesteps, context, pose_residual, fusion, fusion_projector):
        seen.append((context.detach().clone(), pose_residual.detach().clone(), fusion.detach().clone()))
        return real_denoise(unet, latents, timesteps, context, pose_residual, fusion, fusion_projector)

    monkeypatch.setattr(training, "denoise", recording_denoise)
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    with torch.no_grad():  # a fresh pose embedding outputs zeros anyway; make it visible
        pipe.pose_embedding.embedding.conv_out.weight.normal_()
    pipe.save_pretrained(tmp_path / "model")
    train_diffusion(
        tmp_path / "model",
        pairs_csv,
        tmp_path / "out",
        max_steps=1,
        batch_size=4,
        gradient_accumulation=1,
        warmup_fraction=0,
        condition_dropout=dropout,
        device="cpu",
    )
    ((context, pose_residual, fusion),) = seen
    for tensor in (context, pose_residual, fusion):
        per_sample = tensor.flatten(1).abs().sum(dim=1)
        assert (per_sample == 0).all() if dropout == 1.0 else (per_sample > 0).all()


def test_a_fresh_run_refuses_an_output_with_old_checkpoints_and_resume_without_one_starts_fresh(pairs_csv, tmp_path):
    settings = dict(max_steps=2, batch_size=4, gradient_accumulation=1, warmup_fraction=0, checkpoint_every=1, device="cpu")
    train_diffusion("tiny", pairs_csv, tmp_path / "out", **settings)
    assert (tmp_path / "out" / "checkpoint-000001").is_dir()
    with pytest.raises(InputError, match="checkpoints of an earlier run"):
        train_diffusion("tiny", pairs_csv, tmp_path / "out", **settings)

    # --resume where a log exists but no checkpoint does: a fresh start with a fresh log
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "train_log.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n')
    train_diffusion("tiny", pairs_csv, tmp_path / "other", resume=True, **settings)
    assert [r["loss"] != 9.0 for r in _log(tmp_path / "other")] == [True, True]


def test_target_poses_on_another_canvas_than_their_photo_are_accepted(pairs_csv, tmp_path):
    """A coco18 pose file states its own canvas; it need not be the target photo's size."""
    import json

    from model_core.keypoints import Keypoints, read_keypoints
    from model_core.training_data import PairTensors

    folder = pairs_csv.parent
    half = read_keypoints(folder / "p000_1.json")
    points = half.points.copy()
    points[:, :2] *= 2  # the same pose on a canvas twice the photo's size
    (folder / "p000_1_big.json").write_text(json.dumps(Keypoints(points, half.width * 2, half.height * 2).to_json()))
    csv = folder / "canvas.csv"
    csv.write_text(
        "source_image,target_image,target_pose\np000_0.png,p000_1.png,p000_1.json\np000_0.png,p000_1.png,p000_1_big.json\n"
    )
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    data = PairTensors(read_pairs(csv), pipe)
    assert torch.allclose(data.item(0)["skeleton"], data.item(1)["skeleton"], atol=0.02)


@pytest.mark.slow  # trains for seconds
def test_vae_training_fits_the_photos_and_sets_the_latent_scale(pairs_csv, tmp_path):
    from model_core.vae_training import train_vae

    result = train_vae("tiny", pairs_csv, tmp_path / "vae", max_steps=30, batch_size=8, device="cpu", checkpoint_every=15)
    log = _log(tmp_path / "vae")
    assert [r["step"] for r in log] == list(range(1, 31)) and (tmp_path / "vae" / "checkpoint-000015").is_dir()
    assert sum(r["l1"] for r in log[-5:]) < 0.7 * sum(r["l1"] for r in log[:5])  # it learns to reconstruct
    trained = FPDMPipeline.from_pretrained(result.out, device="cpu")
    assert trained.vae.config.scaling_factor == pytest.approx(result.last["scaling_factor"])
    assert trained.vae.config.scaling_factor != FPDMPipeline.from_pretrained("tiny").vae.config.scaling_factor
    # It was trained on the posterior mean, so its posterior is the mean: stage 2 samples it.
    photos = torch.rand(4, 3, 64, 48) * 2 - 1
    assert trained.vae.encode(photos).latent_dist.std.max() < 1e-6
    # Everything but the VAE is the model it started from.
    tiny = FPDMPipeline.from_pretrained("tiny", device="cpu")
    assert all(
        torch.equal(a, b) for a, b in zip(trained.unet.state_dict().values(), tiny.unet.state_dict().values(), strict=True)
    )


def test_vae_reconstruction_loss_weighs_the_figure_and_its_colour_over_the_background():
    from model_core.vae_training import garment_weighted_reconstruction_loss as loss

    target = torch.full((1, 3, 16, 12), 0.9)  # a light catalog background...
    target[:, :, 4:12, 3:9] = torch.tensor([0.6, -0.6, -0.6]).view(1, 3, 1, 1)  # ...and a red garment
    on_background, on_figure = target.clone(), target.clone()
    on_background[:, :, 0:8, 0:3] -= 0.2  # the same darkening, 24 pixels each
    on_figure[:, :, 4:12, 3:6] -= 0.2
    assert loss(target, target) == 0
    assert loss(on_figure, target) > 3 * loss(on_background, target)
    # The garment recoloured (red to green) costs more than darkened by as much per channel.
    darker, recoloured = target.clone(), target.clone()
    darker[:, :, 4:12, 3:9] -= 0.4
    recoloured[:, 0, 4:12, 3:9] -= 0.4
    recoloured[:, 1, 4:12, 3:9] += 0.4
    recoloured[:, 2, 4:12, 3:9] -= 0.4
    assert loss(recoloured, target) > 1.5 * loss(darker, target)


@pytest.mark.parametrize("train_source_encoder", [False, True])
def test_the_source_encoder_learns_only_when_asked(pairs_csv, tmp_path, train_source_encoder):
    result = train_diffusion(
        "tiny",
        pairs_csv,
        tmp_path / "s2",
        max_steps=2,
        batch_size=4,
        gradient_accumulation=1,
        warmup_fraction=0,
        learning_rate=1e-2,
        train_source_encoder=train_source_encoder,
        device="cpu",
    )
    start = FPDMPipeline.from_pretrained("tiny", device="cpu").source_encoder.state_dict()
    trained = FPDMPipeline.from_pretrained(result.out, device="cpu").source_encoder.state_dict()
    changed = [name for name in start if not torch.equal(start[name], trained[name])]
    # Some of its weights are never used by a step (the mask token), so not every weight changes.
    assert (len(changed) > len(start) // 2) if train_source_encoder else changed == []
