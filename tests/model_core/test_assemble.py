"""`assemble`: a model directory from public-format SD 2.1, open_clip and timm checkpoints.

The public parts are made here at the `tiny` preset's size, in the formats their projects
publish (a diffusers folder, open_clip's open_clip_pytorch_model.bin, timm's
model.safetensors), so the test exercises the same loading a real assembly does.
"""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

from model_core.assemble import assemble, read_checkpoint
from model_core.errors import InputError
from model_core.fusion import FusionModel
from model_core.keypoints import Keypoints
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.presets import preset_config
from model_core.stage2 import FusionProjector, SourceEncoder, SourceProjector

TINY = preset_config("tiny")
TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy-sized models gain nothing from threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sd_unet_config(config: dict) -> dict:
    """The preset's UNet as Stable Diffusion ships it: without FPDM's class embedding."""
    unet = dict(config["unet"])
    unet.pop("class_embed_type")
    return unet


def timm_backbone(image_size: int, **kwargs) -> torch.nn.Module:
    encoder = TINY["source_encoder"]
    return timm.create_model(
        encoder["timm_model"], pretrained=False, img_size=image_size, **{**encoder["timm_overrides"], **kwargs}
    )


def save_sd_folder(folder: Path, unet: UNet2DConditionModel, vae: AutoencoderKL, safe_unet: bool = True) -> Path:
    unet.save_pretrained(folder / "unet", safe_serialization=safe_unet)
    vae.save_pretrained(folder / "vae")
    scheduler = dict(TINY["scheduler"])
    scheduler.pop("_class_name")
    DDIMScheduler(**scheduler).save_pretrained(folder / "scheduler")
    return folder


def write_open_clip_config(folder: Path, **model_cfg) -> Path:
    fusion = TINY["fusion"]
    config = {
        "model_cfg": {"embed_dim": fusion["embed_dim"], "vision_cfg": fusion["vision_cfg"], "text_cfg": TEXT_CFG, **model_cfg},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    path = folder / "open_clip_config.json"
    path.write_text(json.dumps(config))
    return path


def openai_layout(clip_state: dict) -> dict:
    """A CLIP state dict as OpenAI's release holds it: with the scalar keys open_clip drops on
    conversion, and (as OpenAI's) most weights in float16."""
    state = {k: (v.half() if v.ndim >= 2 else v) for k, v in clip_state.items()}
    return {**state, "input_resolution": torch.tensor(32), "context_length": torch.tensor(8), "vocab_size": torch.tensor(64)}


class Public:
    """The public checkpoints, and the tensors they hold for comparison."""


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Public:
    root = tmp_path_factory.mktemp("public")
    p = Public()
    torch.manual_seed(1234)
    unet = UNet2DConditionModel(**sd_unet_config(TINY))
    vae = AutoencoderKL(**TINY["vae"])
    p.sd = save_sd_folder(root / "sd", unet, vae)
    p.sd_bin = save_sd_folder(root / "sd_bin", unet, vae, safe_unet=False)
    p.unet_state = {k: v.clone() for k, v in unet.state_dict().items()}
    p.vae_state = {k: v.clone() for k, v in vae.state_dict().items()}

    fusion = TINY["fusion"]
    clip = open_clip.model.CLIP(fusion["embed_dim"], fusion["vision_cfg"], TEXT_CFG)
    clip_state = clip.state_dict()
    # As open_clip's hub repositories ship LAION's weights: the config beside them leaves
    # quick_gelu unset (GELU).
    write_open_clip_config(root)
    p.clip_bin = root / "open_clip_pytorch_model.bin"
    torch.save(clip_state, p.clip_bin)
    p.clip_safetensors = root / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip_state.items()}, p.clip_safetensors)
    p.clip_state = clip_state

    backbone = timm_backbone(TINY["source_encoder"]["image_size"])
    p.timm_state = backbone.state_dict()
    p.timm_safetensors = root / "model.safetensors"
    save_file(p.timm_state, p.timm_safetensors)
    p.timm_pth = root / "dinov2.pth"
    torch.save(p.timm_state, p.timm_pth)

    # DINOv2's public weights are at 518 px (37x37 patches) while FPDM runs at 512 (36x36):
    # here 40 px (5x5 patches of 8) against the preset's 32 (4x4).
    other_grid = timm_backbone(40)
    p.timm_other_grid_state = other_grid.state_dict()
    p.timm_other_grid = root / "dinov2_40px.safetensors"
    save_file(p.timm_other_grid_state, p.timm_other_grid)
    return p


