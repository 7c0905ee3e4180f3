"""A synthetic fashion catalog: person-like figures in textured garments, posed from COCO-18
keypoints, with every target known. `fpdm synth` writes one; the demo model trains on it and
`fpdm eval` measures pose transfer on it.

Each person wears one outfit (a top and bottoms) and is photographed in several poses on a
light catalog background. A figure is built in 3-D and drawn by a small z-buffer renderer:

    people and garments   build, skin, hair; a top with a texture (solid, stripes, checks, dots,
                          a logo patch on the chest) and sleeves, bottoms (trousers, shorts,
                          skirt); colours from (seed, person index), so seeds never share one
    poses                 a standing skeleton bent by plausible joint angles (standing,
                          walking, hands on hips, arms up, reaching, arms folded), seen from
                          the front, the side (narrow shoulders, far arm behind the body) or
                          the back (no face; arms in front of the body hidden by it)
    rendering             limbs as tapered round capsules, the torso, pelvis and skirt as
                          elliptic tubes, the head as an ellipsoid; every sample keeps the
                          nearest surface (so whatever is behind the body is hidden), shaded
                          by how much it faces the camera, drawn 4x4 supersampled
    keypoints             the joints projected onto the picture; a limb joint is visible when
                          its own limb shows at that spot (an arm hidden behind the torso has
                          its elbow and wrist marked missing), a face point when the head
                          shows there and the point faces the camera, a trunk joint (neck,
                          shoulders, hips) wherever the body is
    writing a dataset     images, coco18 keypoint files, part masks, a pairs CSV and the
                          description of every person, garment and view

Keypoints are labelled anatomically, as COCO does: seen from the back, the person's right
shoulder is on the picture's right. Everything is deterministic: the same arguments give
byte-identical files. Only numpy and Pillow are used.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from model_core.errors import InputError
from model_core.keypoints import COCO18_NAMES, NUM_KEYPOINTS, Keypoints

# Height x width of the pictures. 64x48 is the resolution of the `tiny` and `demo` models, so
# training and evaluation use the pixels as drawn (no resampling); at that size a torso is
# about 13 px wide, enough for 2-3 px stripes, checks and dots.
DEFAULT_SIZE = (64, 48)
MIN_SIZE = (32, 24)
POSES_PER_PERSON = 4  # pairs: every ordered pair of a person's poses, 4 x 3 = 12 per person

BACKGROUND = (242, 240, 235)  # light, even catalog background

# Values of the part masks (masks/<name>.png, mode L): 0 is the background, anything above
# is the person, TOP and BOTTOMS are the garment.
MASK_CLASSES = {"background": 0, "skin": 1, "hair": 2, "top": 3, "bottoms": 4, "shoes": 5}
SKIN, HAIR, TOP, BOTTOMS, SHOES = (MASK_CLASSES[name] for name in ("skin", "hair", "top", "bottoms", "shoes"))

TEXTURES = ("solid", "stripes", "checks", "dots", "logo")
BOTTOMS_KINDS = ("trousers", "shorts", "skirt")
SLEEVES = ("short", "long")
VIEWS = ("front", "side", "back")
VIEW_WEIGHTS = (0.5, 0.3, 0.2)
POSE_FAMILIES = ("stand", "walk", "hands_on_hips", "arms_up", "reach", "arms_folded")
POSE_FAMILY_WEIGHTS = (0.28, 0.26, 0.14, 0.12, 0.1, 0.1)

RIGHT, LEFT = -1, 1  # the side of a joint along the body's x axis (x points to the person's left)
KP = {name: index for index, name in enumerate(COCO18_NAMES)}

# RNG streams of a person index: independent of each other and of how many poses are drawn.
_PERSON_STREAM, _GARMENT_STREAM, _POSE_STREAM = 0, 1, 2

Colour = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# People and garments
# --------------------------------------------------------------------------------------------

SKIN_TONES: tuple[Colour, ...] = (
    (247, 214, 186), (234, 192, 160), (214, 168, 130), (188, 140, 100), (150, 104, 72), (108, 72, 50),
)
HAIR_COLOURS: tuple[Colour, ...] = (
    (28, 24, 22), (58, 40, 28), (96, 64, 40), (150, 110, 62), (196, 160, 96), (120, 50, 30), (150, 150, 150),
)
SHOE_COLOURS: tuple[Colour, ...] = ((30, 30, 32), (70, 45, 30), (120, 90, 60), (60, 60, 70), (150, 30, 40))
BOTTOMS_COLOURS: tuple[Colour, ...] = (
    (58, 80, 122), (34, 34, 40), (168, 148, 108), (108, 108, 114), (40, 50, 82), (88, 94, 58), (110, 36, 52),
)


@dataclass(frozen=True)
class Person:
    """One model: build and looks, the same in all of their photos (body units: the standing
    figure is about 1 tall)."""

    id: str
    skin: Colour
    hair: Colour
    hair_style: str  # short or long
    shoes: Colour
    shoulder_width: float  # half the distance between the shoulder joints
    hip_width: float  # half the distance between the hip joints
    limb_scale: float  # thickness of arms and legs
    height: float  # share of the picture's height the standing figure takes


@dataclass(frozen=True)
class Garment:
    """The outfit a person wears in all of their photos; `id` is unique across seeds."""

    id: str
    texture: str  # one of TEXTURES
    colours: tuple[Colour, Colour]  # main colour, pattern colour (stripes, checks, dots, logo)
    pattern_size: float  # period of stripes, checks and dots; size of the logo (body units)
    sleeves: str  # short or long
    bottoms: str  # trousers, shorts or skirt
    bottoms_colour: Colour

    def describe(self) -> dict:
        return {
            "garment": self.id,
            "texture": self.texture,
            "top_colour": hex_colour(self.colours[0]),
            "pattern_colour": hex_colour(self.colours[1]),
            "pattern_size": round(self.pattern_size, 4),
            "sleeves": self.sleeves,
            "bottoms": self.bottoms,
            "bottoms_colour": hex_colour(self.bottoms_colour),
        }


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def person_id(seed: int, index: int) -> str:
    return f"s{seed}p{index:04d}"


def garment_id(seed: int, index: int) -> str:
    return f"s{seed}g{index:04d}"


def sample_person(seed: int, index: int) -> Person:
    rng = np.random.default_rng([seed, index, _PERSON_STREAM])
    return Person(
        id=person_id(seed, index),
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 8),
        hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 10),
        hair_style=("short", "long")[rng.integers(2)],
        shoes=_jitter(rng, SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))], 8),
        shoulder_width=float(rng.uniform(0.098, 0.118)),
        hip_width=float(rng.uniform(0.052, 0.066)),
        limb_scale=float(rng.uniform(0.9, 1.12)),
        height=float(rng.uniform(0.84, 0.9)),
    )


def sample_garment(seed: int, index: int) -> Garment:
    """The outfit of person `index` of dataset `seed`. Textures take turns, so every kind is
    equally common; the colours are drawn from (seed, index), so two seeds share no garment."""
    rng = np.random.default_rng([seed, index, _GARMENT_STREAM])
    texture = TEXTURES[(seed + index) % len(TEXTURES)]
    main = _garment_colour(rng)
    pattern = _contrasting_colour(rng, main)
    bottoms = BOTTOMS_KINDS[rng.choice(len(BOTTOMS_KINDS), p=(0.5, 0.25, 0.25))]
    while True:
        if rng.random() < 0.7:
            bottoms_colour = _jitter(rng, BOTTOMS_COLOURS[rng.integers(len(BOTTOMS_COLOURS))], 14)
        else:
            bottoms_colour = _garment_colour(rng)
        if _rgb_distance(bottoms_colour, main) > 70:
            break
    return Garment(
        id=garment_id(seed, index),
        texture=texture,
        colours=(main, pattern),
        pattern_size=float(rng.uniform(0.075, 0.1)),
        sleeves=SLEEVES[rng.integers(len(SLEEVES))],
        bottoms=bottoms,
        bottoms_colour=bottoms_colour,
    )


def _jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    values = np.asarray(colour) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(values, 0, 255))


def _luma(colour: Colour) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


def _rgb_distance(a: Colour, b: Colour) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float64)))


def _stands_out(colour: Colour) -> bool:
    """Far enough from the background that the garment reads as part of the figure."""
    return _rgb_distance(colour, BACKGROUND) > 60 and _luma(colour) < 215


def _garment_colour(rng: np.random.Generator) -> Colour:
    while True:
        hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.92)
        colour = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if _stands_out(colour):
            return colour


def _contrasting_colour(rng: np.random.Generator, main: Colour) -> Colour:
    """A pattern colour that shows on `main`: a clearly lighter or darker shade, another hue,
    or a near-neutral."""
    while True:
        if rng.random() < 0.3:
            level = rng.choice([rng.uniform(20, 60), rng.uniform(170, 205)])
            colour = _jitter(rng, (int(level),) * 3, 6)
        else:
            colour = _garment_colour(rng)
        if _luma(colour) < 215 and _rgb_distance(colour, BACKGROUND) > 45 and (
            abs(_luma(colour) - _luma(main)) > 55 or _rgb_distance(colour, main) > 140
        ):
            return colour


# --------------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------------
# Body frame: x to the person's left, y down, z out of their chest; units of about the
# standing figure's height (head top 0, soles 1).


@dataclass(frozen=True)
class ArmAngles:
    raise_: float  # abduction: 0 hanging, pi/2 sideways, pi straight up
    swing: float  # flexion: forward (+) or back (-) from hanging
    elbow: float  # bend of the elbow, 0 straight
    elbow_plane: float  # 0: the forearm bends forward, pi/2: toward the body's midline


@dataclass(frozen=True)
class LegAngles:
    spread: float  # abduction
    swing: float  # hip flexion: forward (+) or back (-)
    knee: float  # knee bend, the shin folding back


@dataclass(frozen=True)
class Pose:
    family: str  # one of POSE_FAMILIES
    view: str  # front, side or back
    yaw: float  # turn of the body about the vertical, radians: 0 faces the camera
    arms: tuple[ArmAngles, ArmAngles]  # right, left
    legs: tuple[LegAngles, LegAngles]  # right, left
    lean: float  # forward bend of the spine
    side_bend: float
    twist: float  # shoulders turned against the hips
    head_turn: float
    head_tilt: float
    toe_out: float
    shift: tuple[float, float]  # placement on the picture: x and y offsets, shares of its size


def sample_pose(rng: np.random.Generator) -> Pose:
    """A plausible pose: a family's joint angles with random variation, seen from a random view."""
    family = POSE_FAMILIES[rng.choice(len(POSE_FAMILIES), p=POSE_FAMILY_WEIGHTS)]
    view = VIEWS[rng.choice(len(VIEWS), p=VIEW_WEIGHTS)]
    u = rng.uniform

    def relaxed_arm() -> ArmAngles:
        return ArmAngles(u(0.06, 0.32), u(-0.25, 0.25), u(0.0, 0.45), u(0.0, 0.8))

    def standing_leg() -> LegAngles:
        return LegAngles(u(0.0, 0.12), u(-0.08, 0.1), u(0.0, 0.12))

    arms = [relaxed_arm(), relaxed_arm()]
    legs = [standing_leg(), standing_leg()]
    lean = u(-0.04, 0.06)
    if family == "walk":
        step, forward = u(0.22, 0.45), rng.integers(2)  # which leg steps forward
        for side in range(2):
            sign = 1 if side == forward else -1
            legs[side] = LegAngles(u(0.0, 0.06), sign * step, u(0.05, 0.2) if sign > 0 else u(0.25, 0.55))
            arms[side] = ArmAngles(u(0.06, 0.2), -sign * step * u(0.7, 1.1), u(0.15, 0.6), u(0.0, 0.4))
        lean = u(0.0, 0.08)
    elif family == "hands_on_hips":
        for side in (0, 1) if rng.random() < 0.6 else (rng.integers(2),):
            arms[side] = ArmAngles(u(0.65, 0.85), u(-0.15, 0.1), u(1.3, 1.6), u(1.35, 1.6))
    elif family == "arms_up":
        for side in (0, 1) if rng.random() < 0.5 else (rng.integers(2),):
            arms[side] = ArmAngles(u(2.2, 2.9), u(-0.1, 0.3), u(0.0, 0.7), u(0.6, 1.4))
    elif family == "reach":
        for side in (0, 1) if rng.random() < 0.4 else (rng.integers(2),):
            arms[side] = ArmAngles(u(0.05, 0.3), u(0.7, 1.4), u(0.1, 0.9), u(0.0, 0.5))
    elif family == "arms_folded":
        for side in range(2):
            arms[side] = ArmAngles(u(0.1, 0.22), u(0.25, 0.45), u(1.75, 2.05), u(1.1, 1.35))

    if view == "front":
        yaw = u(-0.4, 0.4)
    elif view == "side":
        yaw = (1 if rng.random() < 0.5 else -1) * u(1.15, 1.75)
    else:
        yaw = math.pi + u(-0.4, 0.4)
    return Pose(
        family=family,
        view=view,
        yaw=float(yaw),
        arms=tuple(arms),
        legs=tuple(legs),
        lean=float(lean),
        side_bend=float(u(-0.05, 0.05)),
        twist=float(u(-0.15, 0.15)),
        head_turn=float(u(-0.35, 0.35)),
        head_tilt=float(u(-0.1, 0.12)),
        toe_out=float(u(0.05, 0.3)),
        shift=(float(u(-0.04, 0.04)), float(u(-0.012, 0.012))),
    )


