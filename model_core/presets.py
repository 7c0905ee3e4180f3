"""Named model configurations.

A preset is the architecture of every component as plain JSON-able dicts, the same dicts
that a model directory stores in its config files:
- `tiny`: the full FPDM architecture at toy size (a few million parameters, 64x48 px),
  random-initialised from a fixed seed; tests and CPU smoke runs use it;
- `fpdm-sd21`: the production architecture of FPDM.md (SD 2.1 UNet/VAE layout, ViT-L/14
  fusion encoder, DINOv2-L/14 source encoder at 512x512). Its weights come from `assemble`
  (public SD 2.1, CLIP and DINOv2 checkpoints) followed by training, never from the preset.

`resolve_model` is the one place that decides what a model's name means: a preset, a trained
preset's shipped directory, or a model directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import InputError

# Stable Diffusion 2.1's noise schedule (its scheduler/scheduler_config.json) under the sampler
# the reference swaps in for SD's DDIM: DDPMScheduler (src/diffusion/model.py, `self.pipe.scheduler
# = DDPMScheduler.from_pretrained(...)`). DDIM and the others stay selectable per run.
_SD_DDPM = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

TINY = {
    "name": "tiny",
    "resolution": [64, 48],
    "seed": 0,
    "fusion": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "projection_dim": 32,
        "hidden_dim": 32,
        "dropout": 0.5,
    },
    "source_encoder": {
        "timm_model": "vit_small_patch14_dinov2",
        "image_size": 32,
        "timm_overrides": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    },
    "source_projector": {"in_dim": 32, "hidden_dim": 32, "out_dim": 64, "dropout": 0.2},
    # The reference's mlp head at this size: fusion width -> same -> the UNet's time embedding (4 x 64).
    "fusion_projector": {"in_dim": 32, "hidden_dim": 32, "out_dim": 256, "dropout": 0.2},
    "pose_embedding": {"out_channels": 64, "block_out_channels": [8, 16, 32, 32]},
    "unet": {
        "sample_size": [8, 6],
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [64, 128],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "cross_attention_dim": 64,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
        "class_embed_type": "identity",  # the fusion projector's output is added to the time embedding as it is
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [32, 64, 64, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    "scheduler": dict(_SD_DDPM),
}

FPDM_SD21 = {
    "name": "fpdm-sd21",
    "resolution": [512, 352],
    "seed": 0,
    "fusion": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
        "quick_gelu": True,  # OpenAI's ViT-L/14, as the reference uses; `assemble` sets it from the checkpoint
        "projection_dim": 768,
        "hidden_dim": 768,
        "dropout": 0.5,
    },
    "source_encoder": {"timm_model": "vit_large_patch14_dinov2", "image_size": 512},
    "source_projector": {"in_dim": 1024, "hidden_dim": 768, "out_dim": 1024, "dropout": 0.2},
    "fusion_projector": {"in_dim": 768, "hidden_dim": 768, "out_dim": 1280, "dropout": 0.2},
    "pose_embedding": {"out_channels": 320, "block_out_channels": [16, 32, 96, 256]},
    "unet": {  # stabilityai/stable-diffusion-2-1 unet/config.json, plus the class embedding the fusion projector feeds
        "sample_size": [64, 44],
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 2,
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
        "upcast_attention": True,
        "class_embed_type": "identity",
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
    },
    "scheduler": dict(_SD_DDPM, prediction_type="v_prediction"),
}

# The demo's architecture: tiny's fusion encoder, a VAE that downsamples 4x (16x12 latents keep a
# 64x48 figure's limbs apart) and a three-level UNet; about 6.0 M parameters, 24 MB in float32.
# Trained from this random initialisation on the synthetic catalog (`fpdm synth`), it becomes
# the `demo` preset: see model_core/trained/demo/README.md for how.
DEMO_INIT = copy.deepcopy(TINY)
DEMO_INIT["name"] = "demo-init"
DEMO_INIT["pose_embedding"] = {"out_channels": 64, "block_out_channels": [16, 32, 64]}
# The source encoder is the VAE's own encoder (stage2.VAESourceEncoder: 16x12 tokens of 64 features
# and 16 of position), which `fpdm train vae` pretrains; a random ViT, frozen, described no garment.
DEMO_INIT["source_encoder"] = {
    "_class_name": "VAESourceEncoder",
    "block_out_channels": [32, 48, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "position_frequencies": 4,
}
DEMO_INIT["source_projector"] = {"in_dim": 80, "hidden_dim": 64, "out_dim": 64, "dropout": 0.2}
DEMO_INIT["unet"].update(
    sample_size=[16, 12],
    block_out_channels=[64, 96, 128],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
)
DEMO_INIT["vae"].update(
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[32, 48, 64]
)

PRESETS = {"tiny": TINY, "demo-init": DEMO_INIT, "fpdm-sd21": FPDM_SD21}
# Presets whose random initialisation is useful as a model (tests, smoke runs, the start of
# training). The production preset at random weights would only render noise slowly.
RANDOM_INIT_PRESETS = {"tiny", "demo-init"}


# Presets that are trained model directories shipped in the package.
TRAINED_PRESETS = {"demo": Path(__file__).resolve().parent / "trained" / "demo"}


def preset_config(name: str) -> dict:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; presets: {', '.join([*PRESETS, *TRAINED_PRESETS])}")
    return copy.deepcopy(PRESETS[name])


# ----- from a model's name to the model ------------------------------------------------------


class ModelKind(Enum):
    RANDOM_INIT_PRESET = "random-initialised preset"  # built from its config; the fixed seed makes the weights
    TRAINED_PRESET = "trained preset"  # a model directory shipped in the package
    MODEL_DIRECTORY = "model directory"
    PRESET_WITHOUT_WEIGHTS = "preset without weights"  # an architecture only: its weights come from `assemble`


@dataclass(frozen=True)
class ModelSource:
    """What a model's name stands for. Loading, checksums and `fpdm model info` all start from
    this, so they can never disagree about which model a name means."""

    asked: str | Path  # the name or path as the user gave it
    kind: ModelKind
    directory: Path | None = None  # where the files are: a trained preset or a model directory
    config: dict | None = None  # a preset's architecture: random-initialised presets and those without weights

    @property
    def has_weights(self) -> bool:
        return self.kind is not ModelKind.PRESET_WITHOUT_WEIGHTS


def resolve_model(model: str | Path | ModelSource) -> ModelSource:
    """The one rule for a `--model` value: a preset's name means that preset, unless a local path
    of that name exists (a model saved as ./tiny is that folder); anything else is a model directory,
    and so is a Path object. Directories are not checked here: their readers say what is wrong with
    them. A ModelSource is returned as it is, so a caller can resolve once and pass the result on."""
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, str) and (model in PRESETS or model in TRAINED_PRESETS) and not Path(model).exists():
        return preset_source(model)
    return ModelSource(model, ModelKind.MODEL_DIRECTORY, directory=Path(model))


def preset_source(name: str) -> ModelSource:
    """The model a preset's name stands for, whatever local paths exist: for commands whose
    argument can only be a preset (`fpdm model save-preset`)."""
    if name in TRAINED_PRESETS:
        directory = TRAINED_PRESETS[name]
        # The weights are package data: an installation built without them must say so, not load nothing.
        if not (directory / "model_index.json").is_file():
            raise InputError(f"preset {name!r}: its weights are not in this installation ({directory})")
        return ModelSource(name, ModelKind.TRAINED_PRESET, directory=directory)
    config = preset_config(name)  # InputError for an unknown name
    kind = ModelKind.RANDOM_INIT_PRESET if name in RANDOM_INIT_PRESETS else ModelKind.PRESET_WITHOUT_WEIGHTS
    return ModelSource(name, kind, config=config)
