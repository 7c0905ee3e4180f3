"""Stage-2 training augmentation: the four of the reference's dataset (src/diffusion/dataset.py,
`FPDM_Dataset.__getitem__` and `transforms`), applied to a training pair in the model's frame.

In the reference's order:
1. source = target for 5% of pairs: the model also learns to reproduce a photo in its own pose;
2. a low-resolution source for 50%: the source photo downsampled (the reference: to 256 px
   instead of 512) and scaled back, so the model does not rely on detail a catalog photo may lack;
3. keypoint jitter: Gaussian noise on every visible keypoint (sigma 1 px on the reference's
   550-px pose canvas), so the model tolerates a pose detector's error;
4. a horizontal flip for 50%: source, target and keypoints mirrored, left and right joints swapped.

Each is switched off by setting its probability (or sigma) to 0. Every draw comes from the
generator the caller passes, and the same draws are made whatever is switched off, so a seeded
run (and a resumed one) augments identically, and switching one augmentation off leaves the
others' draws unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .keypoints import LEFT_RIGHT_SWAP, Keypoints

# The reference draws jitter in pixels of a 375x550 pose canvas (dataset.py, `pose_size`).
REFERENCE_POSE_CANVAS_HEIGHT = 550


@dataclass(frozen=True)
class PairView:
    """One training pair in the model's frame: both photos fitted to it, the target's keypoints
    on its canvas."""

    source: Image.Image
    target: Image.Image
    keypoints: Keypoints


@dataclass(frozen=True)
class Augmentation:
    """Probabilities (and sizes) of the stage-2 augmentations; the defaults are the reference's."""

    source_as_target: float = 0.05
    low_resolution_source: float = 0.5
    low_resolution_scale: float = 0.5  # of the frame: 256 px of the reference's 512
    keypoint_jitter: float = 1 / REFERENCE_POSE_CANVAS_HEIGHT  # sigma, as a fraction of the frame height
    flip: float = 0.5

    @classmethod
    def off(cls) -> Augmentation:
        return cls(source_as_target=0, low_resolution_source=0, keypoint_jitter=0, flip=0)

    @property
    def is_off(self) -> bool:
        return not (self.source_as_target or self.low_resolution_source or self.keypoint_jitter or self.flip)

    def __post_init__(self):
        for name in ("source_as_target", "low_resolution_source", "flip"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Augmentation.{name} is a probability, got {getattr(self, name)}")
        if self.keypoint_jitter < 0 or not 0 < self.low_resolution_scale <= 1:
            raise ValueError("Augmentation: keypoint_jitter must be >= 0 and low_resolution_scale in (0, 1]")

    def apply(self, view: PairView, rng: np.random.Generator) -> PairView:
        same, low_resolution, flip = rng.random(3)
        noise = rng.standard_normal((len(view.keypoints.points), 2))
        source, target, keypoints = view.source, view.target, view.keypoints
        # The reference sets target = source or source = target, half each; pairs state only the
        # target's keypoints, so here the source becomes the target.
        if same < self.source_as_target:
            source = target
        if low_resolution < self.low_resolution_source:
            source = downsampled(source, self.low_resolution_scale)
        if self.keypoint_jitter:
            keypoints = jittered(keypoints, noise * self.keypoint_jitter * keypoints.height)
        if flip < self.flip:
            source, target, keypoints = ImageOps.mirror(source), ImageOps.mirror(target), mirrored(keypoints)
        return PairView(source, target, keypoints)


def downsampled(image: Image.Image, scale: float) -> Image.Image:
    """The image at `scale` of its size and back, bicubic as in the reference: same size, less detail."""
    small = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(small, Image.BICUBIC).resize(image.size, Image.BICUBIC)


def jittered(keypoints: Keypoints, offsets: np.ndarray) -> Keypoints:
    """Visible keypoints moved by `offsets` (pixels, one x, y row per keypoint), kept on the
    canvas; missing ones stay missing."""
    points = keypoints.points.copy()
    visible = keypoints.visible
    points[visible, :2] += offsets[visible].astype(np.float32)
    return _on_canvas(points, keypoints)


def mirrored(keypoints: Keypoints) -> Keypoints:
    """The pose in a mirror: x flipped on the canvas and each joint relabelled as the other side's
    (a mirrored right wrist is where a left wrist would be)."""
    points = keypoints.points.copy()
    visible = keypoints.visible
    points[visible, 0] = keypoints.width - points[visible, 0]
    return _on_canvas(points[list(LEFT_RIGHT_SWAP)], keypoints)


def _on_canvas(points: np.ndarray, keypoints: Keypoints) -> Keypoints:
    visible = points[:, 2] > 0
    # Pixel (i, j) covers [i, i + 1): the last position on the canvas is just under width (height).
    for axis, size in ((0, keypoints.width), (1, keypoints.height)):
        points[visible, axis] = np.clip(points[visible, axis], 0, np.nextafter(np.float32(size), np.float32(0)))
    return Keypoints(points, keypoints.width, keypoints.height)
