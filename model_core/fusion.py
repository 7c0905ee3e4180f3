"""Stage 1: the fusion embedding (FPDM.md, "Stage 1").

One open_clip image encoder embeds both the source photo and the target skeleton (shared
weights); the Combiner of CLIP4Cir fuses the two embeddings into one L2-normalised vector
that is trained, with InfoNCE, to match the CLIP embedding of the target photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import _build_vision_tower
from torch import nn


class Combiner(nn.Module):
    """The Image-Pose Fusion module: a gated mix of a learned combination and the two inputs."""

    def __init__(self, embed_dim: int, projection_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.pose_projection = nn.Linear(embed_dim, projection_dim)
        self.source_projection = nn.Linear(embed_dim, projection_dim)
        self.combiner_layer = nn.Linear(2 * projection_dim, hidden_dim)
        self.output_layer = nn.Linear(hidden_dim, embed_dim)
        self.gate = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1), nn.Sigmoid()
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, source: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        projected_pose = self.dropout(F.relu(self.pose_projection(pose)))
        projected_source = self.dropout(F.relu(self.source_projection(source)))
        combined = torch.cat([projected_pose, projected_source], dim=-1)
        hidden = self.dropout(F.relu(self.combiner_layer(combined)))
        gate = self.gate(combined)
        fused = self.output_layer(hidden) + gate * pose + (1 - gate) * source
        return F.normalize(fused, dim=-1)


class FusionModel(ModelMixin, ConfigMixin):
    """open_clip vision tower (shared by photos and skeletons) + Combiner."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        embed_dim: int = 768,
        vision_cfg: dict | None = None,
        quick_gelu: bool = False,
        projection_dim: int = 768,
        hidden_dim: int = 768,
        dropout: float = 0.5,
        image_mean: tuple[float, ...] = OPENAI_DATASET_MEAN,
        image_std: tuple[float, ...] = OPENAI_DATASET_STD,
        clip_weights: str | None = None,
        quick_gelu_evidence: str | None = None,
    ):
        """clip_weights: file name of the pretrained CLIP checkpoint the image encoder was
        loaded from (set by `assemble`), None for a random initialisation. It is provenance
        only, kept in config.json: QC trusts CLIP similarities only from a pretrained encoder,
        and the weights file alone cannot tell a trained encoder from a random one.
        quick_gelu_evidence: how `assemble` decided `quick_gelu` (the activation the CLIP
        weights were trained with), also provenance only."""
        super().__init__()
        vision_cfg = dict(vision_cfg or {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14})
        self.image_encoder = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
        self.combiner = Combiner(embed_dim, projection_dim, hidden_dim, dropout)

    @property
    def image_size(self) -> int:
        size = self.config.vision_cfg.get("image_size", 224)
        return size if isinstance(size, int) else size[0]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (projected, not normalised) of normalised square pixels."""
        return self.image_encoder(pixels)

    def fuse(self, source_embedding: torch.Tensor, pose_embedding: torch.Tensor) -> torch.Tensor:
        return self.combiner(source_embedding, pose_embedding)

    def forward(self, source_pixels: torch.Tensor, pose_pixels: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.embed(source_pixels), self.embed(pose_pixels))


@dataclass
class FusionLoss:
    loss: torch.Tensor
    top1: float
    top5: float


def fusion_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    fused: torch.Tensor,
    temperature: float = 0.07,
    l1_weight: float = 1e-4,
    source_enhanced: bool = True,
) -> FusionLoss:
    """InfoNCE between target embeddings and fused embeddings, FPDM's source-enhanced variant.

    Row i of the similarity matrix is target i against every fused embedding in the batch;
    its positive is fused i. Source-enhanced extends the batch with (source, source) rows, so
    each source's own embedding is an extra positive for itself, and adds an L1 pull of the
    fused embedding towards the source embedding.
    """
    pairs = len(target)
    l1 = (source - fused).abs().mean()  # over the real pairs, as FPDM.md states it
    if source_enhanced:
        target = torch.cat([target, source])
        fused = torch.cat([fused, source])
    similarity = F.cosine_similarity(target[:, None, :], fused[None, :, :], dim=-1) / temperature
    labels = torch.arange(len(similarity), device=similarity.device)
    loss = F.cross_entropy(similarity, labels) + l1_weight * l1
    # Accuracy over the real pairs only: the source-enhanced rows retrieve themselves trivially.
    top1, top5 = retrieval_accuracy(similarity.detach()[:pairs])
    return FusionLoss(loss, top1, top5)


def retrieval_accuracy(similarity: torch.Tensor) -> tuple[float, float]:
    """Top-1 / top-5 accuracy of retrieving the diagonal (the positive) in each row; rows may
    be fewer than columns (queries against a larger candidate set)."""
    positive = similarity.diagonal()[:, None]
    rank = (similarity > positive).sum(dim=1)  # how many candidates beat the positive
    return (rank < 1).float().mean().item(), (rank < 5).float().mean().item()
