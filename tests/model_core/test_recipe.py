"""The reference's recipe in effect (docs/models-and-training.md, "Defaults and their sources"):
DDPM sampling and the mlp fusion head for new models, with models of the first layout (the
first `demo`) loading and sampling exactly as before."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image

from model_core.errors import InputError
from model_core.images import load_image
from model_core.keypoints import read_keypoints
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.presets import preset_config
from model_core.stage2 import FusionProjector, SourceProjector

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "manifests" / "example" / "s3g0000-dots"
# The first `demo` (shipped until 2026-12-04), a model directory of the first format, kept as
# it was written; and its images for this source and these poses, sampled with the code before
# the recipe (commit c7b9c7e): seed 7, 6 steps, one PNG strip of the two poses.
DEMO_FORMAT1 = Path(__file__).parent / "data" / "demo_format1"
DEMO_BEFORE_RECIPE = Path(__file__).parent / "data" / "demo_format1_sample.png"


@pytest.fixture(scope="module")
def tiny():
    return FPDMPipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def example():
    source = load_image(EXAMPLE / "source.png")
    poses = [read_keypoints(EXAMPLE / "poses" / name) for name in ("walk-front.json", "stand-back.json")]
    return source, poses


# ----- sampling ----------------------------------------------------------------------------


def test_new_presets_sample_with_ddpm_and_other_schedulers_are_chosen_per_run(tiny, example):
    for name in ("tiny", "demo-init", "fpdm-sd21"):
        assert preset_config(name)["scheduler"]["_class_name"] == "DDPMScheduler", name
    assert isinstance(tiny.scheduler, DDPMScheduler)

    source, poses = example
    ddpm = tiny.generate(source, poses[:1], seed=1, num_inference_steps=3, output_type="pt")
    again = tiny.generate(source, poses[:1], seed=1, num_inference_steps=3, output_type="pt")
    assert torch.equal(ddpm, again)  # DDPM's step noise comes from the job's seeded generator too
    ddim = tiny.generate(source, poses[:1], seed=1, num_inference_steps=3, output_type="pt", scheduler="DDIMScheduler")
    assert (ddpm - ddim).abs().max() > 1e-3
    assert isinstance(tiny.scheduler, DDPMScheduler)  # the model keeps its own

    with pytest.raises(InputError, match="unknown diffusers scheduler class 'NoSuchScheduler'"):
        tiny.generate(source, poses[:1], num_inference_steps=2, scheduler="NoSuchScheduler")
    with pytest.raises(InputError, match="unknown diffusers scheduler class 'UNet2DConditionModel'"):
        tiny.generate(source, poses[:1], num_inference_steps=2, scheduler="UNet2DConditionModel")


def test_a_model_samples_with_the_scheduler_its_directory_names(tiny, example, tmp_path):
    tiny.save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    config_file.write_text(config_file.read_text().replace('"DDPMScheduler"', '"DDIMScheduler"'))
    swapped = FPDMPipeline.from_pretrained(tmp_path / "model", device="cpu")
    assert isinstance(swapped.scheduler, DDIMScheduler)
    source, poses = example
    a = swapped.generate(source, poses[:1], seed=2, num_inference_steps=3, output_type="pt")
    b = tiny.generate(source, poses[:1], seed=2, num_inference_steps=3, output_type="pt", scheduler="DDIMScheduler")
    assert (a - b).abs().max() < 1e-5


# ----- the fusion head ---------------------------------------------------------------------


def mlp_shapes(projector: FusionProjector) -> list:
    return [(type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None), getattr(m, "p", None))
            for m in projector.layers]  # fmt: skip


def test_the_fusion_head_is_the_reference_mlp_before_an_identity_class_embedding():
    """Reference: Linear 768->768, GELU, Dropout 0.2, Linear 768->1280, Dropout 0.2, added to the
    time embedding; diffusers' stock UNet with the parameter-free `identity` class embedding."""
    config = preset_config("fpdm-sd21")
    with torch.device("meta"):
        projector = FusionProjector(**config["fusion_projector"])
        unet = UNet2DConditionModel(**config["unet"])
        source_projector = SourceProjector(**config["source_projector"])
    assert mlp_shapes(projector) == [
        ("Linear", 768, 768, None), ("GELU", None, None, None), ("Dropout", None, None, 0.2),
        ("Linear", 768, 1280, None), ("Dropout", None, None, 0.2),
    ]  # fmt: skip
    assert unet.config.class_embed_type == "identity" and isinstance(unet.class_embedding, torch.nn.Identity)
    assert unet.time_embedding.linear_2.out_features == 1280
    assert [m.p for m in source_projector.layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]

    tiny = FPDMPipeline.from_pretrained("tiny", device="cpu")  # the same head at toy size: 32 -> 32 -> 256
    assert mlp_shapes(tiny.fusion_projector) == [
        ("Linear", 32, 32, None), ("GELU", None, None, None), ("Dropout", None, None, 0.2),
        ("Linear", 32, 256, None), ("Dropout", None, None, 0.2),
    ]  # fmt: skip
    assert tiny.unet.time_embedding.linear_2.out_features == 256


