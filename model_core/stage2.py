"""Stage 2: the conditional latent diffusion model's conditioning (FPDM.md, "Stage 2").

The denoiser is a stock diffusers `UNet2DConditionModel`; FPDM conditions it three ways:
1. fusion embedding -> `FusionProjector` (the reference's `mlp` head) -> the UNet's `identity`
   class embedding, added to the time embedding. Models of the first layout feed the embedding
   to diffusers' `projection` class embedding instead; they still load and sample as they did;
2. source patch tokens (frozen encoder: `SourceEncoder`, a timm ViT as in the reference, or
   `VAESourceEncoder`, the demo's) -> `SourceProjector` -> cross-attention context;
3. target skeleton -> `PoseEmbedding` (ControlNet-style) -> added to the output of `conv_in`.
`denoise` is the one place that wires the three into a UNet call, for training and sampling.
"""

from __future__ import annotations

import timm
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import Encoder
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .errors import InputError
from .images import PHOTO_FILL, pil_to_tensor, square_encoder_input


class SourceEncoder(ModelMixin, ConfigMixin):
    """A frozen timm ViT (reference: DINOv2-L/14 at 512x512) whose tokens, CLS included,
    describe the source's appearance."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        timm_model: str = "vit_large_patch14_dinov2",
        image_size: int = 512,
        timm_overrides: dict | None = None,
        image_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        image_std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    ):
        super().__init__()
        # pretrained=False: the architecture only; weights come from a model directory or `assemble`.
        self.backbone = timm.create_model(
            timm_model, pretrained=False, img_size=image_size, num_classes=0, **(timm_overrides or {})
        )

    @property
    def hidden_size(self) -> int:
        return self.backbone.embed_dim

    def pixels(self, fitted: Image.Image) -> torch.Tensor:
        """The encoder's input from a photo at model resolution: padded square, normalised."""
        config = self.config
        return square_encoder_input(fitted, config.image_size, config.image_mean, config.image_std, PHOTO_FILL)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(pixels)


# The layers of a diffusers VAE encoder that VAESourceEncoder has: all up to the feature map.
VAE_FEATURE_LAYERS = ("conv_in", "down_blocks", "mid_block")


class VAESourceEncoder(ModelMixin, ConfigMixin):
    """The source's appearance as a VAE encoder's feature map: the layers of diffusers' VAE
    encoder up to its mid block, one token per cell of the map, each token followed by the
    cell's 2-D sinusoidal position. The demo's source encoder.

    The reference freezes DINOv2 because it is pretrained. A model too small for such an encoder
    (the demo: 64x48 px) takes its own VAE's encoder instead, pretrained on the catalog's photos
    by the VAE's training (`copy_vae_encoder`), and frozen the same way; a random ViT, frozen,
    gave stage 2 nothing to learn the garment from (the demo's model card measures both). Its
    input is the photo at model resolution, not padded square, so the map keeps the figure's
    layout; the positions say where each cell is, which the convolutions alone do not.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (32, 48, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        mid_block_add_attention: bool = True,
        position_frequencies: int = 4,
    ):
        super().__init__()
        encoder = Encoder(
            in_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
        )
        # The latent head (norm, conv_out) stays the VAE's: the tokens are the features before it.
        self.conv_in, self.down_blocks, self.mid_block = encoder.conv_in, encoder.down_blocks, encoder.mid_block

    @classmethod
    def like_vae(cls, vae: AutoencoderKL, position_frequencies: int = 4) -> VAESourceEncoder:
        """An encoder of the VAE's encoder layout, with its weights."""
        config = vae.config
        encoder = cls(
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            position_frequencies=position_frequencies,
        )
        encoder.copy_vae_encoder(vae)
        return encoder

    @property
    def hidden_size(self) -> int:
        return self.config.block_out_channels[-1] + 4 * self.config.position_frequencies

    def copy_vae_encoder(self, vae: AutoencoderKL) -> None:
        """Take the VAE encoder's weights (after the VAE's training, say); its layout must match."""
        state = {k: v for k, v in vae.encoder.state_dict().items() if k.split(".")[0] in VAE_FEATURE_LAYERS}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(f"the source encoder's layout is not the VAE encoder's ({str(exc).splitlines()[0]})") from None

    def pixels(self, fitted: Image.Image) -> torch.Tensor:
        """The encoder's input from a photo at model resolution: in [-1, 1], as the VAE takes it."""
        return pil_to_tensor(fitted) * 2 - 1

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.conv_in(pixels)
        for block in self.down_blocks:
            features = block(features)
        features = self.mid_block(features)
        batch, _, height, width = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, H*W, C), row by row
        position = grid_position(height, width, self.config.position_frequencies).to(tokens)
        return torch.cat([tokens, position.expand(batch, -1, -1)], dim=-1)


def grid_position(height: int, width: int, frequencies: int) -> torch.Tensor:
    """(1, H*W, 4F): for each cell, row by row, sin and cos of pi 2^k y and of pi 2^k x, k < F,
    where y and x are the cell centre's position in [0, 1]."""
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    y, x = (grid.reshape(-1, 1) for grid in torch.meshgrid(y, x, indexing="ij"))
    scales = torch.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32)
    angles = torch.cat([y * scales, x * scales], dim=1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)[None]


