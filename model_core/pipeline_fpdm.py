"""FPDMPipeline: the model directory format and batched sampling with three-branch guidance.

A model directory is diffusers-shaped: `model_index.json` at the top, and one subfolder per
component with its JSON config and safetensors weights:

    model_index.json     name, resolution, format version, components present
    fusion/              stage 1 (absent in a stage-2-only model)
    fusion_projector/    fusion embedding -> time-embedding vector (format 2; absent in format 1)
    source_encoder/      frozen appearance encoder (timm ViT; format 3: or the VAE's encoder)
    source_projector/    tokens -> cross-attention context
    pose_embedding/      skeleton -> conv_in residual
    unet/ vae/           stock diffusers UNet2DConditionModel / AutoencoderKL
    scheduler/           any diffusers scheduler (swappable: its config names its class)

Format 1 fed the fusion embedding to the UNet's own `projection` class embedding; format 2 adds
the `fusion_projector` part (the reference's mlp head) before an `identity` class embedding.
Format 3 adds a second kind of source encoder, `VAESourceEncoder` (its config's `_class_name`
says which); code that reads formats 1 and 2 only refuses it by its version, rather than
failing on its weights. All three load. A directory is written with the oldest format that
describes it, so a model without a fusion projector (format 1 models, stage-2-only models)
keeps its files, and its checksum.

Nothing is pickled and nothing is fetched from a hub: `from_pretrained` reads a local
directory or builds a named preset.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import schedulers
from .errors import InputError
from .fusion import FusionModel
from .images import PHOTO_FILL, SKELETON_FILL, ModelGeometry, pil_to_tensor, square_encoder_input, tensor_to_pil
from .keypoints import Keypoints
from .presets import PRESETS, ModelKind, ModelSource, resolve_model
from .stage2 import (
    SOURCE_ENCODERS,
    FusionProjector,
    PoseEmbedding,
    SourceEncoder,
    SourceProjector,
    VAESourceEncoder,
    check_fusion_wiring,
    denoise,
    uses_fusion,
)

FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
MODEL_INDEX = "model_index.json"
NEURAL_COMPONENTS = {
    "fusion": FusionModel,
    "fusion_projector": FusionProjector,
    "source_encoder": SourceEncoder,
    "source_projector": SourceProjector,
    "pose_embedding": PoseEmbedding,
    "unet": UNet2DConditionModel,
    "vae": AutoencoderKL,
}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA device is available")
    return resolved


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on CUDA (bf16 where the GPU has it), float32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def model_checksum(model: str | Path | ModelSource) -> str:
    """sha256 that identifies a model without loading it: over a model directory's index and
    its components' files (paths and contents; not the checkpoint-*/ copies or logs that a
    training output directory also holds), or over a random-init preset's config, whose fixed
    seed makes it the weights. Outputs record it, so a rerun with other weights is not a skip."""
    source = resolve_model(model)
    refuse_without_weights(source)
    digest = hashlib.sha256()
    if source.kind is ModelKind.RANDOM_INIT_PRESET:
        digest.update(json.dumps(source.config, sort_keys=True).encode())
        return digest.hexdigest()
    root = source.directory
    index_file = root / MODEL_INDEX
    if not index_file.is_file():
        raise InputError(f"{root}: not a model directory (no {MODEL_INDEX}) and not a preset ({', '.join(PRESETS)})")
    try:
        components = json.loads(index_file.read_text()).get("components", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{index_file}: unreadable ({exc})") from None
    files = [index_file] + sorted(p for part in components for p in (root / str(part)).glob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def refuse_without_weights(source: ModelSource) -> None:
    # An architecture-only preset would sample noise: neither a model to load nor one to identify.
    if not source.has_weights:
        raise InputError(
            f"preset {source.asked!r} has no weights: build a model directory with `fpdm model assemble` and train it"
        )


@dataclass
class SourceEncoding:
    """Everything sampling needs from one source photo, computed once and reused for every
    pose of that garment (a catalog run renders 10-30 poses per source)."""

    tokens: torch.Tensor  # (T, D) source-encoder tokens, CLS included
    clip_embedding: torch.Tensor | None  # (E,) fusion encoder's embedding; None without stage 1


@dataclass
class PoseEncoding:
    skeleton: torch.Tensor  # (3, H, W) in [0, 1] at model resolution
    clip_embedding: torch.Tensor | None  # (E,) fusion encoder's embedding of the skeleton


def three_branch_guidance(e_u: torch.Tensor, e_s: torch.Tensor, e_f: torch.Tensor, w: float) -> torch.Tensor:
    """FPDM.md: e = e_u + w (e_s - e_u) + w (e_f - e_s)."""
    return e_u + w * (e_s - e_u) + w * (e_f - e_s)


def two_branch_guidance(e_u: torch.Tensor, e_c: torch.Tensor, w: float) -> torch.Tensor:
    return e_u + w * (e_c - e_u)


class FPDMPipeline:
    def __init__(
        self,
        *,
        source_encoder: SourceEncoder | VAESourceEncoder,
        source_projector: SourceProjector,
        pose_embedding: PoseEmbedding,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler,
        resolution: tuple[int, int],
        fusion: FusionModel | None = None,
        fusion_projector: FusionProjector | None = None,
        name: str = "custom",
    ):
        check_fusion_wiring(unet, fusion, fusion_projector)
        self.fusion = fusion
        self.fusion_projector = fusion_projector
        self.source_encoder = source_encoder
        self.source_projector = source_projector
        self.pose_embedding = pose_embedding
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.geometry = ModelGeometry(height=int(resolution[0]), width=int(resolution[1]))
        self.name = name
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        for module in self.modules().values():
            module.eval().requires_grad_(False)

    # ----- construction, loading, saving -------------------------------------------------

    @classmethod
    def from_config(cls, config: dict, stage2_only: bool = False) -> FPDMPipeline:
        """Build every component from a preset-style config, random-initialised from its seed."""
        torch.manual_seed(config.get("seed", 0))
        unet_config = dict(config["unet"])
        if stage2_only:
            unet_config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
        has_projector = not stage2_only and "fusion_projector" in config
        scheduler_config = dict(config["scheduler"])
        scheduler_class = schedulers.scheduler_class(scheduler_config.pop("_class_name"))
        parts = dict(
            fusion=None if stage2_only else FusionModel(**config["fusion"]),
            fusion_projector=FusionProjector(**config["fusion_projector"]) if has_projector else None,
            source_encoder=_source_encoder_from_config(config["source_encoder"]),
            source_projector=SourceProjector(**config["source_projector"]),
            pose_embedding=PoseEmbedding(**config["pose_embedding"]),
            unet=UNet2DConditionModel(**unet_config),
            vae=AutoencoderKL(**config["vae"]),
        )
        source_encoder = parts["source_encoder"]
        if isinstance(source_encoder, VAESourceEncoder):
            source_encoder.copy_vae_encoder(parts["vae"])  # it is the VAE's encoder (VAESourceEncoder)
        return cls(
            **parts,
            scheduler=scheduler_class.from_config(scheduler_config),
            resolution=tuple(config["resolution"]),
            name=config["name"],
        )

    @classmethod
    def from_pretrained(
        cls, model: str | Path | ModelSource, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> FPDMPipeline:
        """A model directory, the name of a trained preset (`demo`), or the name of a preset whose
        random initialisation is a model (presets.resolve_model decides which)."""
        source = resolve_model(model)
        refuse_without_weights(source)
        if source.kind is ModelKind.RANDOM_INIT_PRESET:
            pipe = cls.from_config(source.config)
        else:
            pipe = cls._load_directory(source.directory)
        device = resolve_device(device) if isinstance(device, str) else device
        return pipe.to(device, dtype or inference_dtype(device))

    @classmethod
    def _load_directory(cls, path: Path) -> FPDMPipeline:
        index_file = path / MODEL_INDEX
        if not path.is_dir():
            raise InputError(f"{path}: no such model directory, and not a preset ({', '.join(PRESETS)})")
        if not index_file.is_file():
            raise InputError(f"{path}: not a model directory (no {MODEL_INDEX})")
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{index_file}: unreadable ({exc})") from None
        if not isinstance(index, dict) or "resolution" not in index:
            raise InputError(f"{index_file}: no 'resolution' field")
        version = index.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise InputError(
                f"{index_file}: format_version {version!r}; this version of the code reads "
                f"{', '.join(map(str, READABLE_FORMAT_VERSIONS[:-1]))} and {READABLE_FORMAT_VERSIONS[-1]} (a newer one wrote it?)"
            )
        parts = {}
        for part in index.get("components", []):
            if part == "scheduler":
                continue
            if part not in NEURAL_COMPONENTS or (part == "fusion_projector" and version < 2):
                raise InputError(f"{index_file}: unknown component {part!r} for format_version {version}")
            parts[part] = _load_component(path, part)
        if isinstance(parts.get("source_encoder"), VAESourceEncoder) and version < 3:
            raise InputError(f"{index_file}: a VAESourceEncoder source encoder in a format_version {version} model")
        for required in ("source_encoder", "source_projector", "pose_embedding", "unet", "vae"):
            if required not in parts:
                raise InputError(f"{path}: model directory is missing part {required!r} (listed in {MODEL_INDEX}: no)")
        return cls(
            **parts,
            scheduler=_load_scheduler(path),
            resolution=tuple(index["resolution"]),
            name=index.get("name", path.name),
        )

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model directory (configs as JSON, weights as safetensors, float32)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for part, module in self.modules().items():
            module.save_pretrained(path / part, safe_serialization=True)
            # diffusers records where a part was loaded from; a model directory's files (and so
            # its checksum, which decides reruns) must not depend on where it was saved from.
            config_file = path / part / "config.json"
            config = json.loads(config_file.read_text())
            if config.pop("_name_or_path", None) is not None:
                config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        self.scheduler.save_pretrained(path / "scheduler")
        index = {
            "_class_name": type(self).__name__,
            # The oldest format that describes the directory (see the module docstring).
            "format_version": self.format_version,
            "name": self.name,
            "resolution": [self.geometry.height, self.geometry.width],
            "components": [*self.modules(), "scheduler"],
        }
        (path / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return path

    @property
    def format_version(self) -> int:
        """The oldest directory format that describes this model (see the module docstring)."""
        if isinstance(self.source_encoder, VAESourceEncoder):
            return 3
        return 2 if self.fusion_projector is not None else 1

    def modules(self) -> dict[str, torch.nn.Module]:
        parts = {
            "fusion": self.fusion,
            "fusion_projector": self.fusion_projector,
            "source_encoder": self.source_encoder,
            "source_projector": self.source_projector,
            "pose_embedding": self.pose_embedding,
            "unet": self.unet,
            "vae": self.vae,
        }
        return {name: module for name, module in parts.items() if module is not None}

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> FPDMPipeline:
        self.device, self.dtype = device, dtype or self.dtype
        for name, module in self.modules().items():
            # SD VAEs overflow to NaN in float16; the VAE stays float32 then (bf16 is fine).
            dtype = torch.float32 if name == "vae" and self.dtype == torch.float16 else self.dtype
            module.to(self.device)
            if module.dtype != dtype:
                module.to(dtype)
        if device.type == "cuda":
            self.unet.set_attn_processor(AttnProcessor2_0())  # PyTorch SDPA kernels
        return self

    @property
    def uses_fusion(self) -> bool:
        return uses_fusion(self.unet)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ----- conditions --------------------------------------------------------------------

    @torch.no_grad()
    def encode_source(self, image: Image.Image) -> SourceEncoding:
        """Encode one source photo once; reuse the result for every pose of that garment."""
        fitted = self.geometry.photo(image)
        tokens = self.source_encoder(self._on_device(self.source_encoder_pixels(fitted)[None]))[0]
        clip_embedding = None
        if self.fusion is not None:
            clip_embedding = self.fusion.embed(self._on_device(self.clip_pixels(fitted, PHOTO_FILL)[None]))[0]
        return SourceEncoding(tokens=tokens, clip_embedding=clip_embedding)

    @torch.no_grad()
    def encode_pose(self, keypoints: Keypoints) -> PoseEncoding:
        skeleton = self.geometry.skeleton(keypoints)
        clip_embedding = None
        if self.fusion is not None:
            clip_embedding = self.fusion.embed(self._on_device(self.clip_pixels(skeleton, SKELETON_FILL)[None]))[0]
        return PoseEncoding(skeleton=self._on_device(pil_to_tensor(skeleton)), clip_embedding=clip_embedding)

    @torch.no_grad()
    def fusion_embedding(self, source: SourceEncoding, pose: PoseEncoding) -> torch.Tensor:
        """The fused embedding for one (source, pose): stage 1's prediction of the target's CLIP
        embedding (QC compares generated images against it)."""
        if self.fusion is None:
            raise InputError("this model has no fusion part (stage-2-only)")
        return self.fusion.fuse(source.clip_embedding[None], pose.clip_embedding[None])[0]

    # The encoders' inputs, from a picture already at model resolution. Training builds its
    # batches with these too, so the model trains on exactly what it samples with.
    def clip_pixels(self, fitted: Image.Image, fill) -> torch.Tensor:
        config = self.fusion.config
        return square_encoder_input(fitted, self.fusion.image_size, config.image_mean, config.image_std, fill)

    def source_encoder_pixels(self, fitted: Image.Image) -> torch.Tensor:
        return self.source_encoder.pixels(fitted)

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device=self.device, dtype=self.dtype)

    # ----- sampling ----------------------------------------------------------------------

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        pose_residual: torch.Tensor,
        fusion: torch.Tensor | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guided noise prediction, every guidance branch in one UNet batch.

        Branches: e_u with every condition zeroed; e_s with pose and source tokens; e_f with
        all three (only when `fusion` is given). Zeroing is what condition dropout taught the
        model in training.
        """
        n = len(latents)
        no_context, no_pose = torch.zeros_like(context), torch.zeros_like(pose_residual)
        if fusion is not None:
            branches = 3
            context_in = torch.cat([no_context, context, context])
            pose_in = torch.cat([no_pose, pose_residual, pose_residual])
            fusion_in = torch.cat([torch.zeros_like(fusion), torch.zeros_like(fusion), fusion])
        else:
            branches = 2
            context_in = torch.cat([no_context, context])
            pose_in = torch.cat([no_pose, pose_residual])
            fusion_in = None
            if self.uses_fusion:  # a full model run without stage 1: its fusion input stays zero
                fusion_in = torch.zeros(2 * n, self.fusion.config.embed_dim, device=latents.device, dtype=latents.dtype)
        noise = denoise(self.unet, latents.repeat(branches, 1, 1, 1), t, context_in, pose_in, fusion_in, self.fusion_projector)
        if branches == 3:
            e_u, e_s, e_f = noise.chunk(3)
            return three_branch_guidance(e_u, e_s, e_f, guidance_scale)
        e_u, e_c = noise.chunk(2)
        return two_branch_guidance(e_u, e_c, guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        sources: list[SourceEncoding],
        poses: list[PoseEncoding],
        seeds: list[int],
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        num_images_per_prompt: int = 1,
        use_fusion: bool = True,
        output_type: str = "pil",
        scheduler: str | None = None,
    ) -> list[list[Image.Image]] | torch.Tensor:
        """Generate `num_images_per_prompt` images for each job (sources[i], poses[i], seeds[i]).

        Sample k of a job starts from noise drawn by its own generator seeded `seeds[i] + k`,
        so an image depends only on its job and settings, never on what else is in the batch.
        Returns one list of PIL images per job (or a (jobs, samples, 3, H, W) tensor in [-1, 1]
        with output_type="pt").

        `scheduler` names a diffusers scheduler class to sample with instead of the model's own
        (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, ...), built from the model's
        scheduler config so the noise schedule and prediction type carry over; the model keeps
        its own.
        """
        if not (len(sources) == len(poses) == len(seeds)):
            raise ValueError("sources, poses and seeds must have one entry per job")
        if use_fusion and not self.uses_fusion:
            use_fusion = False  # a stage-2-only model has no fusion branch
        jobs, samples = len(sources), num_images_per_prompt

        def per_output(values: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack(values).repeat_interleave(samples, dim=0)

        context = self.source_projector(per_output([s.tokens for s in sources]))
        pose_residual = self.pose_embedding(per_output([p.skeleton for p in poses]))
        fusion = None
        if use_fusion:
            fusion = self.fusion.fuse(
                per_output([s.clip_embedding for s in sources]), per_output([p.clip_embedding for p in poses])
            )

        generators = [torch.Generator("cpu").manual_seed(int(seed) + k) for seed in seeds for k in range(samples)]
        shape = (
            jobs * samples,
            self.unet.config.in_channels,
            self.geometry.height // self.vae_scale_factor,
            self.geometry.width // self.vae_scale_factor,
        )
        # Noise is drawn on the CPU so a seed gives the same start on every device.
        latents = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
        latents = latents.to(self.device, self.dtype)

        scheduler = self.scheduler if scheduler is None else schedulers.scheduler_named(scheduler, self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = latents * scheduler.init_noise_sigma
        # Stochastic samplers (DDPM) draw their step noise from the jobs' own generators too.
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            noise = self.predict_noise(model_input, t, context, pose_residual, fusion, guidance_scale)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample

        latents = (latents / self.vae.config.scaling_factor).to(self.vae.dtype)
        images = self.vae.decode(latents).sample.float().clamp(-1, 1)
        images = images.view(jobs, samples, *images.shape[1:])
        if output_type == "pt":
            return images
        return [tensor_to_pil(job_images) for job_images in images]

    def generate(self, source: Image.Image, poses: list[Keypoints], seed: int = 0, **kwargs) -> list[list[Image.Image]]:
        """One source photo in many poses: the source is encoded once for all of them."""
        encoding = self.encode_source(source)
        pose_encodings = [self.encode_pose(p) for p in poses]
        return self([encoding] * len(poses), pose_encodings, [seed] * len(poses), **kwargs)


def _load_component(path: Path, part: str) -> torch.nn.Module:
    folder = path / part
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise InputError(f"{path}: model directory is missing part {part!r} ({part}/config.json)")
    if not any(folder.glob("*.safetensors")):
        raise InputError(f"{path}: part {part!r} has no safetensors weights")
    component = NEURAL_COMPONENTS[part]
    if part == "source_encoder":
        component = _source_encoder_class(config_file)
    try:
        module, loading = component.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InputError(f"{path}: part {part!r} could not be loaded ({exc})") from None
    # diffusers only logs missing keys and leaves those tensors uninitialised: refuse instead.
    problems = {kind: loading.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") if loading.get(kind)}
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, keys[:3]))}" for kind, keys in problems.items())
        raise InputError(f"{path}: part {part!r} does not match its config ({detail})")
    return module


def _source_encoder_class(config_file: Path) -> type:
    try:
        name = json.loads(config_file.read_text()).get("_class_name", SourceEncoder.__name__)
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{config_file}: unreadable ({exc})") from None
    if not isinstance(name, str) or name not in SOURCE_ENCODERS:
        raise InputError(f"{config_file}: unknown source encoder {str(name)[:80]!r}; known: {', '.join(SOURCE_ENCODERS)}")
    return SOURCE_ENCODERS[name]


def _source_encoder_from_config(config: dict) -> SourceEncoder | VAESourceEncoder:
    """A preset's source encoder: a timm ViT, unless its `_class_name` names another kind."""
    config = dict(config)
    return SOURCE_ENCODERS[config.pop("_class_name", SourceEncoder.__name__)](**config)


def _load_scheduler(path: Path):
    if not (path / "scheduler" / "scheduler_config.json").is_file():
        raise InputError(f"{path}: model directory is missing part 'scheduler' (scheduler/scheduler_config.json)")
    return schedulers.load_scheduler(path / "scheduler", default_class="DDIMScheduler")