def test_the_fusion_projector_feeds_the_unet_and_zero_fusion_passes_through_it(tiny, example):
    """As in the reference, a dropped fusion condition is a zero embedding before the head."""
    calls = []
    hook = tiny.fusion_projector.register_forward_hook(lambda module, args, output: calls.append(args[0].clone()))
    try:
        source, poses = example
        tiny.generate(source, poses[:1], seed=0, num_inference_steps=1)
    finally:
        hook.remove()
    (fusion_in,) = calls  # one call for the three guidance branches
    e_u, e_s, e_f = fusion_in.chunk(3)
    assert (e_u == 0).all() and (e_s == 0).all() and (e_f != 0).any()


def test_model_directories_write_the_oldest_format_that_describes_them(tiny, tmp_path):
    import json

    from model_core.training import without_fusion

    tiny.save_pretrained(tmp_path / "full")
    index = json.loads((tmp_path / "full" / "model_index.json").read_text())
    assert index["format_version"] == 2 and "fusion_projector" in index["components"]
    without_fusion(tiny).save_pretrained(tmp_path / "stage2")
    assert json.loads((tmp_path / "stage2" / "model_index.json").read_text())["format_version"] == 1

    index["format_version"] = 1  # a format-1 directory cannot hold a fusion projector
    (tmp_path / "full" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="unknown component 'fusion_projector' for format_version 1"):
        FPDMPipeline.from_pretrained(tmp_path / "full")
    index["format_version"] = 4
    (tmp_path / "full" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="format_version 4; this version of the code reads 1, 2 and 3"):
        FPDMPipeline.from_pretrained(tmp_path / "full")


def test_a_fusion_path_of_mixed_layouts_is_refused(tiny):
    parts = {name: module for name, module in tiny.modules().items() if name != "fusion_projector"}
    common = dict(scheduler=tiny.scheduler, resolution=(64, 48))
    with pytest.raises(InputError, match="'identity': the model needs a fusion_projector part"):
        FPDMPipeline(**parts, **common)
    demo = FPDMPipeline.from_pretrained(DEMO_FORMAT1, device="cpu")
    with pytest.raises(
        InputError, match="fusion_projector part, which feeds an 'identity' class embedding; the UNet's is 'projection'"
    ):
        FPDMPipeline(**demo.modules(), fusion_projector=tiny.fusion_projector, **common)
    wide = FusionProjector(in_dim=32, hidden_dim=32, out_dim=128)
    with pytest.raises(InputError, match="out_dim 128 is not the UNet's time-embedding width 256"):
        FPDMPipeline(**parts, fusion_projector=wide, **common)


# ----- models of the first layout ----------------------------------------------------------


def test_the_first_demo_a_model_of_the_first_layout_loads_and_samples_exactly_as_before(example):
    demo = FPDMPipeline.from_pretrained(DEMO_FORMAT1, device="cpu")
    assert demo.unet.config.class_embed_type == "projection" and demo.fusion_projector is None
    assert isinstance(demo.scheduler, DDIMScheduler) and demo.uses_fusion
    assert demo.source_projector.config.dropout == 0.1  # its own config, not the new default

    source, poses = example
    images = demo.generate(source, poses, seed=7, num_inference_steps=6, output_type="pt")
    strip = torch.cat(list(((images[:, 0].clamp(-1, 1) + 1) * 127.5).round()), dim=2).permute(1, 2, 0).numpy()
    before = np.asarray(Image.open(DEMO_BEFORE_RECIPE), dtype=np.float32)
    # Identical here; one grey level of slack for another CPU's float rounding.
    assert np.abs(strip - before).max() <= 1


# ----- stage-2 training --------------------------------------------------------------------


def test_the_learning_rate_warms_up_then_drops_tenfold_at_55_percent_of_the_run():
    from model_core.training import train_diffusion, warmup_step_decay

    defaults = {name: p.default for name, p in inspect.signature(train_diffusion).parameters.items()}
    assert (defaults["warmup_fraction"], defaults["lr_decay_at"], defaults["lr_decay_factor"]) == (0.05, 0.55, 0.1)
    # 100 steps: the reference's per-epoch values for 100 epochs (WarmupStepLR, t_up 5, step 50).
    factor = warmup_step_decay(100, 0.05, 0.55, 0.1)
    assert [factor(s) for s in (0, 1, 4, 5, 54, 55, 99)] == pytest.approx([0.2, 0.4, 1.0, 1.0, 1.0, 0.1, 0.1])
    # Any length: 20 steps warm up in one and drop from step 11 on.
    factor = warmup_step_decay(20, 0.05, 0.55, 0.1)
    assert [factor(s) for s in (0, 1, 10, 11, 19)] == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1])
    no_warmup = warmup_step_decay(10, 0.0, 1.0, 0.1)
    assert [no_warmup(s) for s in range(10)] == [1.0] * 10