# Lengths of the standing skeleton, body units.
UPPER_ARM, FOREARM, THIGH, SHIN = 0.165, 0.145, 0.225, 0.22
SPINE = 0.31  # mid-hip to neck
HEAD_ABOVE_NECK = 0.115
HEAD_RADIUS, HEAD_HEIGHT = 0.05, 0.062  # half-width and half-height of the head


@dataclass
class Skeleton:
    """Joints in the body frame (3-D): the 18 COCO keypoints plus the points the drawing
    needs (head centre, hands, toes)."""

    joints: dict[str, np.ndarray]
    head_yaw: float  # the head's turn on top of the body's


def build_skeleton(person: Person, pose: Pose) -> Skeleton:
    """Forward kinematics from the pelvis: spine, shoulders and head, then arms and legs; the
    lower foot stands on the ground line (y = 1)."""
    joints: dict[str, np.ndarray] = {}
    spine = _rot_z(pose.side_bend) @ _rot_x(pose.lean)
    pelvis = np.array([0.0, 0.0, 0.0])
    neck = pelvis + spine @ np.array([0.0, -SPINE, 0.0])
    joints["neck"] = neck
    shoulders = spine @ _rot_y(pose.twist)
    hips = _rot_y(-pose.twist / 2)
    for side, prefix in ((RIGHT, "right"), (LEFT, "left")):
        joints[f"{prefix}_shoulder"] = neck + shoulders @ np.array([side * person.shoulder_width, 0.0, 0.0])
        joints[f"{prefix}_hip"] = pelvis + hips @ np.array([side * person.hip_width, 0.0, 0.0])
    joints["mid_hip"] = (joints["right_hip"] + joints["left_hip"]) / 2

    head_frame = spine @ _rot_x(pose.head_tilt)
    head_centre = neck + head_frame @ np.array([0.0, -HEAD_ABOVE_NECK, 0.0])
    joints["head"] = head_centre
    head_turn = head_frame @ _rot_y(pose.twist + pose.head_turn)
    face = {  # on the head ellipsoid, in the head's frame
        "nose": (0.0, 0.012, 1.0 * HEAD_RADIUS),
        "right_eye": (-0.019, -0.006, 0.85 * HEAD_RADIUS),
        "left_eye": (0.019, -0.006, 0.85 * HEAD_RADIUS),
        "right_ear": (-0.9 * HEAD_RADIUS, 0.004, -0.004),
        "left_ear": (0.9 * HEAD_RADIUS, 0.004, -0.004),
    }
    for name, offset in face.items():
        joints[name] = head_centre + head_turn @ np.array(offset)

    for side, prefix, angles in ((RIGHT, "right", pose.arms[0]), (LEFT, "left", pose.arms[1])):
        upper = np.array(
            [side * math.sin(angles.raise_), math.cos(angles.raise_) * math.cos(angles.swing),
             math.cos(angles.raise_) * math.sin(angles.swing)]
        )
        upper = shoulders @ upper
        # The forearm folds forward (elbow_plane 0) or toward the body's midline (pi/2).
        bend_towards = shoulders @ np.array([-side * math.sin(angles.elbow_plane), 0.0, math.cos(angles.elbow_plane)])
        forearm = _bend(upper, bend_towards, angles.elbow)
        joints[f"{prefix}_elbow"] = joints[f"{prefix}_shoulder"] + UPPER_ARM * upper
        joints[f"{prefix}_wrist"] = joints[f"{prefix}_elbow"] + FOREARM * forearm
        joints[f"{prefix}_hand"] = joints[f"{prefix}_wrist"] + 0.055 * _bend(forearm, bend_towards, 0.15)

    for side, prefix, angles in ((RIGHT, "right", pose.legs[0]), (LEFT, "left", pose.legs[1])):
        thigh = np.array(
            [side * math.sin(angles.spread), math.cos(angles.spread) * math.cos(angles.swing),
             math.cos(angles.spread) * math.sin(angles.swing)]
        )
        shin = _bend(thigh, np.array([0.0, 0.0, -1.0]), angles.knee)
        joints[f"{prefix}_knee"] = joints[f"{prefix}_hip"] + THIGH * thigh
        joints[f"{prefix}_ankle"] = joints[f"{prefix}_knee"] + SHIN * shin
        toe_direction = _rot_y(side * pose.toe_out) @ np.array([0.0, 0.35, 1.0])
        joints[f"{prefix}_toe"] = joints[f"{prefix}_ankle"] + 0.06 * toe_direction / np.linalg.norm(toe_direction)

    # Stand on the ground: the lower foot's sole at y = 1.
    sole = max(joints["right_toe"][1], joints["left_toe"][1], joints["right_ankle"][1], joints["left_ankle"][1])
    ground = np.array([0.0, 1.0 - 0.02 - sole, 0.0])
    return Skeleton({name: point + ground for name, point in joints.items()}, head_yaw=pose.twist + pose.head_turn)


