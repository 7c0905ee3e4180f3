"""Rendering of the synthetic catalog by a small z-buffer renderer: limbs as tapered round
capsules, the torso, pelvis and skirt as elliptic tubes, the head as an ellipsoid; every sample
keeps the nearest surface (so whatever is behind the body is hidden), shaded by how much it
faces the camera, drawn 4x4 supersampled.

Keypoints are the joints projected onto the picture; a limb joint is visible when its own limb
shows at that spot (an arm hidden behind the torso has its elbow and wrist marked missing), a
face point when the head shows there and the point faces the camera, a trunk joint (neck,
shoulders, hips) wherever the body is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from model_core.keypoints import COCO18_NAMES, NUM_KEYPOINTS, Keypoints
from synthetic.people import BACKGROUND, Colour, Garment, Person
from synthetic.skeletons import HEAD_HEIGHT, HEAD_RADIUS, THIGH, UPPER_ARM, Pose, Skeleton, build_skeleton, rot_y

# Height x width of the pictures. 64x48 is the resolution of the `tiny` and `demo` models, so
# training and evaluation use the pixels as drawn (no resampling); at that size a torso is
# about 13 px wide, enough for 2-3 px stripes, checks and dots.
DEFAULT_SIZE = (64, 48)

# Values of the part masks (masks/<name>.png, mode L): 0 is the background, anything above
# is the person, TOP and BOTTOMS are the garment.
MASK_CLASSES = {"background": 0, "skin": 1, "hair": 2, "top": 3, "bottoms": 4, "shoes": 5}
SKIN, HAIR, TOP, BOTTOMS, SHOES = (MASK_CLASSES[name] for name in ("skin", "hair", "top", "bottoms", "shoes"))

KP = {name: index for index, name in enumerate(COCO18_NAMES)}

# Pictures are drawn in output pixels (x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1))
# on a grid of SUPERSAMPLE x SUPERSAMPLE samples per pixel, each keeping the nearest surface
# (largest depth, in pixels toward the camera), then averaged down.

SUPERSAMPLE = 4
SHADE_MIN = 0.8  # brightness of a surface seen edge-on; 1 where it faces the camera


class Material:
    """Colour and mask class of a surface at texture coordinates u (across, body units) and
    v (along, body units from the part's start)."""

    def __init__(self, colour: Colour, mask_class: int):
        self.colour, self.mask_class = colour, mask_class

    def paint(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.broadcast_to(np.asarray(self.colour, np.float64), u.shape + (3,))
        return rgb, np.full(u.shape, self.mask_class, np.uint8)


class GarmentTexture(Material):
    """A top's fabric: solid, stripes (across the body or the sleeve), checks, dots, or solid
    with a logo patch on the chest (torso only: `chest` marks the torso's material)."""

    def __init__(self, garment: Garment, chest: bool = False):
        super().__init__(garment.colours[0], TOP)
        self.garment, self.chest = garment, chest

    def paint(self, u, v):
        rgb, classes = super().paint(u, v)
        main, pattern = (np.asarray(c, np.float64) for c in self.garment.colours)
        size, kind = self.garment.pattern_size, self.garment.texture
        if kind == "stripes":
            on = np.floor(v / (size / 2)) % 2 == 1
        elif kind == "checks":
            on = (np.floor(u / (size / 2)) + np.floor(v / (size / 2))) % 2 == 1
        elif kind == "dots":  # a staggered grid of dots
            row = np.floor(v / size)
            du = (u + (row % 2) * size / 2) % size - size / 2
            dv = v % size - size / 2
            on = du**2 + dv**2 < (0.24 * size) ** 2
        elif kind == "logo" and self.chest:  # a patch on the left chest, under the collar
            on = (np.abs(u - 0.3 * size) < 0.55 * size) & (v > 0.045) & (v < 0.045 + 0.9 * size)
        else:
            on = np.zeros(u.shape, bool)
        return np.where(on[..., None], pattern, main), classes


class Covered(Material):
    """Garment up to `length` along the part, `rest` beyond (a sleeve, shorts)."""

    def __init__(self, garment_part: Material, length: float, rest: Material):
        super().__init__(garment_part.colour, garment_part.mask_class)
        self.garment_part, self.length, self.rest = garment_part, length, rest

    def paint(self, u, v):
        inner_rgb, inner_class = self.garment_part.paint(u, v)
        outer_rgb, outer_class = self.rest.paint(u, v)
        covered = v < self.length
        return np.where(covered[..., None], inner_rgb, outer_rgb), np.where(covered, inner_class, outer_class)


class Head(Material):
    """Skin with hair on top (and down the back for long hair), from the surface normal in
    the head's own frame (the paint call passes it as u = (x, y, z))."""

    def __init__(self, person: Person):
        super().__init__(person.skin, SKIN)
        self.person = person

    def paint(self, u, v):
        x, y, z = u
        hairline = -0.32 + 0.5 * np.clip(-z, 0, 1) + (0.45 if self.person.hair_style == "long" else 0.25) * (z < -0.2)
        hair = (y < hairline) | ((z < -0.45) & (y < (1.0 if self.person.hair_style == "long" else 0.55)))
        hair |= (y < -0.05) & (np.abs(x) > 0.88)  # over the temples
        rgb = np.where(hair[..., None], np.asarray(self.person.hair, np.float64), np.asarray(self.person.skin, np.float64))
        return rgb, np.where(hair, HAIR, SKIN).astype(np.uint8)


@dataclass
class View:
    """Camera: the body turned by `yaw`, scaled by `scale` pixels per body unit, its origin at
    `origin` (pixels)."""

    yaw: float
    scale: float
    origin: tuple[float, float]

    def project(self, point: np.ndarray) -> np.ndarray:
        """x, y in pixels and depth (pixels toward the camera) of a body-frame point."""
        x, y, z = rot_y(self.yaw) @ point
        return np.array([self.origin[0] + self.scale * x, self.origin[1] + self.scale * y, self.scale * z])


class Canvas:
    """The supersampled picture being drawn: colour, depth, mask class and part of every sample."""

    def __init__(self, height: int, width: int, supersample: int = SUPERSAMPLE):
        self.height, self.width, self.ss = height, width, supersample
        shape = (height * supersample, width * supersample)
        self.rgb = np.empty(shape + (3,), np.float64)
        self.rgb[:] = BACKGROUND
        self.depth = np.full(shape, -np.inf)
        self.mask = np.zeros(shape, np.uint8)
        self.part = np.full(shape, -1, np.int16)
        self.parts: list[tuple[str, frozenset[int]]] = []  # name, keypoints the part carries

    def samples(self, x0: float, y0: float, x1: float, y1: float):
        """Sample positions (pixels) inside a box, and the slices of the arrays they fill."""
        ss = self.ss
        cols = slice(max(0, math.floor(x0 * ss)), min(self.width * ss, math.ceil(x1 * ss) + 1))
        rows = slice(max(0, math.floor(y0 * ss)), min(self.height * ss, math.ceil(y1 * ss) + 1))
        xs = (np.arange(cols.start, max(cols.start, cols.stop)) + 0.5) / ss
        ys = (np.arange(rows.start, max(rows.start, rows.stop)) + 0.5) / ss
        x, y = np.meshgrid(xs, ys)
        return x, y, (rows, cols)

    def put(self, region, name: str, carries, inside, depth, shade, rgb, classes) -> int:
        """Keep the part's samples that are nearer than what is there; return its index."""
        index = len(self.parts)
        self.parts.append((name, frozenset(KP[k] for k in carries)))
        nearer = inside & (depth > self.depth[region])
        self.depth[region] = np.where(nearer, depth, self.depth[region])
        shaded = rgb * (SHADE_MIN + (1 - SHADE_MIN) * np.clip(shade, 0, 1))[..., None]
        self.rgb[region] = np.where(nearer[..., None], shaded, self.rgb[region])
        self.mask[region] = np.where(nearer, classes, self.mask[region])
        self.part[region] = np.where(nearer, index, self.part[region])
        return index

    def pictures(self) -> tuple[Image.Image, Image.Image]:
        """The picture (RGB, box-filtered) and its mask (L: per pixel the commonest class)."""
        h, w, ss = self.height, self.width, self.ss
        rgb = self.rgb.reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        image = Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), "RGB")
        votes = np.stack([(self.mask == c).reshape(h, ss, w, ss).sum(axis=(1, 3)) for c in range(len(MASK_CLASSES))])
        mask = Image.fromarray(votes.argmax(axis=0).astype(np.uint8), "L")
        return image, mask


