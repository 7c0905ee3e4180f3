"""Assemble a trainable FPDM model directory from public checkpoints.

`assemble` takes the three public starting points of FPDM.md and writes a model directory
(the `FPDMPipeline.save_pretrained` format) that training starts from:

- a Stable Diffusion 2.1 diffusers folder (unet/, vae/, scheduler/): the UNet keeps every SD
  weight and gets the preset's class embedding for the fusion embedding (`identity`, fed by a
  new fusion projector; `projection`, new inside the UNet, for presets of the first layout);
  the VAE is taken as it is, and the scheduler's noise schedule under the preset's sampler
  class (DDPMScheduler, as the reference samples);
- an open_clip CLIP checkpoint file: its `visual.*` tower becomes the fusion image encoder
  (the Combiner is new), with the activation it was trained with (`clip_activation`);
- a timm checkpoint file of the source encoder (DINOv2 ViT as timm names it, or an open_clip
  timm tower under `visual.trunk.`), its position embedding resampled to the preset's size.

The source projector, the pose embedding and the fusion projector are new, from the preset.
Foreign files are read by `checkpoint_files`: as safetensors or with
`torch.load(weights_only=True)`, so nothing from outside is unpickled beyond plain tensors and
containers, and loaded strictly. Every bad input is an `InputError` naming the file or the part.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from timm.layers import resample_abs_pos_embed

from .checkpoint_files import (
    check_checkpoint_file,
    iter_tensors,
    listed,
    load_strict,
    raise_on_key_problems,
    read_checkpoint,
)
from .errors import InputError
from .fusion import FusionModel
from .pipeline_fpdm import FPDMPipeline
from .presets import preset_config
from .schedulers import load_scheduler, scheduler_named
from .stage2 import FusionProjector, PoseEmbedding, SourceEncoder, SourceProjector, time_embedding_width

CLASS_EMBEDDING_PREFIX = "class_embedding."
# diffusers' file names for a model folder's weights, in the order diffusers prefers them.
DIFFUSERS_WEIGHTS = (
    ("diffusion_pytorch_model.safetensors", True),
    ("diffusion_pytorch_model.safetensors.index.json", True),
    ("diffusion_pytorch_model.bin", False),
    ("diffusion_pytorch_model.bin.index.json", False),
)


def assemble(
    out: Path,
    sd_dir: Path,
    clip_checkpoint: Path,
    source_checkpoint: Path,
    preset: str = "fpdm-sd21",
    name: str | None = None,
    quick_gelu: bool | None = None,
) -> Path:
    """Write a model directory at `out` from public SD 2.1, open_clip CLIP and timm checkpoints.

    `preset` gives the FPDM-specific parts (fusion Combiner, source encoder architecture,
    source projector, pose embedding, fusion projector, resolution); the UNet, VAE and noise
    schedule come from `sd_dir`.

    The CLIP tower gets the activation its weights were trained with: QuickGELU for OpenAI's,
    GELU for LAION's and most others. `clip_activation` reads it from what ships with the
    weights; `quick_gelu` states it where nothing does, and a `quick_gelu` that contradicts the
    checkpoint is refused. The fusion config records the activation and how it was decided.

    `out` must not exist yet (or be an empty folder); it is written completely or not at all.
    Returns `out`.
    """
    out, sd_dir = Path(out), Path(sd_dir)
    clip_checkpoint, source_checkpoint = Path(clip_checkpoint), Path(source_checkpoint)
    config = preset_config(preset)
    if config["source_encoder"].get("_class_name", SourceEncoder.__name__) != SourceEncoder.__name__:
        raise InputError(
            f"preset {preset!r}: its source encoder is a {config['source_encoder']['_class_name']}, which no public "
            "checkpoint provides (it is trained with the model's VAE); assemble builds presets with a timm source encoder"
        )
    # Recorded in the fusion config so that a model knows its CLIP is pretrained (QC uses it).
    config["fusion"]["clip_weights"] = clip_checkpoint.name
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty folder; assemble writes a new model directory")

    # Everything that can be checked without reading weights, before reading gigabytes.
    unet_dir, vae_dir, scheduler_dir = _sd_parts(sd_dir)
    unet_config = _with_defaults(UNet2DConditionModel, _read_json(unet_dir / "config.json"))
    vae_config = _with_defaults(AutoencoderKL, _read_json(vae_dir / "config.json"))
    for path in (clip_checkpoint, source_checkpoint):
        check_checkpoint_file(path)
    sample_size = _check_parts_fit(config, unet_config, vae_config, sd_dir)
    scheduler = scheduler_named(config["scheduler"]["_class_name"], load_scheduler(scheduler_dir).config)

    clip_state = read_checkpoint(clip_checkpoint)
    clip_tower = _clip_tower_state(clip_checkpoint, clip_state)  # is it a CLIP at all, before which activation
    config["fusion"]["quick_gelu"], config["fusion"]["quick_gelu_evidence"] = _decided_quick_gelu(
        quick_gelu, clip_checkpoint, clip_state
    )

    with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's RNG is left alone
        torch.manual_seed(config.get("seed", 0))
        fusion = FusionModel(**config["fusion"])
        source_encoder = SourceEncoder(**config["source_encoder"])
        source_projector = SourceProjector(**config["source_projector"])
        pose_embedding = PoseEmbedding(**config["pose_embedding"])
        fusion_projector = FusionProjector(**config["fusion_projector"]) if "fusion_projector" in config else None
        # The encoders' checkpoints first: they are smaller than the UNet, so a wrong file fails sooner.
        load_strict(fusion.image_encoder, clip_tower, clip_checkpoint, "the fusion image encoder (open_clip visual tower)")
        _load_source_encoder(source_encoder, source_checkpoint)
        unet = _load_unet(unet_dir, config["unet"], sample_size)
        vae = _load_vae(vae_dir)

    pipe = FPDMPipeline(
        fusion=fusion,
        fusion_projector=fusion_projector,
        source_encoder=source_encoder,
        source_projector=source_projector,
        pose_embedding=pose_embedding,
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        resolution=tuple(config["resolution"]),
        name=name or out.name,
    )
    return _write_atomically(pipe, out)


# ----- the SD 2.1 folder -----------------------------------------------------------------


def _sd_parts(sd_dir: Path) -> tuple[Path, Path, Path]:
    if not sd_dir.is_dir():
        raise InputError(f"{sd_dir}: no such folder (expected a Stable Diffusion diffusers folder with unet/, vae/, scheduler/)")
    parts = []
    for part, config_name in (("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (sd_dir / part / config_name).is_file():
            raise InputError(
                f"{sd_dir}: not a Stable Diffusion diffusers folder: missing {part}/{config_name} "
                "(expected unet/, vae/ and scheduler/ subfolders)"
            )
        parts.append(sd_dir / part)
    return tuple(parts)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable config ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a JSON object")
    return data


def _with_defaults(model_class, config: dict) -> dict:
    """A diffusers config as the model will see it: keys it leaves out take the defaults."""
    parameters = inspect.signature(model_class.__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **config}


def _check_parts_fit(config: dict, unet_config: dict, vae_config: dict, sd_dir: Path) -> list[int]:
    """The preset's FPDM parts must fit the SD UNet/VAE and each other; returns the UNet's
    sample size (latent height, width) for the preset's resolution."""
    problems = []
    unet_class = unet_config.get("_class_name", "UNet2DConditionModel")
    if unet_class != "UNet2DConditionModel":
        problems.append(f"unet/config.json is a {unet_class}, not a UNet2DConditionModel")
    cross_attention_dim = unet_config.get("cross_attention_dim")
    block_out_channels = unet_config.get("block_out_channels") or [None]
    projector, pose = config["source_projector"], config["pose_embedding"]
    if projector["out_dim"] != cross_attention_dim:
        problems.append(
            f"the source projector's out_dim {projector['out_dim']} is not the UNet's cross_attention_dim {cross_attention_dim}"
        )
    if pose["out_channels"] != block_out_channels[0]:
        problems.append(
            f"the pose embedding's out_channels {pose['out_channels']} is not the UNet's first block width {block_out_channels[0]}"
        )
    with torch.device("meta"):  # the architecture only, no memory
        encoder_width = SourceEncoder(**config["source_encoder"]).hidden_size
    if projector["in_dim"] != encoder_width:
        problems.append(
            f"the source projector's in_dim {projector['in_dim']} is not the source encoder's width {encoder_width} "
            f"({config['source_encoder']['timm_model']})"
        )
    fusion_projector = config.get("fusion_projector")
    if fusion_projector is not None:
        width = time_embedding_width(unet_config)
        if fusion_projector["out_dim"] != width:
            problems.append(
                f"the fusion projector's out_dim {fusion_projector['out_dim']} is not the UNet's time-embedding width {width}"
            )
        if fusion_projector["in_dim"] != config["fusion"]["embed_dim"]:
            problems.append(
                f"the fusion projector's in_dim {fusion_projector['in_dim']} is not the fusion embedding's width "
                f"{config['fusion']['embed_dim']}"
            )
    latent_channels = vae_config.get("latent_channels")
    if latent_channels != unet_config.get("in_channels") or latent_channels != unet_config.get("out_channels"):
        problems.append(
            f"the VAE's latent_channels {latent_channels} does not match the UNet's in/out channels "
            f"{unet_config.get('in_channels')}/{unet_config.get('out_channels')}"
        )
    scale = 2 ** (len(vae_config.get("block_out_channels") or [0]) - 1)
    height, width = config["resolution"]
    if height % scale or width % scale:
        problems.append(f"the resolution {height}x{width} is not a multiple of the VAE's downsampling factor {scale}")
    if problems:
        raise InputError(f"{sd_dir} does not fit preset {config['name']!r}: " + "; ".join(problems))
    return [height // scale, width // scale]


def _weights_files(folder: Path) -> tuple[list[Path], bool]:
    """The weight files of a diffusers model folder (the ones diffusers loads) and whether
    they are safetensors."""
    for file_name, safetensors in DIFFUSERS_WEIGHTS:
        path = folder / file_name
        if not path.is_file():
            continue
        if not file_name.endswith(".index.json"):
            return [path], safetensors
        weight_map = _read_json(path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InputError(f"{path}: a shard index without a weight_map")
        shards = sorted({folder / shard for shard in weight_map.values()})
        for shard in shards:
            if not shard.is_file():
                raise InputError(f"{path}: names shard {shard.name}, which is missing")
        return shards, safetensors
    raise InputError(f"{folder}: no weights (diffusion_pytorch_model.safetensors or .bin)")


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers warns that the class embedding is 'newly initialized'; that is the point."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _load_unet(unet_dir: Path, preset_unet: dict, sample_size: list[int]) -> UNet2DConditionModel:
    """SD's UNet with the preset's class embedding: `identity` has no weights (the fusion
    projector is a part of its own); `projection` has new ones, initialised here."""
    files, safetensors = _weights_files(unet_dir)
    class_embed_type = preset_unet["class_embed_type"]
    try:
        with _quiet_diffusers():
            unet, info = UNet2DConditionModel.from_pretrained(
                unet_dir,
                class_embed_type=class_embed_type,
                projection_class_embeddings_input_dim=preset_unet.get("projection_class_embeddings_input_dim"),
                sample_size=sample_size,
                use_safetensors=safetensors,
                low_cpu_mem_usage=False,
                local_files_only=True,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InputError(f"{unet_dir}: the UNet could not be loaded ({exc})") from None
    new_keys = {key for key in unet.state_dict() if key.startswith(CLASS_EMBEDDING_PREFIX)}
    if unet.config.class_embed_type != class_embed_type or (class_embed_type == "projection" and not new_keys):
        raise InputError(f"{unet_dir}/config.json: the UNet did not take a {class_embed_type!r} class embedding")
    missing = set(info["missing_keys"]) - new_keys
    raise_on_key_problems(
        unet_dir / files[0].name if len(files) == 1 else unet_dir,
        "the UNet",
        missing,
        set(info["unexpected_keys"]),
        [f"{key}: file {tuple(a)}, model {tuple(b)}" for key, a, b in info["mismatched_keys"]],
    )
    # from_pretrained builds the model with initialisation switched off, so the keys it does not
    # find (the class embedding) are uninitialised memory (NaN, 1e19, ...): initialise them.
    for module in unet.class_embedding.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    _verify_unet_weights(unet, files, safetensors, new_keys)
    return unet


def _verify_unet_weights(unet: UNet2DConditionModel, files: list[Path], safetensors: bool, new_keys: set[str]) -> None:
    """Every UNet tensor except the class embedding equals the SD file's, read independently of
    diffusers (tensor by tensor, so the check costs little memory)."""
    expected = {key: value for key, value in unet.state_dict().items() if key not in new_keys}
    seen = set()
    for path in files:
        for key, tensor in iter_tensors(path, safetensors):
            if key in new_keys:
                raise InputError(f"{path}: already has the class-embedding weight {key!r}; this is not a plain SD UNet")
            if key not in expected:
                raise InputError(f"{path}: weight {key!r} is not part of the UNet")
            if tensor.shape != expected[key].shape or not torch.equal(expected[key], tensor.to(expected[key].dtype)):
                raise InputError(f"{path}: the UNet's {key!r} did not load from the file (shape or values differ)")
            seen.add(key)
    missing = sorted(set(expected) - seen)
    if missing:
        raise InputError(f"{files[0].parent}: the UNet weights lack {listed(missing)}; diffusers would leave them uninitialised")
    for key in new_keys:
        if not torch.isfinite(unet.state_dict()[key]).all():  # pragma: no cover - guards the initialisation above
            raise RuntimeError(f"UNet class embedding {key} is not finite after initialisation")


def _load_vae(vae_dir: Path) -> AutoencoderKL:
    files, safetensors = _weights_files(vae_dir)
    try:
        with _quiet_diffusers():
            vae, info = AutoencoderKL.from_pretrained(
                vae_dir, use_safetensors=safetensors, low_cpu_mem_usage=False, local_files_only=True, output_loading_info=True
            )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InputError(f"{vae_dir}: the VAE could not be loaded ({exc})") from None
    raise_on_key_problems(
        vae_dir,
        "the VAE",
        set(info["missing_keys"]),
        set(info["unexpected_keys"]),
        [f"{key}: file {tuple(a)}, model {tuple(b)}" for key, a, b in info["mismatched_keys"]],
    )
    return vae


# ----- the fusion encoder (open_clip) ------------------------------------------------------


# Keys of OpenAI's own CLIP state dicts (as in their release) that open_clip drops when it
# converts one (open_clip.model.build_model_from_openai_state_dict): a file with them is OpenAI's.
OPENAI_LAYOUT_KEYS = ("input_resolution", "context_length", "vocab_size")
# What open_clip's hub repositories ship beside the weights; open_clip builds the model from its
# model_cfg, quick_gelu included (false when absent, open_clip's default).
OPEN_CLIP_CONFIG = "open_clip_config.json"


def clip_activation(path: Path, state: Mapping[str, torch.Tensor]) -> tuple[bool | None, str]:
    """Whether the CLIP checkpoint at `path` was trained with QuickGELU, and the evidence.

    The weights alone cannot say: GELU and QuickGELU towers have the same tensors, and a
    tower's output on any input looks plausible under either (they differ by at most 0.02 per
    unit), so there is nothing to compare it against. The evidence is what ships with them:
    1. OpenAI's own layout (OPENAI_LAYOUT_KEYS): QuickGELU, which every OpenAI CLIP was
       trained with;
    2. an open_clip_config.json beside the file, as open_clip's hub repositories ship it: its
       model_cfg.quick_gelu.
    None (undecided) when neither is there: open_clip-format files of OpenAI and LAION weights
    are otherwise alike.
    """
    if all(key in state for key in OPENAI_LAYOUT_KEYS):
        return True, f"OpenAI's CLIP layout ({', '.join(OPENAI_LAYOUT_KEYS)} keys): OpenAI's CLIPs use QuickGELU"
    config_file = path.parent / OPEN_CLIP_CONFIG
    if config_file.is_file():
        model_cfg = _read_json(config_file).get("model_cfg")
        if not isinstance(model_cfg, dict):
            raise InputError(f"{config_file}: no model_cfg object (open_clip's hub config has one)")
        embed_dim, proj = model_cfg.get("embed_dim"), state.get("visual.proj")
        if embed_dim is not None and proj is not None and proj.shape[-1] != embed_dim:
            raise InputError(
                f"{config_file}: describes a CLIP with embed_dim {embed_dim}, but {path.name} projects to {proj.shape[-1]}"
            )
        value = bool(model_cfg.get("quick_gelu", False))
        return value, f"{OPEN_CLIP_CONFIG} beside it: model_cfg.quick_gelu {'true' if value else 'false (unset)'}"
    return None, f"no OpenAI layout keys ({', '.join(OPENAI_LAYOUT_KEYS)}) and no {OPEN_CLIP_CONFIG} beside it"


def _decided_quick_gelu(asked: bool | None, path: Path, state: Mapping[str, torch.Tensor]) -> tuple[bool, str]:
    detected, evidence = clip_activation(path, state)
    flag = "--quick-gelu" if asked else "--no-quick-gelu"
    if detected is None:
        if asked is None:
            raise InputError(
                f"{path}: cannot tell whether this CLIP was trained with QuickGELU or GELU ({evidence}); "
                "OpenAI's weights use QuickGELU: pass --quick-gelu; LAION's and most others GELU: pass --no-quick-gelu "
                "(the wrong one degrades every fusion embedding, silently)"
            )
        return bool(asked), f"stated when assembling ({flag}); the checkpoint does not say"
    if asked is not None and bool(asked) != detected:
        raise InputError(
            f"{path}: {flag} contradicts the checkpoint, which was trained with {'QuickGELU' if detected else 'GELU'} "
            f"({evidence}); leave the flag out"
        )
    return detected, evidence


def _clip_tower_state(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    visual = {key[len("visual.") :]: value for key, value in state.items() if key.startswith("visual.")}
    if not visual:
        hint = ""
        if any(key.startswith("vision_model.") for key in state):
            hint = " (this looks like a Hugging Face transformers CLIP checkpoint; use open_clip's open_clip_pytorch_model.bin)"
        raise InputError(f"{path}: no 'visual.*' weights: not an open_clip CLIP checkpoint{hint}")
    return visual


# ----- the source encoder (timm) -----------------------------------------------------------


def _load_source_encoder(encoder: SourceEncoder, path: Path) -> None:
    backbone = encoder.backbone
    state = read_checkpoint(path)
    trunk = "visual.trunk."
    if any(key.startswith(trunk) for key in state):  # open_clip's timm towers
        state = {key[len(trunk) :]: value for key, value in state.items() if key.startswith(trunk)}
    # Parts the frozen feature extractor does not have: DINOv2's masked-modelling token, and a
    # classifier head (with its pooling norm) when the backbone is built without one.
    state.pop("mask_token", None)
    if isinstance(getattr(backbone, "head", None), torch.nn.Identity):
        state = {key: value for key, value in state.items() if not key.startswith("head.")}
    if isinstance(getattr(backbone, "fc_norm", None), torch.nn.Identity):
        state = {key: value for key, value in state.items() if not key.startswith("fc_norm.")}
    if "pos_embed" in state and getattr(backbone, "pos_embed", None) is not None:
        state["pos_embed"] = _resampled_pos_embed(backbone, state["pos_embed"], path)
    load_strict(backbone, state, path, f"the source encoder ({encoder.config.timm_model})")


def _resampled_pos_embed(backbone: torch.nn.Module, pos_embed: torch.Tensor, path: Path) -> torch.Tensor:
    """A checkpoint's absolute position embedding on the backbone's patch grid (DINOv2 ships
    518 px = 37x37 patches; 512 px is 36x36)."""
    target = backbone.pos_embed
    if pos_embed.shape == target.shape:
        return pos_embed
    prefix = 0 if getattr(backbone, "no_embed_class", False) else getattr(backbone, "num_prefix_tokens", 1)
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[2] != target.shape[2]:
        return pos_embed  # another width: not a grid difference; the strict load names every mismatch
    patches = pos_embed.shape[1] - prefix
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise InputError(f"{path}: pos_embed has {pos_embed.shape[1]} positions, not {prefix} + a square grid of patches")
    return resample_abs_pos_embed(
        pos_embed.float(),
        new_size=list(backbone.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=prefix,
    ).to(pos_embed.dtype)


# ----- writing -----------------------------------------------------------------------------


def _write_atomically(pipe: FPDMPipeline, out: Path) -> Path:
    """Write next to `out`, then rename: a failure leaves no half-written model directory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(staging)
        if out.exists():
            out.rmdir()  # checked empty above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