# The source encoders a model directory may hold, by the class name its config records.
SOURCE_ENCODERS = {cls.__name__: cls for cls in (SourceEncoder, VAESourceEncoder)}


class SourceProjector(ModelMixin, ConfigMixin):
    """Source tokens -> cross-attention context: Linear, GELU, Dropout, LayerNorm, Linear, Dropout."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_dim: int = 1024, hidden_dim: int = 768, out_dim: int = 1024, dropout: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, out_dim),
            nn.Dropout(dropout),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)


class FusionProjector(ModelMixin, ConfigMixin):
    """Fusion embedding -> a vector added to the UNet's time embedding: Linear, GELU, Dropout,
    Linear, Dropout (the reference's `class_embed_type: 'mlp'`, config c1 key class_embed_type).

    It is a part of its own, feeding the UNet's parameter-free `identity` class embedding, so the
    UNet stays diffusers' stock class (diffusers has no `mlp` class embedding). `out_dim` is the
    UNet's time-embedding width (1280 for SD 2.1).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_dim: int = 768, hidden_dim: int = 768, out_dim: int = 1280, dropout: float = 0.2):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
            nn.Dropout(dropout),
        )

    def forward(self, fusion: torch.Tensor) -> torch.Tensor:
        return self.layers(fusion)


class PoseEmbedding(ModelMixin, ConfigMixin):
    """Skeleton image (0..1) -> a residual for conv_in's output, 8x downsampled like the VAE.

    diffusers' ControlNet conditioning embedding, whose last conv is zero-initialised: a fresh
    pose embedding changes nothing until training teaches it to.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, out_channels: int = 320, block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=out_channels, conditioning_channels=3, block_out_channels=tuple(block_out_channels)
        )

    def forward(self, skeleton: torch.Tensor) -> torch.Tensor:
        return self.embedding(skeleton)


def denoise(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    pose_residual: torch.Tensor,
    fusion: torch.Tensor | None,
    fusion_projector: FusionProjector | None = None,
) -> torch.Tensor:
    """One UNet prediction with the pose residual added to conv_in's output.

    A forward hook adds the residual, so the UNet stays the stock diffusers class and loads
    any SD checkpoint unchanged. `fusion` is the fusion embedding (zeros where a condition is
    dropped: the projector's output for zeros is what the model learns as "no fusion", as in the
    reference); None for a stage-2-only UNet, which has no class embedding. `fusion_projector`
    maps it to the time-embedding width for an `identity` class embedding; None for a
    `projection` UNet, which projects the embedding itself.
    """
    class_labels = fusion if fusion_projector is None or fusion is None else fusion_projector(fusion)
    hook = unet.conv_in.register_forward_hook(lambda module, args, output: output + pose_residual.to(output.dtype))
    try:
        return unet(latents, timesteps, encoder_hidden_states=context, class_labels=class_labels).sample
    finally:
        hook.remove()


# The UNet class embeddings that carry the fusion embedding: `identity` behind a FusionProjector
# (the reference's mlp head), `projection` in models of the first layout.
FUSION_CLASS_EMBEDDINGS = ("identity", "projection")


def uses_fusion(unet: UNet2DConditionModel) -> bool:
    return unet.config.class_embed_type in FUSION_CLASS_EMBEDDINGS


def time_embedding_width(unet_config) -> int:
    """The width of a UNet's time embedding, which a class embedding is added to (diffusers'
    rule: 4x the first block's channels for positional time embeddings, 2x for Fourier ones,
    unless set)."""
    config = dict(unet_config)
    factor = 2 if config.get("time_embedding_type") == "fourier" else 4
    return config.get("time_embedding_dim") or factor * config["block_out_channels"][0]


def check_fusion_wiring(unet: UNet2DConditionModel, fusion, fusion_projector: FusionProjector | None) -> None:
    """The fusion embedding's path into the UNet is complete and of one layout: a `projection`
    class embedding alone (format 1), or a fusion projector before an `identity` one."""
    kind = unet.config.class_embed_type
    if uses_fusion(unet) and fusion is None:
        raise InputError("the UNet has a class embedding for the fusion embedding, but the model has no fusion part")
    if kind == "identity" and fusion_projector is None:
        raise InputError("the UNet's class embedding is 'identity': the model needs a fusion_projector part to feed it")
    if fusion_projector is None:
        return
    if kind != "identity":
        raise InputError(
            f"the model has a fusion_projector part, which feeds an 'identity' class embedding; the UNet's is {kind!r}"
        )
    projector, width = fusion_projector.config, time_embedding_width(unet.config)
    if projector.out_dim != width:
        raise InputError(f"the fusion projector's out_dim {projector.out_dim} is not the UNet's time-embedding width {width}")
    if projector.in_dim != fusion.config.embed_dim:
        raise InputError(
            f"the fusion projector's in_dim {projector.in_dim} is not the fusion embedding's width {fusion.config.embed_dim}"
        )