def draw_capsule(canvas: Canvas, view: View, name: str, carries, a, b, radii, material: Material) -> int:
    """A limb: a round stroke from body point a to b, its radius tapering from radii[0] to
    radii[1] (body units), with round ends. `carries`: the keypoints it shows. Returns the
    part's index."""
    (ax, ay, az), (bx, by, bz) = view.project(a), view.project(b)
    ra, rb = (view.scale * r for r in radii)
    reach = max(ra, rb)
    x, y, region = canvas.samples(min(ax, bx) - reach, min(ay, by) - reach, max(ax, bx) + reach, max(ay, by) + reach)
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / length2, 0, 1) if length2 > 1e-9 else np.zeros_like(x)
    off_x, off_y = x - (ax + t * dx), y - (ay + t * dy)
    distance = np.hypot(off_x, off_y)
    radius = ra + t * (rb - ra)
    inside = distance <= radius
    facing = np.sqrt(np.clip(1 - (distance / radius) ** 2, 0, 1))
    depth = az + t * (bz - az) + radius * facing
    across = np.sign(off_x * dy - off_y * dx) * distance / view.scale
    along = t * float(np.linalg.norm(np.subtract(b, a)))
    rgb, classes = material.paint(across, along)
    return canvas.put(region, name, carries, inside, depth, facing, rgb, classes)


