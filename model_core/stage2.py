"""Stage 2: the conditional latent diffusion model's conditioning (FPDM.md, "Stage 2").

The denoiser is a stock diffusers `UNet2DConditionModel`; FPDM conditions it three ways:
1. fusion embedding -> the UNet's projection class embedding (added to the time embedding);
2. source patch tokens (frozen encoder) -> `SourceProjector` -> cross-attention context;
3. target skeleton -> `PoseEmbedding` (ControlNet-style) -> added to the output of `conv_in`.
`denoise` is the one place that wires the three into a UNet call, for training and sampling.
"""

from __future__ import annotations

import timm
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn


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

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(pixels)


class SourceProjector(ModelMixin, ConfigMixin):
    """Source tokens -> cross-attention context: Linear, GELU, Dropout, LayerNorm, Linear, Dropout."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, in_dim: int = 1024, hidden_dim: int = 768, out_dim: int = 1024, dropout: float = 0.1):
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
) -> torch.Tensor:
    """One UNet prediction with the pose residual added to conv_in's output.

    A forward hook adds the residual, so the UNet stays the stock diffusers class and loads
    any SD checkpoint unchanged. `fusion` is the class-embedding input; None for a
    stage-2-only UNet, which has no class embedding.
    """
    hook = unet.conv_in.register_forward_hook(lambda module, args, output: output + pose_residual.to(output.dtype))
    try:
        return unet(latents, timesteps, encoder_hidden_states=context, class_labels=fusion).sample
    finally:
        hook.remove()


def uses_fusion(unet: UNet2DConditionModel) -> bool:
    return unet.config.class_embed_type == "projection"
