"""The production architecture (`fpdm-sd21`: 868 M-parameter UNet, DINOv2-L, CLIP ViT-L/14, SD 2.1's
VAE) end to end on the CPU, with random weights from its preset (nothing downloaded): built,
saved, loaded back, one sampling step at 512x352 with the three guidance branches, and one
training step of each stage at batch 1.

Memory on a 24 GB machine: the model is 5.8 GiB in float32. AdamW's two moments of the UNet
would add 7 GB to its weights and gradients, so the training steps use the stateless optimiser
(`optimizer="sgd"`, model_core.training.OPTIMIZERS); everything else is the trainers' own path
(float32 master weights, the reference's stage-2 recipe, augmentations on). Measured here: 11.2 GiB
at most, about three minutes for the module (docs/measurements.md). Each test loads the model itself, so no two copies live at once.

Disk: the model directory is 5.8 GiB and each training test writes a trained copy beside it, so
the module needs about 12 GiB under pytest's temporary folder; each trained copy is deleted when
its test has checked it, and the model when the module ends (pytest would otherwise keep them
with its last three sessions' folders). Where less is free the module is skipped, saying so.
"""

import gc
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from stick_figures import make_pairs

from model_core.images import load_image
from model_core.keypoints import read_keypoints
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.presets import preset_config
from model_core.training import train_diffusion, train_fusion

pytestmark = pytest.mark.slow  # minutes: a 1.5 B-parameter model on two CPU cores

PARTS = ("fusion", "source_encoder", "source_projector", "fusion_projector", "pose_embedding", "unet", "vae")
DISK_NEEDED = 12.5 * 2**30  # the model and one trained copy, 5.8 GiB each, and room to spare


@pytest.fixture(scope="module")
def production_model(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("fpdm-sd21")
    free = shutil.disk_usage(root).free
    if free < DISK_NEEDED:
        pytest.skip(f"{root}: {free / 2**30:.1f} GiB free, the production model's tests need {DISK_NEEDED / 2**30:.1f} GiB")
    FPDMPipeline.from_config(preset_config("fpdm-sd21")).save_pretrained(root / "model")
    gc.collect()
    yield root / "model"
    shutil.rmtree(root)


@pytest.fixture
def training_out(tmp_path) -> Iterator[Path]:
    """Where a training test writes its trained copy of the model, deleted after the test."""
    yield tmp_path / "out"
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    # Stick-figure photos of another size: they are fitted into the model's 512x352 frame.
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=1, poses_per_person=2, seed=1)


def _finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.parameters())


def test_the_production_model_loads_and_samples_a_512x352_step_with_three_branches(production_model, pairs_csv):
    pipe = FPDMPipeline.from_pretrained(production_model, device="cpu", dtype=torch.float32)
    assert (pipe.geometry.height, pipe.geometry.width) == (512, 352)
    assert all(getattr(pipe, part).dtype == torch.float32 for part in PARTS)
    parameters = sum(p.numel() for module in pipe.modules().values() for p in module.parameters())
    assert 1.5e9 < parameters < 1.6e9  # 1,566 M (docs/measurements.md)

    unet_batches = []
    pipe.unet.register_forward_hook(
        lambda module, args, kwargs, output: unet_batches.append((args[0] if args else kwargs["sample"]).shape), with_kwargs=True
    )
    pair = Path(pairs_csv).read_text().splitlines()[1].split(",")
    source = load_image(Path(pairs_csv).parent / pair[0])
    pose = read_keypoints(Path(pairs_csv).parent / pair[2])
    images = pipe.generate(source, [pose], seed=0, num_inference_steps=1, output_type="pt")

    assert images.shape == (1, 1, 3, 512, 352) and images.dtype == torch.float32
    assert torch.isfinite(images).all()
    # One UNet call for the step: e_u, e_s and e_f in one batch, on 64x44 latents.
    assert unet_batches == [torch.Size([3, 4, 64, 44])]


def test_one_training_step_of_stage_1(production_model, pairs_csv, training_out):
    result = train_fusion(
        production_model, pairs_csv, training_out, max_steps=1, batch_size=1, optimizer="sgd", device="cpu",
        loader_workers=0,
    )  # fmt: skip
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.last["loss"]))
    start = FPDMPipeline.from_pretrained(production_model, device="cpu").fusion.state_dict()
    trained = FPDMPipeline.from_pretrained(result.out, device="cpu").fusion
    assert trained.dtype == torch.float32 and _finite(trained)
    assert any(not torch.equal(start[name], value) for name, value in trained.state_dict().items())


def test_one_training_step_of_stage_2(production_model, pairs_csv, training_out):
    result = train_diffusion(
        production_model, pairs_csv, training_out, max_steps=1, batch_size=1, gradient_accumulation=1,
        warmup_fraction=0, optimizer="sgd", device="cpu", loader_workers=0,
        condition_dropout=0.0,  # at batch 1 a dropped condition would leave its projector without a gradient
    )  # fmt: skip
    log = [json.loads(line) for line in (result.out / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1] and torch.isfinite(torch.tensor(log[0]["loss"]))
    trained = FPDMPipeline.from_pretrained(result.out, device="cpu")
    assert all(_finite(getattr(trained, part)) for part in ("unet", "pose_embedding", "source_projector", "fusion_projector"))
    start = FPDMPipeline.from_pretrained(production_model, device="cpu")
    for part in ("unet", "pose_embedding", "source_projector", "fusion_projector"):
        before, after = getattr(start, part).state_dict(), getattr(trained, part).state_dict()
        assert any(not torch.equal(before[name], after[name]) for name in before), f"{part} did not train"