def draw_tube(canvas: Canvas, view: View, name: str, carries, top, bottom, knots, twists, material: Material) -> int:
    """A body section: an elliptic tube along top -> bottom (body points), its cross-section
    half-width W (along the body's x) and half-depth D (along z) given at knots (t, W, D),
    t = 0 at top and 1 at bottom (knots may reach beyond), turned by twists[0] at the top
    and twists[1] at the bottom on top of the view's yaw."""
    (tx, ty, tz), (bx, by, bz) = view.project(top), view.project(bottom)
    ts, ws, ds = (np.array(values, np.float64) for values in zip(*knots, strict=True))
    dx, dy = bx - tx, by - ty
    length = math.hypot(dx, dy)
    reach = view.scale * float(np.hypot(ws, ds).max())
    ends = [(tx + t * dx, ty + t * dy) for t in (ts[0], ts[-1])]
    xs, ys = [e[0] for e in ends], [e[1] for e in ends]
    x, y, region = canvas.samples(min(xs) - reach, min(ys) - reach, max(xs) + reach, max(ys) + reach)
    t = ((x - tx) * dx + (y - ty) * dy) / (length * length)
    across = ((x - tx) * dy - (y - ty) * dx) / length / view.scale  # body units, + to the picture's right
    half_w, half_d = np.interp(t, ts, ws), np.interp(t, ts, ds)
    turn = view.yaw + twists[0] + np.clip(t, 0, 1) * (twists[1] - twists[0])
    extent = np.hypot(half_w * np.cos(turn), half_d * np.sin(turn))
    inside = (t >= ts[0]) & (t <= ts[-1]) & (np.abs(across) <= extent)
    # The surface point at this offset: angle phi on the cross-section (pi/2 = the front
    # centre), the solution nearer the camera.
    alpha = np.arctan2(half_d * np.sin(turn), half_w * np.cos(turn))
    spread = np.arccos(np.clip(across / np.maximum(extent, 1e-9), -1, 1))
    best_phi, best_z = None, None
    for phi in (alpha + spread, alpha - spread):
        z = -half_w * np.sin(turn) * np.cos(phi) + half_d * np.cos(turn) * np.sin(phi)
        if best_z is None:
            best_phi, best_z = phi, z
        else:
            best_phi, best_z = np.where(z > best_z, phi, best_phi), np.maximum(z, best_z)
    depth = tz + t * (bz - tz) + view.scale * best_z
    facing = best_z / np.maximum(np.hypot(half_w * np.sin(turn), half_d * np.cos(turn)), 1e-9)
    around = (np.pi / 2 - best_phi + np.pi) % (2 * np.pi) - np.pi  # from the front centre, + to the person's left
    u = around * (half_w + half_d) / 2
    v = t * float(np.linalg.norm(np.subtract(bottom, top)))
    rgb, classes = material.paint(u, v)
    return canvas.put(region, name, carries, inside, depth, facing, rgb, classes)