def _rot_x(angle: float) -> np.ndarray:
    """Bends forward: a point above the origin moves toward +z (the chest's side)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, s], [0, -s, c]], dtype=np.float64)


def _rot_y(angle: float) -> np.ndarray:
    """Turns the body about the vertical: x' = x cos + z sin, z' = -x sin + z cos (a positive
    angle turns the chest toward the picture's right)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def _bend(direction: np.ndarray, towards: np.ndarray, angle: float) -> np.ndarray:
    """`direction` turned by `angle` toward `towards` (in the plane of both)."""
    perpendicular = towards - np.dot(towards, direction) * direction
    if np.linalg.norm(perpendicular) < 1e-6:  # `towards` along `direction`: bend upward instead
        up = np.array([0.0, -1.0, 0.0])
        perpendicular = up - np.dot(up, direction) * direction
    perpendicular = perpendicular / np.linalg.norm(perpendicular)
    return math.cos(angle) * direction + math.sin(angle) * perpendicular


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
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
        x, y, z = _rot_y(self.yaw) @ point
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
    ts, ws, ds = (np.array(values, np.float64) for values in zip(*knots))
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
    normal = _rot_y(view.yaw + skeleton.head_yaw) @ np.array(_FACE_NORMALS[name])
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
        behind = _rot_y(twist) @ np.array([0.0, 0.0, -0.022])
        draw_tube(canvas, view, "long hair", (), joints["head"] + behind, joints["neck"] + behind + [0, 0.07, 0],
                  [(0.0, 0.05, 0.02), (1.0, 0.056, 0.02)], (twist, twist), Material(person.hair, HAIR))
    for prefix in ("right", "left"):
        shoulder, elbow, wrist = (joints[f"{prefix}_{j}"] for j in ("shoulder", "elbow", "wrist"))
        hip, knee, ankle = (joints[f"{prefix}_{j}"] for j in ("hip", "knee", "ankle"))
        draw_capsule(canvas, view, f"{prefix} upper arm", (f"{prefix}_shoulder", f"{prefix}_elbow"),
                     shoulder, elbow, (0.029 * limb, 0.025 * limb), Covered(top, sleeve, skin))
        draw_capsule(canvas, view, f"{prefix} forearm", (f"{prefix}_elbow", f"{prefix}_wrist"),
                     elbow, wrist, (0.025 * limb, 0.02 * limb), Covered(top, sleeve - UPPER_ARM, skin))
        draw_capsule(canvas, view, f"{prefix} hand", (f"{prefix}_wrist",), wrist, joints[f"{prefix}_hand"],
                     (0.02 * limb, 0.018 * limb), skin)
        thigh_cover = {"trousers": 1.0, "shorts": 0.5 * THIGH, "skirt": 0.0}[garment.bottoms]
        draw_capsule(canvas, view, f"{prefix} thigh", (f"{prefix}_hip", f"{prefix}_knee"),
                     hip, knee, (0.047 * limb, 0.036 * limb), Covered(bottoms, thigh_cover, skin))
        draw_capsule(canvas, view, f"{prefix} shin", (f"{prefix}_knee", f"{prefix}_ankle"), knee, ankle,
                     (0.035 * limb, 0.026 * limb), Covered(bottoms, 1.0 if garment.bottoms == "trousers" else 0.0, skin))
        draw_capsule(canvas, view, f"{prefix} foot", (f"{prefix}_ankle",), ankle, joints[f"{prefix}_toe"],
                     (0.026, 0.022), Material(person.shoes, SHOES))

    neck, mid_hip = joints["neck"], joints["mid_hip"]
    # The top: rounded shoulders, a little narrower at the waist, its hem over the bottoms.
    shoulder_w = person.shoulder_width + 0.014
    hem_w = person.hip_width + 0.046
    draw_tube(canvas, view, "torso", ("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"),
              neck, mid_hip,
              [(-0.09, 0.62 * shoulder_w, 0.045), (-0.03, 0.92 * shoulder_w, 0.06), (0.02, shoulder_w, 0.068),
               (0.35, 0.94 * shoulder_w, 0.076), (0.75, max(0.8 * shoulder_w, hem_w - 0.012), 0.07),
               (1.08, hem_w, 0.084)],
              (twist, -twist / 2), GarmentTexture(garment, chest=True))
    waist = mid_hip + np.array([0.0, -0.02, 0.0])
    if garment.bottoms == "skirt":
        hem = mid_hip + np.array([0.0, 0.8 * THIGH, 0.0])
        draw_tube(canvas, view, "skirt", ("right_hip", "left_hip"), waist, hem,
                  [(0.0, person.hip_width + 0.04, 0.07), (1.0, person.hip_width + 0.1, 0.11)],
                  (-twist / 2, -twist / 2), bottoms)
    else:
        crotch = mid_hip + np.array([0.0, 0.075, 0.0])
        draw_tube(canvas, view, "pelvis", ("right_hip", "left_hip"), waist, crotch,
                  [(0.0, person.hip_width + 0.038, 0.066), (1.0, person.hip_width + 0.01, 0.05)],
                  (-twist / 2, -twist / 2), bottoms)
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
    turn = _rot_y(pose.yaw)
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


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------
# DIR/images/<person>_<k>.png   the photos, k = 0 .. poses_per_person - 1
# DIR/poses/<person>_<k>.json   their coco18 keypoints
# DIR/masks/<person>_<k>.png    part masks (mode L, values MASK_CLASSES: > 0 is the person)
# DIR/pairs.csv                 source_image,target_image,target_pose (paths relative to it)
# DIR/images.csv                per image: person, garment, view, pose family, garment colours
# DIR/metadata.json             the arguments, the mask classes, every person and garment


@dataclass(frozen=True)
class SynthResult:
    out: Path
    pairs_csv: Path
    pairs: int
    people: int
    images: int


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (e.g. '64x48') -> (height, width); at least MIN_SIZE."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise InputError(f"size must be HEIGHTxWIDTH in pixels, e.g. 64x48; got {text!r}")
    size = (int(match.group(1)), int(match.group(2)))
    check_size(size)
    return size


def check_size(size: tuple[int, int]) -> None:
    height, width = size
    if height < MIN_SIZE[0] or width < MIN_SIZE[1]:
        raise InputError(f"size {height}x{width} is too small: at least {MIN_SIZE[0]}x{MIN_SIZE[1]} (HxW)")
    if not 0.5 <= width / height <= 1.5:
        raise InputError(f"size {height}x{width}: width must be between 0.5 and 1.5 times the height")


def check_arguments(seed: int, size: tuple[int, int], poses_per_person: int) -> None:
    """What every writer of a synthetic catalog needs of its arguments."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    if poses_per_person < 2:
        raise InputError(f"poses_per_person must be at least 2, got {poses_per_person}")
    check_size(size)


def people_for(pairs: int, poses_per_person: int = POSES_PER_PERSON) -> int:
    """People needed for `pairs` ordered pairs of the same person's poses."""
    return math.ceil(pairs / (poses_per_person * (poses_per_person - 1)))


def image_name(person: Person, pose_index: int) -> str:
    return f"{person.id}_{pose_index}"


def render_person(seed: int, index: int, size: tuple[int, int] = DEFAULT_SIZE, poses: int = POSES_PER_PERSON):
    """Person `index` of dataset `seed`, their garment, and their `poses` figures (Pose, Figure)."""
    person, garment = sample_person(seed, index), sample_garment(seed, index)
    figures = []
    for pose_index in range(poses):
        pose = sample_pose(np.random.default_rng([seed, index, _POSE_STREAM, pose_index]))
        figures.append((pose, render_figure(person, garment, pose, size)))
    return person, garment, figures


def write_dataset(
    out: str | Path,
    pairs: int,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    poses_per_person: int = POSES_PER_PERSON,
) -> SynthResult:
    """Write a synthetic catalog of `pairs` pairs into `out` (see the layout above).

    People: ceil(pairs / (poses_per_person * (poses_per_person - 1))); each is photographed in
    `poses_per_person` poses and the pairs are the ordered pairs of one person's poses (source
    != target), person after person, cut at `pairs`. Person `i` of a seed is the same whatever
    `pairs` is, so a smaller dataset is a prefix of a larger one. Files already in `out` are
    overwritten, others left alone.
    """
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise InputError(f"pairs must be at least 1, got {pairs!r}")
    check_arguments(seed, size, poses_per_person)
    out = Path(out)
    for folder in ("images", "poses", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)

    rows, image_rows, people_meta = [], [], []
    for index in range(people_for(pairs, poses_per_person)):
        person, garment, figures = render_person(seed, index, size, poses_per_person)
        names = [image_name(person, k) for k in range(poses_per_person)]
        for name, (pose, figure) in zip(names, figures):
            _write_png(figure.image, out / "images" / f"{name}.png")
            _write_png(figure.mask, out / "masks" / f"{name}.png")
            (out / "poses" / f"{name}.json").write_text(keypoints_json(figure.keypoints))
            image_rows.append(
                {
                    "image": f"images/{name}.png",
                    "pose": f"poses/{name}.json",
                    "mask": f"masks/{name}.png",
                    "person": person.id,
                    **garment.describe(),
                    "view": pose.view,
                    "yaw_degrees": round(math.degrees(pose.yaw), 1),
                    "pose_family": pose.family,
                    "visible_keypoints": int(figure.keypoints.visible.sum()),
                }
            )
        person_meta = {"person": person.id, **{k: v for k, v in asdict(person).items() if k != "id"}}
        for key in ("skin", "hair", "shoes"):
            person_meta[key] = hex_colour(person_meta[key])
        for key in ("shoulder_width", "hip_width", "limb_scale", "height"):
            person_meta[key] = round(person_meta[key], 4)
        people_meta.append({"person": person_meta, "garment": garment.describe()})
        rows += [
            (f"images/{names[s]}.png", f"images/{names[t]}.png", f"poses/{names[t]}.json")
            for s in range(poses_per_person)
            for t in range(poses_per_person)
            if s != t
        ]
    rows = rows[:pairs]

    pairs_csv = out / "pairs.csv"
    _write_csv(pairs_csv, ["source_image", "target_image", "target_pose"], rows)
    _write_csv(out / "images.csv", list(image_rows[0]), [list(row.values()) for row in image_rows])
    metadata = {
        "generator": "fpdm synth",
        "seed": seed,
        "size": list(size),
        "pairs": len(rows),
        "poses_per_person": poses_per_person,
        "background": hex_colour(BACKGROUND),
        "mask_classes": MASK_CLASSES,
        "people": people_meta,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    return SynthResult(out, pairs_csv, len(rows), len(people_meta), len(image_rows))


@dataclass(frozen=True)
class CatalogExample:
    manifest: Path
    garments: list[str]
    jobs: int


def write_catalog_manifest(
    out: str | Path,
    garments: int,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    poses_per_person: int = POSES_PER_PERSON,
    manifest: str | Path | None = None,
) -> CatalogExample:
    """Write a catalog manifest of synthetic garments, as a catalog team would lay one out: per
    garment a source photo and target poses, and `manifest.csv` with one row per (garment, pose).

        OUT/<garment>/source.png             the person's first front view (first pose if none)
        OUT/<garment>/poses/<variant>.json   the person's other poses, coco18 keypoints
        OUT/<garment>/truth/<variant>.png    what each variant should look like: the person
                                             photographed in that pose (not read by a run)
        manifest (default OUT/manifest.csv) garment_id,source_image,target_pose,variant_id,notes

    Garment ids are `<garment id>-<texture>` (s3g0001-logo); variant ids are the pose family and
    view (walk-side), numbered where a person repeats one. Paths in the manifest are relative to it.
    """
    if isinstance(garments, bool) or not isinstance(garments, int) or garments < 1:
        raise InputError(f"garments must be at least 1, got {garments!r}")
    check_arguments(seed, size, poses_per_person)
    out = Path(out)
    manifest = Path(manifest) if manifest is not None else out / "manifest.csv"
    relative = Path(os.path.relpath(out, manifest.parent))  # "." when the manifest is in OUT
    rows, garment_ids = [], []
    for index in range(garments):
        person, garment, figures = render_person(seed, index, size, poses_per_person)
        views = [pose.view for pose, _ in figures]
        source = views.index("front") if "front" in views else 0
        folder_name = f"{garment.id}-{garment.texture}"
        folder = out / folder_name
        (folder / "poses").mkdir(parents=True, exist_ok=True)
        (folder / "truth").mkdir(exist_ok=True)
        _write_png(figures[source][1].image, folder / "source.png")
        described = garment.describe()
        notes = f"{described['texture']} {described['top_colour']} top, {garment.sleeves} sleeves, {garment.bottoms}"
        seen: dict[str, int] = {}
        for k, (pose, figure) in enumerate(figures):
            if k == source:
                continue
            variant = f"{pose.family.replace('_', '-')}-{pose.view}"
            seen[variant] = seen.get(variant, 0) + 1
            if seen[variant] > 1:
                variant = f"{variant}-{seen[variant]}"
            (folder / "poses" / f"{variant}.json").write_text(keypoints_json(figure.keypoints))
            _write_png(figure.image, folder / "truth" / f"{variant}.png")
            source_path, pose_path = relative / folder_name / "source.png", relative / folder_name / "poses" / f"{variant}.json"
            rows.append((folder_name, source_path.as_posix(), pose_path.as_posix(), variant, notes))
        garment_ids.append(folder_name)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(manifest, ["garment_id", "source_image", "target_pose", "variant_id", "notes"], rows)
    return CatalogExample(manifest, garment_ids, len(rows))


def keypoints_json(keypoints: Keypoints) -> str:
    """coco18 JSON (model_core.keypoints.Keypoints.from_json reads it), coordinates to 0.01 px."""
    data = keypoints.to_json()
    data["keypoints"] = [[round(x, 2), round(y, 2), score] for x, y, score in data["keypoints"]]
    return json.dumps(data) + "\n"


def _write_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def _write_csv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def contact_sheet(figures: list[Image.Image], columns: int = 6, zoom: int = 3) -> Image.Image:
    """Pictures side by side (for looking at a dataset), each enlarged `zoom` times."""
    width, height = figures[0].size
    rows = math.ceil(len(figures) / columns)
    sheet = Image.new("RGB", (columns * width * zoom, rows * height * zoom), (255, 255, 255))
    for i, figure in enumerate(figures):
        big = figure.convert("RGB").resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
        sheet.paste(big, ((i % columns) * width * zoom, (i // columns) * height * zoom))
    return sheet
