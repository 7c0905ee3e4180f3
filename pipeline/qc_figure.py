"""Where the person is, for QC: body regions drawn from keypoints, and the figure measured from
the picture itself.

The figure is what QC can still verify where the pose detector finds nobody (small or blurred
generated figures: at the demo's 64x48 MediaPipe misses most of them). Catalog photos, and the
synthetic ones, are shot on a light, even background, so every pixel that stands out from the
colour along the border is the figure: `model_core.evaluation.figure_mask`, the mask `fpdm eval`
measures figure IoU and pose accuracy with. Against the target pose that says whether a figure
stands where the pose puts it and has limbs where the pose has them; it cannot say which way the
person faces or which limb is which, which is what the detector adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from model_core.evaluation import figure_mask, pose_accuracy
from model_core.keypoints import Keypoints

# Body parts whose colours are the garment's (and the skin around it); the head is left out.
TORSO_CORNERS = (2, 5, 11, 8)  # right shoulder, left shoulder, left hip, right hip
BODY_LIMBS = (
    (1, 2), (1, 5), (1, 8), (1, 11), (2, 8), (5, 11),  # torso outline
    (2, 3), (3, 4), (5, 6), (6, 7),  # arms
    (8, 9), (9, 10), (11, 12), (12, 13),  # legs
)  # fmt: skip
HEAD_LIMBS = ((1, 0), (0, 14), (0, 15), (14, 16), (15, 17))  # neck to nose, eyes, ears
# Limb half-width as a share of the torso length (neck to mid-hip): an arm is about a fifth of
# the torso length thick. The torso scales with the person in any framing; the keypoints' box
# does not (on the shared full-body shots, strokes sized from it took in background along the
# arms).
LIMB_HALF_WIDTH_PER_TORSO = 0.09
# Without hips there is no torso length: a share of the keypoints' box diagonal instead.
LIMB_HALF_WIDTH_PER_DIAGONAL = 0.035
# How far from the target's skeleton (head included) figure pixels still count as the person
# the pose describes, in limb half-widths: hair, loose sleeves, a skirt and the blur of a 64 px
# picture reach a few half-widths past the bones.
REACH_HALF_WIDTHS = 4.0


@dataclass(frozen=True)
class FigureEvidence:
    """What the picture shows of a figure, against the target pose (all shares in [0, 1])."""

    even_border: float  # share of the border of the border's colour: the premise of the mask
    frame_share: float  # share of the frame that stands out from the background
    body_covered: float  # share of the target's torso-and-limbs region that the figure covers
    within_reach: float  # share of the figure within reach of the target's skeleton
    limbs_found: float  # share of the target's limb points with figure pixels nearby

    @property
    def score(self) -> float:
        """The weakest of the three signs that the figure is in the target pose."""
        return min(self.body_covered, self.within_reach, self.limbs_found)

    def describe(self) -> str:
        return (
            f"{_pct(self.frame_share)} of the frame differs from the background; it covers "
            f"{_pct(self.body_covered)} of the target pose's body region, {_pct(self.within_reach)} of the figure lies "
            f"within reach of the target skeleton, {_pct(self.limbs_found)} of the target's limb points have "
            f"figure pixels nearby"
        )


def measure_figure(pixels: np.ndarray, target: Keypoints) -> FigureEvidence:
    """The figure of `pixels` (uint8 RGB) against `target` (keypoints on the picture's canvas)."""
    figure = figure_mask(pixels)
    body = person_region(target, target.visible)
    reach = skeleton_region(target, REACH_HALF_WIDTHS * limb_half_width(target), BODY_LIMBS + HEAD_LIMBS)
    figure_pixels = int(figure.sum())
    return FigureEvidence(
        even_border=round(even_border(figure), 4),
        frame_share=round(float(figure.mean()), 4),
        body_covered=round(float(figure[body].mean()) if body.any() else 0.0, 4),
        within_reach=round(float((figure & reach).sum() / figure_pixels) if figure_pixels else 0.0, 4),
        limbs_found=round(pose_accuracy(figure, target), 4),
    )


def even_border(figure: np.ndarray) -> float:
    """Share of the frame's border that is background: the premise of the figure mask."""
    return 1.0 - float(np.concatenate([figure[0], figure[-1], figure[:, 0], figure[:, -1]]).mean())


def figure_core(pixels: np.ndarray, min_even_border: float, min_pixels: int) -> np.ndarray | None:
    """The figure's pixels one pixel in from its outline, whose colours blend with the
    background (more so in a small or blurred picture); None where no figure can be told from
    the background (an uneven border) or fewer than `min_pixels` remain. What QC compares the
    colours of when the source photo's pose cannot be found."""
    figure = figure_mask(pixels)
    if even_border(figure) < min_even_border:
        return None
    core = figure.copy()
    core[1:] &= figure[:-1]
    core[:-1] &= figure[1:]
    core[:, 1:] &= figure[:, :-1]
    core[:, :-1] &= figure[:, 1:]
    return core if int(core.sum()) >= min_pixels else None


def limb_half_width(keypoints: Keypoints) -> float:
    """Half a limb's thickness in pixels, from the torso's length (or the keypoints' box)."""
    points, visible = keypoints.points[:, :2], keypoints.visible
    hips = [joint for joint in (8, 11) if visible[joint]]
    if visible[1] and hips:
        half_width = LIMB_HALF_WIDTH_PER_TORSO * float(np.linalg.norm(points[1] - points[hips].mean(axis=0)))
    else:
        x0, y0, x1, y1 = keypoints.bbox() or (0, 0, 0, 0)
        half_width = LIMB_HALF_WIDTH_PER_DIAGONAL * float(np.hypot(x1 - x0, y1 - y0))
    return max(half_width, 1.0)


def person_region(keypoints: Keypoints, shared: np.ndarray) -> np.ndarray:
    """Boolean mask of torso, arms and legs, from the keypoints marked in `shared`."""
    return skeleton_region(keypoints, limb_half_width(keypoints), BODY_LIMBS, shared, fill_torso=True)


def skeleton_region(
    keypoints: Keypoints,
    half_width: float,
    limbs: tuple[tuple[int, int], ...],
    shared: np.ndarray | None = None,
    fill_torso: bool = False,
) -> np.ndarray:
    """Boolean mask of the `limbs` drawn `half_width` thick between keypoints marked in `shared`
    (default: the visible ones), the torso's quadrilateral filled if asked."""
    points = keypoints.points[:, :2]
    shared = keypoints.visible if shared is None else shared
    mask = Image.new("L", (keypoints.width, keypoints.height), 0)
    draw = ImageDraw.Draw(mask)
    if fill_torso and shared[list(TORSO_CORNERS)].all():
        draw.polygon([tuple(points[joint]) for joint in TORSO_CORNERS], fill=255)
    for start, end in limbs:
        if shared[start] and shared[end]:
            draw.line([tuple(points[start]), tuple(points[end])], fill=255, width=round(2 * half_width))
            for x, y in (points[start], points[end]):  # round joints, no gaps at the elbows
                draw.ellipse([x - half_width, y - half_width, x + half_width, y + half_width], fill=255)
    return np.asarray(mask) > 0


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"