def draw_head(canvas: Canvas, view: View, centre, head_yaw: float, person: Person) -> int:
    """The head: an ellipsoid, skin and hair by the surface's direction in the head's frame."""
    cx, cy, cz = view.project(centre)
    rx, ry = view.scale * HEAD_RADIUS, view.scale * HEAD_HEIGHT
    x, y, region = canvas.samples(cx - rx, cy - ry, cx + rx, cy + ry)
    nx, ny = (x - cx) / rx, (y - cy) / ry
    inside = nx**2 + ny**2 <= 1
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
    turn = view.yaw + head_yaw  # back into the head's frame
    hx = nx * math.cos(turn) - nz * math.sin(turn)
    hz = nx * math.sin(turn) + nz * math.cos(turn)
    rgb, classes = Head(person).paint((hx, ny, hz), None)
    face = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")
    return canvas.put(region, "head", face, inside, cz + rx * nz, nz, rgb, classes)


def draw_eyes(canvas: Canvas, view: View, skeleton: Skeleton, person: Person, head_part: int) -> None:
    """Dark dots on the head where the eyes face the camera."""
    colour = np.asarray(person.hair, np.float64) * 0.5
    for eye in ("right_eye", "left_eye"):
        if _facing(view, skeleton, eye) < 0.25:
            continue
        ex, ey, _ = view.project(skeleton.joints[eye])
        radius = max(0.35, view.scale * 0.0085)
        x, y, region = canvas.samples(ex - radius, ey - radius, ex + radius, ey + radius)
        dot = ((x - ex) ** 2 + (y - ey) ** 2 <= radius**2) & (canvas.part[region] == head_part)
        canvas.rgb[region] = np.where(dot[..., None], colour, canvas.rgb[region])


# Outward directions of the face keypoints in the head's frame.
_FACE_NORMALS = {
    "nose": (0.0, 0.0, 1.0),
    "right_eye": (-0.35, -0.1, 0.93),
    "left_eye": (0.35, -0.1, 0.93),
    "right_ear": (-1.0, 0.0, 0.0),
    "left_ear": (1.0, 0.0, 0.0),
}
# How much a face point must face the camera to be seen (the cosine of its normal with the
# view direction): a nose shows in profile, an eye not once it turns away, ears until the
# head hides them.
_FACE_THRESHOLDS = {"nose": -0.1, "right_eye": 0.15, "left_eye": 0.15, "right_ear": -0.3, "left_ear": -0.3}


def _facing(view: View, skeleton: Skeleton, name: str) -> float:
    """Cosine between a face point's outward normal and the direction to the camera."""
    normal = rot_y(view.yaw + skeleton.head_yaw) @ np.array(_FACE_NORMALS[name])
    return float(normal[2] / np.linalg.norm(normal))


@dataclass
class Figure:
    """A rendered person: the picture, its coco18 keypoints (joints hidden by the body are
    missing), the part mask (MASK_CLASSES) and where every joint projects, hidden or not."""

    image: Image.Image
    keypoints: Keypoints
    mask: Image.Image
    projected: np.ndarray  # (18, 2) pixels, every joint
    hidden: tuple[str, ...] = field(default=())  # joints on the picture but hidden by the body