def assert_same_tensors(actual: dict, expected: dict):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def visual_part(clip_state: dict) -> dict:
    return {k[len("visual.") :]: v for k, v in clip_state.items() if k.startswith("visual.")}


def test_assembled_directory_loads_with_every_public_weight_and_generates(public, tmp_path):
    out = assemble(tmp_path / "model", public.sd, public.clip_bin, public.timm_safetensors, preset="tiny", name="start")
    assert out == tmp_path / "model"
    pipe = FPDMPipeline.from_pretrained(out)
    assert pipe.name == "start"
    assert (pipe.geometry.height, pipe.geometry.width) == tuple(TINY["resolution"])

    unet = pipe.unet
    # The fusion embedding reaches the UNet through the new fusion projector and the UNet's
    # parameter-free identity class embedding: every UNet weight is SD's.
    assert unet.config.class_embed_type == "identity"
    assert list(unet.config.sample_size) == [TINY["resolution"][0] // 8, TINY["resolution"][1] // 8]
    assert_same_tensors(unet.state_dict(), public.unet_state)
    assert pipe.fusion_projector.config.out_dim == unet.time_embedding.linear_2.out_features
    for value in pipe.fusion_projector.state_dict().values():
        assert torch.isfinite(value).all() and value.abs().max() < 1

    assert_same_tensors(pipe.vae.state_dict(), public.vae_state)
    # SD's noise schedule under the reference's sampler.
    assert isinstance(pipe.scheduler, DDPMScheduler)
    assert pipe.scheduler.config.beta_schedule == TINY["scheduler"]["beta_schedule"]
    assert_same_tensors(pipe.fusion.image_encoder.state_dict(), visual_part(public.clip_state))
    assert_same_tensors(pipe.source_encoder.backbone.state_dict(), public.timm_state)
    # The fusion config records the pretrained CLIP (QC trusts CLIP similarities only then);
    # a preset's random initialisation records none.
    assert pipe.fusion.config.clip_weights == public.clip_bin.name
    assert FPDMPipeline.from_pretrained("tiny").fusion.config.clip_weights is None

    keypoints = Keypoints(np.column_stack([np.linspace(10, 38, 18), np.linspace(6, 58, 18), np.ones(18)]), 48, 64)
    source = Image.new("RGB", (48, 64), (180, 40, 60))
    images = pipe.generate(source, [keypoints], seed=3, num_inference_steps=2)
    assert len(images) == 1 and len(images[0]) == 1
    assert images[0][0].size == (48, 64)
    assert np.isfinite(np.asarray(images[0][0], dtype=np.float32)).all()


def activation_of(out: Path):
    fusion = FPDMPipeline.from_pretrained(out).fusion
    quick = any(isinstance(m, open_clip.transformer.QuickGELU) for m in fusion.image_encoder.modules())
    gelu = any(isinstance(m, torch.nn.GELU) for m in fusion.image_encoder.modules())
    assert quick != gelu
    return fusion.config.quick_gelu, quick, fusion.config.quick_gelu_evidence


def test_openai_clip_weights_are_detected_by_their_layout_and_get_quick_gelu(public, tmp_path):
    openai = tmp_path / "openai" / "ViT-L-14.pt"  # no open_clip_config.json beside it
    openai.parent.mkdir()
    torch.save(openai_layout(public.clip_state), openai)
    out = assemble(tmp_path / "model", public.sd, openai, public.timm_safetensors, preset="tiny")
    quick_gelu, built_quick, evidence = activation_of(out)
    assert quick_gelu is True and built_quick and "OpenAI's CLIP layout" in evidence
    tower = FPDMPipeline.from_pretrained(out).fusion.image_encoder.state_dict()
    assert_same_tensors(tower, {k: v.float() for k, v in visual_part(openai_layout(public.clip_state)).items()})
    # Stating what the checkpoint says is fine; contradicting it is refused.
    assemble(tmp_path / "stated", public.sd, openai, public.timm_safetensors, preset="tiny", quick_gelu=True)
    with pytest.raises(InputError, match="--no-quick-gelu contradicts the checkpoint, which was trained with QuickGELU"):
        assemble(tmp_path / "wrong", public.sd, openai, public.timm_safetensors, preset="tiny", quick_gelu=False)
    assert not (tmp_path / "wrong").exists()


def test_an_open_clip_config_beside_the_weights_says_which_activation(public, tmp_path):
    # LAION's (the fixture): quick_gelu unset in the config, GELU.
    quick_gelu, built_quick, evidence = activation_of(
        assemble(tmp_path / "laion", public.sd, public.clip_bin, public.timm_safetensors, preset="tiny")
    )
    assert (quick_gelu, built_quick) == (False, False) and "model_cfg.quick_gelu false" in evidence
    with pytest.raises(InputError, match="--quick-gelu contradicts the checkpoint, which was trained with GELU"):
        assemble(tmp_path / "wrong", public.sd, public.clip_bin, public.timm_safetensors, preset="tiny", quick_gelu=True)

    # OpenAI's weights as open_clip's hub ships them (timm/vit_large_patch14_clip_224.openai): the
    # open_clip layout, with quick_gelu true in the config beside them.
    hub = tmp_path / "openai-hub"
    hub.mkdir()
    shutil.copy(public.clip_bin, hub / public.clip_bin.name)
    write_open_clip_config(hub, quick_gelu=True)
    quick_gelu, built_quick, evidence = activation_of(
        assemble(tmp_path / "hub", public.sd, hub / public.clip_bin.name, public.timm_safetensors, preset="tiny")
    )
    assert (quick_gelu, built_quick) == (True, True) and "model_cfg.quick_gelu true" in evidence

    write_open_clip_config(hub, embed_dim=64)  # a config of another model
    with pytest.raises(InputError, match="describes a CLIP with embed_dim 64, but open_clip_pytorch_model.bin projects to 32"):
        assemble(tmp_path / "other", public.sd, hub / public.clip_bin.name, public.timm_safetensors, preset="tiny")


def test_a_checkpoint_that_does_not_say_needs_the_activation_stated(public, tmp_path):
    bare = tmp_path / "bare" / "clip.safetensors"  # open_clip layout, nothing beside it
    bare.parent.mkdir()
    shutil.copy(public.clip_safetensors, bare)
    with pytest.raises(InputError, match="cannot tell whether this CLIP was trained with QuickGELU or GELU") as error:
        assemble(tmp_path / "model", public.sd, bare, public.timm_safetensors, preset="tiny")
    assert "pass --quick-gelu" in str(error.value) and "pass --no-quick-gelu" in str(error.value)
    assert not (tmp_path / "model").exists()
    for stated in (True, False):
        out = assemble(tmp_path / f"model-{stated}", public.sd, bare, public.timm_safetensors, preset="tiny", quick_gelu=stated)
        quick_gelu, built_quick, evidence = activation_of(out)
        assert quick_gelu is built_quick is stated and "stated when assembling" in evidence


def test_assembly_is_reproducible(public, tmp_path):
    first = assemble(tmp_path / "a", public.sd, public.clip_bin, public.timm_safetensors, preset="tiny")
    second = assemble(tmp_path / "b", public.sd, public.clip_bin, public.timm_safetensors, preset="tiny")
    for part in ("fusion", "source_projector", "pose_embedding", "unet"):
        a = load_file(first / part / "diffusion_pytorch_model.safetensors")
        b = load_file(second / part / "diffusion_pytorch_model.safetensors")
        assert_same_tensors(a, b)


def test_other_public_file_kinds(public, tmp_path):
    """.bin UNet weights (older SD folders), CLIP as safetensors, timm as a torch file wrapped
    the way training scripts save it ({"state_dict": {"module.<key>": ...}})."""
    wrapped = tmp_path / "dinov2_ddp.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in public.timm_state.items()}}, wrapped)
    assert (public.sd_bin / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert not (public.sd_bin / "unet" / "diffusion_pytorch_model.safetensors").exists()

    out = assemble(tmp_path / "model", public.sd_bin, public.clip_safetensors, wrapped, preset="tiny")
    pipe = FPDMPipeline.from_pretrained(out)
    state = pipe.unet.state_dict()
    assert_same_tensors({k: v for k, v in state.items() if not k.startswith("class_embedding.")}, public.unet_state)
    assert_same_tensors(pipe.fusion.image_encoder.state_dict(), visual_part(public.clip_state))
    assert_same_tensors(pipe.source_encoder.backbone.state_dict(), public.timm_state)

    out = assemble(tmp_path / "model_pth", public.sd, public.clip_bin, public.timm_pth, preset="tiny")
    assert_same_tensors(FPDMPipeline.from_pretrained(out).source_encoder.backbone.state_dict(), public.timm_state)

    # Large UNets ship sharded: diffusion_pytorch_model.safetensors.index.json + shards.
    sharded = tmp_path / "sd_sharded"
    shutil.copytree(public.sd, sharded)
    shutil.rmtree(sharded / "unet")
    unet = UNet2DConditionModel(**sd_unet_config(TINY))
    unet.load_state_dict(public.unet_state)
    unet.save_pretrained(sharded / "unet", max_shard_size="200KB")
    assert (sharded / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    out = assemble(tmp_path / "model_sharded", sharded, public.clip_bin, public.timm_pth, preset="tiny")
    state = FPDMPipeline.from_pretrained(out).unet.state_dict()
    assert_same_tensors({k: v for k, v in state.items() if not k.startswith("class_embedding.")}, public.unet_state)


def test_open_clip_timm_tower_and_classifier_head(public, tmp_path):
    """An open_clip checkpoint with a timm tower (visual.trunk.*), and a timm checkpoint with a
    classifier head, which the feature extractor does not have."""
    trunk = tmp_path / "open_clip_timm.safetensors"
    save_file(
        {
            **{f"visual.trunk.{k}": v for k, v in public.timm_state.items()},
            "visual.head.proj.weight": torch.ones(8, 32),
            "text.token_embedding.weight": torch.zeros(64, 16),
        },
        trunk,
    )
    with_head = tmp_path / "dinov2_in1k.safetensors"
    save_file({**public.timm_state, "head.weight": torch.ones(10, 32), "head.bias": torch.zeros(10)}, with_head)
    for checkpoint in (trunk, with_head):
        out = assemble(tmp_path / checkpoint.stem, public.sd, public.clip_bin, checkpoint, preset="tiny")
        assert_same_tensors(FPDMPipeline.from_pretrained(out).source_encoder.backbone.state_dict(), public.timm_state)


def test_position_embedding_of_another_grid_is_resampled(public, tmp_path):
    out = assemble(tmp_path / "model", public.sd, public.clip_bin, public.timm_other_grid, preset="tiny")
    backbone = FPDMPipeline.from_pretrained(out).source_encoder.backbone
    expected = dict(public.timm_other_grid_state)
    assert expected["pos_embed"].shape == (1, 1 + 5 * 5, 32)
    expected["pos_embed"] = resample_abs_pos_embed(expected["pos_embed"], new_size=[4, 4], old_size=[5, 5], num_prefix_tokens=1)
    assert backbone.pos_embed.shape == (1, 1 + 4 * 4, 32)
    assert_same_tensors(backbone.state_dict(), expected)
    # the class token's position is kept as it is, only the patch grid is interpolated
    assert torch.equal(backbone.pos_embed[:, 0], public.timm_other_grid_state["pos_embed"][:, 0])


# ----- bad inputs ----------------------------------------------------------------------------


class WritesAFile:
    """Unpickling this runs open(marker, "w"): the side effect an untrusted pickle could have."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("which", ["clip", "source"])
def test_a_pickle_of_arbitrary_objects_is_refused_without_running_it(public, tmp_path, how, which):
    marker = tmp_path / "side_effect_ran"
    evil = tmp_path / ("evil.pt" if how == "torch.save" else "evil.bin")
    if how == "torch.save":
        torch.save({"visual.proj": torch.zeros(1), "x": WritesAFile(marker)}, evil)
    else:
        with open(evil, "wb") as handle:
            pickle.dump(WritesAFile(marker), handle)
    # The control: unpickling the file the unsafe way does run the side effect.
    if how == "pickle.dump":
        pickle.loads(evil.read_bytes()).close()
    else:
        torch.load(evil, weights_only=False)["x"].close()
    assert marker.exists()
    marker.unlink()

    clip, source = (evil, public.timm_safetensors) if which == "clip" else (public.clip_bin, evil)
    with pytest.raises(InputError) as error:
        assemble(tmp_path / "model", public.sd, clip, source, preset="tiny")
    assert str(evil) in str(error.value)
    assert "weights_only" in str(error.value)
    assert not marker.exists()
    assert not (tmp_path / "model").exists()


def test_clip_checkpoint_missing_visual_keys_names_the_file(public, tmp_path):
    partial = tmp_path / "clip_partial.bin"
    torch.save({k: v for k, v in public.clip_state.items() if k != "visual.ln_post.weight"}, partial)
    with pytest.raises(InputError, match="ln_post.weight") as error:
        assemble(tmp_path / "model", public.sd, partial, public.timm_safetensors, preset="tiny", quick_gelu=False)
    assert str(partial) in str(error.value) and "missing" in str(error.value)

    text_only = tmp_path / "clip_text.safetensors"
    save_file({k: v.contiguous() for k, v in public.clip_state.items() if not k.startswith("visual.")}, text_only)
    with pytest.raises(InputError, match="no 'visual") as error:
        assemble(tmp_path / "model", public.sd, text_only, public.timm_safetensors, preset="tiny")
    assert str(text_only) in str(error.value)


def test_wrong_architectures_are_named(public, tmp_path):
    wider = tmp_path / "dinov2_wider.safetensors"
    save_file(timm_backbone(32, embed_dim=48).state_dict(), wider)
    with pytest.raises(InputError, match="shape mismatch") as error:
        assemble(tmp_path / "model", public.sd, public.clip_bin, wider, preset="tiny")
    assert str(wider) in str(error.value) and "source encoder" in str(error.value)

    other_clip = tmp_path / "clip_other.bin"
    vision_cfg = dict(TINY["fusion"]["vision_cfg"], layers=3)
    torch.save(open_clip.model.CLIP(TINY["fusion"]["embed_dim"], vision_cfg, TEXT_CFG).state_dict(), other_clip)
    with pytest.raises(InputError, match="unexpected .*transformer.resblocks.2") as error:
        assemble(tmp_path / "model", public.sd, other_clip, public.timm_safetensors, preset="tiny", quick_gelu=False)
    assert str(other_clip) in str(error.value)


def test_sd_folder_problems(public, tmp_path):
    no_unet = tmp_path / "sd_no_unet"
    shutil.copytree(public.sd, no_unet)
    shutil.rmtree(no_unet / "unet")
    with pytest.raises(InputError, match="unet/config.json") as error:
        assemble(tmp_path / "model", no_unet, public.clip_bin, public.timm_safetensors, preset="tiny")
    assert str(no_unet) in str(error.value)

    with pytest.raises(InputError, match="no such folder"):
        assemble(tmp_path / "model", tmp_path / "nowhere", public.clip_bin, public.timm_safetensors, preset="tiny")
    with pytest.raises(InputError, match="preset 'demo-init': its source encoder is a VAESourceEncoder, which no public"):
        assemble(tmp_path / "model", public.sd, public.clip_bin, public.timm_safetensors, preset="demo-init")
    with pytest.raises(InputError, match="no such checkpoint file"):
        assemble(tmp_path / "model", public.sd, tmp_path / "nowhere.bin", public.timm_safetensors, preset="tiny")

    # A UNet weight file that lacks a tensor: diffusers would leave it uninitialised.
    lacking = tmp_path / "sd_lacking"
    shutil.copytree(public.sd, lacking)
    weights = lacking / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    del tensors["conv_out.weight"]
    save_file(tensors, weights)
    with pytest.raises(InputError, match="missing .*conv_out.weight"):
        assemble(tmp_path / "model", lacking, public.clip_bin, public.timm_safetensors, preset="tiny")

    # An SD UNet whose context width does not fit the preset's source projector.
    torch.manual_seed(0)
    narrow = save_sd_folder(
        tmp_path / "sd_narrow",
        UNet2DConditionModel(**dict(sd_unet_config(TINY), cross_attention_dim=48)),
        AutoencoderKL(**TINY["vae"]),
    )
    with pytest.raises(InputError, match="cross_attention_dim 48"):
        assemble(tmp_path / "model", narrow, public.clip_bin, public.timm_safetensors, preset="tiny")
    assert not (tmp_path / "model").exists()


def test_does_not_overwrite_a_model_directory(public, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model_index.json").write_text("{}")
    with pytest.raises(InputError, match="already exists"):
        assemble(out, public.sd, public.clip_bin, public.timm_safetensors, preset="tiny")
    assert (out / "model_index.json").read_text() == "{}"


def test_read_checkpoint_unwraps_containers(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"model": {"module.a": torch.ones(2)}, "optimizer": {"lr": 0.1}}, path)
    assert_same_tensors(read_checkpoint(path), {"a": torch.ones(2)})
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(InputError, match="no tensors"):
        read_checkpoint(empty)


# ----- the production preset -----------------------------------------------------------------


def test_fpdm_sd21_preset_is_the_production_architecture():
    """FPDM.md's architecture, instantiated on the meta device (no memory, no weights)."""
    config = preset_config("fpdm-sd21")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config["unet"])
        encoder = SourceEncoder(**config["source_encoder"])
        fusion = FusionModel(**config["fusion"])
        projector = SourceProjector(**config["source_projector"])
        fusion_projector = FusionProjector(**config["fusion_projector"])

    # SD 2.1's UNet (865,910,724) as it is (its identity class embedding has no weights), plus
    # the fusion projector 768 -> 768 -> 1280 that feeds it.
    parameters = sum(p.numel() for p in unet.parameters())
    assert parameters == 865_910_724
    head = sum(p.numel() for p in fusion_projector.parameters())
    assert head == (768 * 768 + 768) + (768 * 1280 + 1280)
    assert abs(parameters + head - 869e6) / 869e6 < 0.005
    assert unet.config.cross_attention_dim == 1024 and unet.config.block_out_channels[0] == 320
    assert config["pose_embedding"]["out_channels"] == 320

    # DINOv2-L/14 at 512x512: 36x36 patches + CLS = 1297 tokens of width 1024.
    backbone = encoder.backbone
    assert backbone.patch_embed.num_patches + backbone.num_prefix_tokens == 1297
    assert encoder(torch.empty(1, 3, 512, 512, device="meta")).shape == (1, 1297, 1024)
    assert encoder.hidden_size == 1024

    # CLIP ViT-L/14 image encoder, projected embedding 768-d; the fusion projector takes it.
    assert fusion.image_encoder.output_dim == 768
    assert fusion.embed(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 768)
    assert fusion_projector.config.in_dim == 768 and unet.time_embedding.linear_2.out_features == 1280

    linears = [m for m in projector.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 768), (768, 1024)]