def test_condition_dropout_draws_per_sample_by_default_and_per_batch_as_the_reference():
    from model_core.training import ConditionDropout, train_diffusion

    defaults = {name: p.default for name, p in inspect.signature(train_diffusion).parameters.items()}
    assert (defaults["condition_dropout"], defaults["condition_dropout_per_batch"]) == (0.2, False)
    from model_core.sample_seeding import SampleDraws

    batches = [SampleDraws(0, micro_step, list(range(8)), torch.device("cpu")) for micro_step in range(500)]
    per_sample = torch.stack([ConditionDropout(0.2).keep(draws) for draws in batches])
    per_batch = torch.stack([ConditionDropout(0.2, per_batch=True).keep(draws) for draws in batches])
    for keep in (per_sample, per_batch):
        assert set(keep.unique().tolist()) == {0.0, 1.0} and 1 - keep.mean().item() == pytest.approx(0.2, abs=0.03)
    mixed = (per_sample.min(dim=1).values != per_sample.max(dim=1).values).float().mean().item()
    assert mixed > 0.7  # most batches mix kept and dropped samples (1 - 0.8^8 - 0.2^8 of them)
    assert (per_batch == per_batch[:, :1]).all()  # the reference: the whole batch keeps or drops


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    from stick_figures import make_pairs

    return make_pairs(tmp_path_factory.mktemp("pairs"), people=2, poses_per_person=2, seed=0)


@pytest.mark.parametrize("fusion_dropout", [True, False])
def test_the_combiners_dropout_is_active_in_stage_2_training_and_off_at_sampling(
    pairs_csv, tmp_path, monkeypatch, fusion_dropout
):
    """Also the optimiser of the recipe: AdamW without weight decay, no gradient clipping."""
    import model_core.fusion
    import model_core.training as training

    combiner_modes, optimisers, clipped = [], [], []
    real_forward = model_core.fusion.Combiner.forward

    def recording_forward(self, source, pose):
        combiner_modes.append(self.training)
        return real_forward(self, source, pose)

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimisers.append(self)

    monkeypatch.setattr(model_core.fusion.Combiner, "forward", recording_forward)
    monkeypatch.setattr(training.torch.optim, "AdamW", RecordingAdamW)
    monkeypatch.setattr(training.torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: clipped.append(args))
    result = training.train_diffusion(
        "tiny", pairs_csv, tmp_path / "out", max_steps=1, batch_size=4, gradient_accumulation=1, device="cpu",
        fusion_dropout=fusion_dropout,
    )  # fmt: skip
    assert combiner_modes == [fusion_dropout]  # one fusion embedding per training step
    (optimiser,) = optimisers
    assert {group["weight_decay"] for group in optimiser.param_groups} == {0.0} and clipped == []

    combiner_modes.clear()
    trained = FPDMPipeline.from_pretrained(result.out, device="cpu")
    source = Image.new("RGB", (48, 64), (200, 40, 60))
    trained.generate(source, [read_keypoints(pairs_csv.parent / "p000_1.json")], num_inference_steps=1)
    assert combiner_modes and not any(combiner_modes)  # clean at sampling


def test_a_gradient_clip_and_weight_decay_are_still_there_to_choose(pairs_csv, tmp_path, monkeypatch):
    import model_core.training as training

    clipped = []
    monkeypatch.setattr(training.torch.nn.utils, "clip_grad_norm_", lambda parameters, norm: clipped.append(norm))
    training.train_diffusion(
        "tiny", pairs_csv, tmp_path / "out", max_steps=2, batch_size=4, gradient_accumulation=1, device="cpu",
        max_grad_norm=1.0, weight_decay=1e-2,
    )  # fmt: skip
    assert clipped == [1.0, 1.0]


def test_the_stateless_optimiser_keeps_no_state_and_unknown_ones_are_refused():
    from model_core.training import make_optimizer

    weight = torch.nn.Parameter(torch.ones(3))
    for name, kind, state_entries in (("adamw", torch.optim.AdamW, 3), ("sgd", torch.optim.SGD, 0)):
        optimizer = make_optimizer(name, [weight], 0.1, 0.0)
        weight.grad = torch.ones(3)
        optimizer.step()
        assert isinstance(optimizer, kind)
        assert len(optimizer.state[weight]) == state_entries  # AdamW: step, exp_avg, exp_avg_sq
    with pytest.raises(InputError, match="optimizer 'lion' is not one of adamw, sgd"):
        make_optimizer("lion", [weight], 0.1, 0.0)