def render_figure(person: Person, garment: Garment, pose: Pose, size: tuple[int, int] = DEFAULT_SIZE) -> Figure:
    """Draw `person` wearing `garment` in `pose` on a height x width picture."""
    height, width = size
    skeleton = build_skeleton(person, pose)
    view = place_on_canvas(skeleton, pose, size, person)
    canvas = Canvas(height, width, SUPERSAMPLE if height <= 160 else 2)
    joints = skeleton.joints
    limb = person.limb_scale
    skin = Material(person.skin, SKIN)
    top = GarmentTexture(garment)
    bottoms = Material(garment.bottoms_colour, BOTTOMS)
    sleeve = 0.5 * UPPER_ARM if garment.sleeves == "short" else 1.0
    twist = pose.twist

    if person.hair_style == "long":  # hair falling behind the neck, down to the shoulders
        behind = rot_y(twist) @ np.array([0.0, 0.0, -0.022])
        draw_tube(
            canvas,
            view,
            "long hair",
            (),
            joints["head"] + behind,
            joints["neck"] + behind + [0, 0.07, 0],
            [(0.0, 0.05, 0.02), (1.0, 0.056, 0.02)],
            (twist, twist),
            Material(person.hair, HAIR),
        )
    for prefix in ("right", "left"):
        shoulder, elbow, wrist = (joints[f"{prefix}_{j}"] for j in ("shoulder", "elbow", "wrist"))
        hip, knee, ankle = (joints[f"{prefix}_{j}"] for j in ("hip", "knee", "ankle"))
        draw_capsule(
            canvas,
            view,
            f"{prefix} upper arm",
            (f"{prefix}_shoulder", f"{prefix}_elbow"),
            shoulder,
            elbow,
            (0.029 * limb, 0.025 * limb),
            Covered(top, sleeve, skin),
        )
        draw_capsule(
            canvas,
            view,
            f"{prefix} forearm",
            (f"{prefix}_elbow", f"{prefix}_wrist"),
            elbow,
            wrist,
            (0.025 * limb, 0.02 * limb),
            Covered(top, sleeve - UPPER_ARM, skin),
        )
        draw_capsule(
            canvas,
            view,
            f"{prefix} hand",
            (f"{prefix}_wrist",),
            wrist,
            joints[f"{prefix}_hand"],
            (0.02 * limb, 0.018 * limb),
            skin,
        )
        thigh_cover = {"trousers": 1.0, "shorts": 0.5 * THIGH, "skirt": 0.0}[garment.bottoms]
        draw_capsule(
            canvas,
            view,
            f"{prefix} thigh",
            (f"{prefix}_hip", f"{prefix}_knee"),
            hip,
            knee,
            (0.047 * limb, 0.036 * limb),
            Covered(bottoms, thigh_cover, skin),
        )
        draw_capsule(
            canvas,
            view,
            f"{prefix} shin",
            (f"{prefix}_knee", f"{prefix}_ankle"),
            knee,
            ankle,
            (0.035 * limb, 0.026 * limb),
            Covered(bottoms, 1.0 if garment.bottoms == "trousers" else 0.0, skin),
        )
        draw_capsule(
            canvas,
            view,
            f"{prefix} foot",
            (f"{prefix}_ankle",),
            ankle,
            joints[f"{prefix}_toe"],
            (0.026, 0.022),
            Material(person.shoes, SHOES),
        )

    neck, mid_hip = joints["neck"], joints["mid_hip"]
    # The top: rounded shoulders, a little narrower at the waist, its hem over the bottoms.
    shoulder_w = person.shoulder_width + 0.014
    hem_w = person.hip_width + 0.046
    draw_tube(
        canvas,
        view,
        "torso",
        ("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"),
        neck,
        mid_hip,
        [
            (-0.09, 0.62 * shoulder_w, 0.045),
            (-0.03, 0.92 * shoulder_w, 0.06),
            (0.02, shoulder_w, 0.068),
            (0.35, 0.94 * shoulder_w, 0.076),
            (0.75, max(0.8 * shoulder_w, hem_w - 0.012), 0.07),
            (1.08, hem_w, 0.084),
        ],
        (twist, -twist / 2),
        GarmentTexture(garment, chest=True),
    )
    waist = mid_hip + np.array([0.0, -0.02, 0.0])
    if garment.bottoms == "skirt":
        hem = mid_hip + np.array([0.0, 0.8 * THIGH, 0.0])
        draw_tube(
            canvas,
            view,
            "skirt",
            ("right_hip", "left_hip"),
            waist,
            hem,
            [(0.0, person.hip_width + 0.04, 0.07), (1.0, person.hip_width + 0.1, 0.11)],
            (-twist / 2, -twist / 2),
            bottoms,
        )
    else:
        crotch = mid_hip + np.array([0.0, 0.075, 0.0])
        draw_tube(
            canvas,
            view,
            "pelvis",
            ("right_hip", "left_hip"),
            waist,
            crotch,
            [(0.0, person.hip_width + 0.038, 0.066), (1.0, person.hip_width + 0.01, 0.05)],
            (-twist / 2, -twist / 2),
            bottoms,
        )
    draw_capsule(canvas, view, "neck", ("neck",), neck, joints["head"], (0.024, 0.022), skin)
    head = draw_head(canvas, view, joints["head"], skeleton.head_yaw, person)
    draw_eyes(canvas, view, skeleton, person, head_part=head)

    image, mask = canvas.pictures()
    projected = np.array([view.project(joints[name])[:2] for name in COCO18_NAMES])
    points = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    hidden = []
    for index, name in enumerate(COCO18_NAMES):
        x, y = projected[index]
        if not (0 <= x < width and 0 <= y < height):
            continue
        if _shows(canvas, index, x, y) and (name not in _FACE_NORMALS or _facing(view, skeleton, name) > _FACE_THRESHOLDS[name]):
            points[index] = (round(x, 2), round(y, 2), 1.0)
        else:
            hidden.append(name)
    return Figure(image, Keypoints(points, width, height), mask, projected, tuple(hidden))


