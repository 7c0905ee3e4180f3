"""Reduced precision on the CPU, through the code path a GPU takes: sampling in bf16 and fp16 (the
VAE kept in float32 for fp16), training steps of both stages under bf16 autocast. Each agrees
with float32 within a stated tolerance."""

from pathlib import Path

import pytest
import torch
from stick_figures import make_pairs

from model_core.errors import InputError
from model_core.images import load_image
from model_core.keypoints import read_keypoints
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training import train_diffusion, train_fusion

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "example" / "s3g0000-dots"


@pytest.fixture(scope="module")
def example():
    source = load_image(EXAMPLE / "source.png")
    return source, [read_keypoints(EXAMPLE / "poses" / name) for name in ("walk-front.json", "stand-back.json")]


def sample(dtype: torch.dtype, example) -> tuple[FPDMPipeline, torch.Tensor]:
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu", dtype=dtype)
    source, poses = example
    return pipe, pipe.generate(source, poses, seed=3, num_inference_steps=4, output_type="pt").float()


@pytest.mark.parametrize(
    ("dtype", "vae_dtype", "mean_levels", "max_levels"),
    # Grey levels (of 255) from float32. Measured on the CPU at these 4 steps: bf16 0.46 mean / 4.1
    # max, fp16 0.04 / 0.36; the bounds leave room for other CPUs' kernels.
    [(torch.bfloat16, torch.bfloat16, 2.0, 24.0), (torch.float16, torch.float32, 0.5, 6.0)],
)
def test_half_precision_sampling_agrees_with_float32(example, dtype, vae_dtype, mean_levels, max_levels):
    _, reference = sample(torch.float32, example)
    pipe, images = sample(dtype, example)
    assert pipe.unet.dtype == dtype and pipe.source_projector.dtype == dtype
    assert pipe.vae.dtype == vae_dtype  # SD's VAE overflows in float16: it stays float32 there
    assert torch.isfinite(images).all()
    levels = (images - reference).abs() * 127.5
    print(f"{dtype}: {levels.mean():.3f} mean, {levels.max():.2f} max grey levels from float32")
    assert levels.mean() <= mean_levels and levels.max() <= max_levels
    assert levels.mean() > 0  # it did compute in another precision


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=4, poses_per_person=2, seed=1)


def _first_step(train, pairs_csv, out: Path, precision: str, **options) -> tuple[float, FPDMPipeline]:
    result = train("tiny", pairs_csv, out, max_steps=1, batch_size=8, device="cpu", precision=precision, **options)
    return result.last["loss"], FPDMPipeline.from_pretrained(result.out, device="cpu")


@pytest.mark.parametrize("stage", ["fusion", "diffusion"])
def test_a_bf16_autocast_training_step_agrees_with_float32_and_keeps_float32_weights(pairs_csv, tmp_path, stage):
    if stage == "fusion":
        train, options, part = train_fusion, {"learning_rate": 1e-3}, "fusion"
    else:
        train, options, part = train_diffusion, {"learning_rate": 1e-3, "gradient_accumulation": 1, "warmup_fraction": 0}, "unet"
    start = getattr(FPDMPipeline.from_pretrained("tiny", device="cpu"), part).state_dict()
    fp32_loss, fp32 = _first_step(train, pairs_csv, tmp_path / "fp32", "fp32", **options)
    bf16_loss, bf16 = _first_step(train, pairs_csv, tmp_path / "bf16", "bf16", **options)

    assert bf16_loss == pytest.approx(fp32_loss, rel=0.01) and bf16_loss != fp32_loss
    fp32_weights, bf16_weights = getattr(fp32, part).state_dict(), getattr(bf16, part).state_dict()
    moved = {name for name, value in fp32_weights.items() if not torch.equal(value, start[name])}
    assert moved, "the step changed the weights"
    assert all(bf16_weights[name].dtype == torch.float32 for name in moved)  # master weights stay float32
    fp32_step = torch.cat([(fp32_weights[name] - start[name]).flatten() for name in sorted(moved)])
    bf16_step = torch.cat([(bf16_weights[name] - start[name]).flatten() for name in sorted(moved)])
    # AdamW's first step moves each weight by about the learning rate times its gradient's sign:
    # the two precisions' steps point the same way (weights with near-zero gradients may differ).
    agreement = (torch.sign(fp32_step) == torch.sign(bf16_step)).float().mean()
    print(f"{stage}: loss fp32 {fp32_loss:.5f} bf16 {bf16_loss:.5f}; step signs agree on {agreement:.3f}")
    assert agreement >= 0.95


def test_an_unknown_precision_is_refused_before_anything_loads(pairs_csv, tmp_path):
    with pytest.raises(InputError, match="precision 'fp8' is not one of auto, bf16, fp32"):
        train_fusion("tiny", pairs_csv, tmp_path / "out", max_steps=1, precision="fp8")
