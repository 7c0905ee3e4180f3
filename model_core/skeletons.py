"""OpenPose skeleton images, the picture of a pose that the model is conditioned on.

The renderer reproduces the reference renderings FPDM was trained on (OpenPose's
`draw_bodypose`, drawn and saved with OpenCV): limbs land on the same pixels with the same widths
and colours. Only numpy and Pillow are used. Coordinates as in `keypoints`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .keypoints import Keypoints

# OpenPose's limbSeq, 0-based. The order matters: limb i is drawn in colour i, and later limbs
# are blended over earlier ones.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# OpenPose's 18-colour palette as its source lists it. That code hands these triples to OpenCV,
# which reads them as BGR, so the reference renderings show them channel-reversed (the neck-nose
# limb is red, the shoulders blue). We keep the colours as they appear in those images.
_OPENPOSE_PALETTE_AS_WRITTEN = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
JOINT_COLORS: tuple[tuple[int, int, int], ...] = tuple((blue, green, red) for red, green, blue in _OPENPOSE_PALETTE_AS_WRITTEN)
# One colour per limb: limb i takes palette colour i (the 18th colour is only used by a joint).
LIMB_COLORS: tuple[tuple[int, int, int], ...] = JOINT_COLORS[: len(LIMBS)]

# Limbs are blended over what is already drawn, so on black they show at 60 % brightness.
LIMB_OPACITY = 0.6

# The reference renderings are 750x1101 with limbs 8 px wide (OpenPose's stickwidth 4, the
# ellipse's half-width) and joint dots of radius 4. Other canvas sizes scale both with the
# picture, the same factor `Fit.between(750, 1101, w, h, "pad")` would apply to the person.
REFERENCE_CANVAS_SIZE = (750, 1101)
REFERENCE_LIMB_WIDTH = 8.0


# --------------------------------------------------------------------------------------------


def render_skeleton(
    keypoints: Keypoints,
    width: int | None = None,
    height: int | None = None,
    limb_width: float | None = None,
) -> Image.Image:
    """OpenPose-style skeleton on black: a dot per visible joint, then the 17 limbs as
    coloured ellipses blended over them.

    width/height: canvas size; if it differs from the keypoints' canvas they are fitted to it
    (pad). limb_width: full limb width in pixels; default 8 px on a 750x1101 canvas, scaled
    with the canvas. Joint dots have radius limb_width / 2.
    """
    if (width is None) != (height is None):
        raise ValueError("render_skeleton: give both width and height, or neither")
    if width is not None and (width, height) != (keypoints.width, keypoints.height):
        keypoints = keypoints.fitted(width, height, mode="pad")
    width, height = keypoints.width, keypoints.height
    if limb_width is None:
        reference_w, reference_h = REFERENCE_CANVAS_SIZE
        limb_width = REFERENCE_LIMB_WIDTH * min(width / reference_w, height / reference_h)
    if limb_width <= 0:
        raise ValueError(f"render_skeleton: limb_width must be positive, got {limb_width}")
    half_width = limb_width / 2

    points = keypoints.points[:, :2].astype(np.float64)
    visible = keypoints.visible

    # Joints first, at full colour; the limbs drawn next are blended over them, as in the reference.
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    joint_radius = round(half_width)  # whole pixels, like cv2.circle
    for joint in np.flatnonzero(visible):
        x, y = np.floor(points[joint])
        if joint_radius == 0:
            draw.point((x, y), fill=JOINT_COLORS[joint])
        else:
            box = (x - joint_radius, y - joint_radius, x + joint_radius, y + joint_radius)
            draw.ellipse(box, fill=JOINT_COLORS[joint])

    canvas = np.array(image, dtype=np.float32)
    for limb, (start, end) in enumerate(LIMBS):
        if not (visible[start] and visible[end]):
            continue
        polygon = _limb_polygon(points[start], points[end], half_width)
        mask_image = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_image).polygon(polygon, fill=255)
        mask = np.asarray(mask_image) > 0
        color = np.array(LIMB_COLORS[limb], dtype=np.float32)
        # Rounded per limb, as the reference's uint8 cv2.addWeighted did.
        canvas[mask] = np.round((1 - LIMB_OPACITY) * canvas[mask] + LIMB_OPACITY * color)
    return Image.fromarray(canvas.astype(np.uint8), "RGB")


def _limb_polygon(start: np.ndarray, end: np.ndarray, half_width: float) -> list[tuple[float, float]]:
    """Outline of the ellipse spanning start..end, one vertex per degree (cv2.ellipse2Poly)."""
    # The reference passed cv2.ellipse2Poly a whole-pixel centre, a whole-pixel half-length and a
    # whole-degree angle, each truncated. We truncate the same way: on a 9 px wide limb, the
    # exact angle alone moves a leg's tips by up to ~4 px and drops the overlap with the
    # reference renderings from ~0.96 to ~0.77 IoU.
    center_x, center_y = np.floor((start + end) / 2)
    delta_x, delta_y = start - end
    half_length = math.floor(math.hypot(delta_x, delta_y) / 2)
    angle = math.radians(math.trunc(math.degrees(math.atan2(delta_y, delta_x))))

    t = np.deg2rad(np.arange(0, 361))
    along = half_length * np.cos(t)
    across = half_width * np.sin(t)
    xs = center_x + along * math.cos(angle) - across * math.sin(angle)
    ys = center_y + along * math.sin(angle) + across * math.cos(angle)
    return list(zip(np.round(xs).tolist(), np.round(ys).tolist(), strict=True))