# Joints of the trunk: a detector places them from the trunk's outline, so they count as seen
# even behind an arm (or, in profile, the far shoulder behind the trunk itself), and the
# skeleton keeps its neck, which every limb hangs from.
_TRUNK_JOINTS = frozenset(KP[name] for name in ("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"))


def _shows(canvas: Canvas, keypoint: int, x: float, y: float) -> bool:
    """Whether the keypoint is seen at (x, y), within half a pixel: a part that carries it is
    on top there (a trunk joint: any part of the body)."""
    ss = canvas.ss
    col, row = int(x * ss), int(y * ss)
    reach = ss // 2
    window = canvas.part[max(0, row - reach) : row + reach + 1, max(0, col - reach) : col + reach + 1]
    parts = [part for part in np.unique(window) if part >= 0]
    if keypoint in _TRUNK_JOINTS:
        return bool(parts)
    return any(keypoint in canvas.parts[part][1] for part in parts)


def place_on_canvas(skeleton: Skeleton, pose: Pose, size: tuple[int, int], person: Person) -> View:
    """The view that stands the figure on the picture's ground line, `person.height` of the
    picture tall, near the middle; a figure that would not fit (raised arms, a wide stance on
    a narrow picture) is made smaller."""
    height, width = size
    turn = rot_y(pose.yaw)
    points = np.array([turn @ p for p in skeleton.joints.values()])
    head = turn @ skeleton.joints["head"]
    points = np.vstack([points, head + [0, -HEAD_HEIGHT, 0]])
    pad = 0.05  # limb thickness, hair, shoes
    x_min, x_max = points[:, 0].min() - pad, points[:, 0].max() + pad
    y_min = points[:, 1].min() - pad
    margin = max(1.0, 0.02 * height)
    ground = height * (1 - (1 - person.height) / 2 + pose.shift[1])  # soles (y = 1) land here
    scale = person.height * height
    scale = min(scale, (ground - margin) / (1.0 - y_min), (width - 2 * margin) / (x_max - x_min))
    centre = (turn @ skeleton.joints["mid_hip"])[0]
    origin_x = width * (0.5 + pose.shift[0]) - scale * centre
    # Slide sideways to keep the figure on the picture.
    origin_x = min(max(origin_x, margin - scale * x_min), width - margin - scale * x_max)
    return View(yaw=pose.yaw, scale=scale, origin=(origin_x, ground - scale * 1.0))
