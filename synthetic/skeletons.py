"""Poses of the synthetic catalog: a standing skeleton bent by plausible joint angles (standing,
walking, hands on hips, arms up, reaching, arms folded), seen from the front, the side (narrow
shoulders, far arm behind the body) or the back (no face; arms in front of the body hidden by it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from synthetic.people import Person

VIEWS = ("front", "side", "back")
VIEW_WEIGHTS = (0.5, 0.3, 0.2)
POSE_FAMILIES = ("stand", "walk", "hands_on_hips", "arms_up", "reach", "arms_folded")
POSE_FAMILY_WEIGHTS = (0.28, 0.26, 0.14, 0.12, 0.1, 0.1)

RIGHT, LEFT = -1, 1  # the side of a joint along the body's x axis (x points to the person's left)

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
    spine = rot_z(pose.side_bend) @ rot_x(pose.lean)
    pelvis = np.array([0.0, 0.0, 0.0])
    neck = pelvis + spine @ np.array([0.0, -SPINE, 0.0])
    joints["neck"] = neck
    shoulders = spine @ rot_y(pose.twist)
    hips = rot_y(-pose.twist / 2)
    for side, prefix in ((RIGHT, "right"), (LEFT, "left")):
        joints[f"{prefix}_shoulder"] = neck + shoulders @ np.array([side * person.shoulder_width, 0.0, 0.0])
        joints[f"{prefix}_hip"] = pelvis + hips @ np.array([side * person.hip_width, 0.0, 0.0])
    joints["mid_hip"] = (joints["right_hip"] + joints["left_hip"]) / 2

    head_frame = spine @ rot_x(pose.head_tilt)
    head_centre = neck + head_frame @ np.array([0.0, -HEAD_ABOVE_NECK, 0.0])
    joints["head"] = head_centre
    head_turn = head_frame @ rot_y(pose.twist + pose.head_turn)
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
            [
                side * math.sin(angles.raise_),
                math.cos(angles.raise_) * math.cos(angles.swing),
                math.cos(angles.raise_) * math.sin(angles.swing),
            ]
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
            [
                side * math.sin(angles.spread),
                math.cos(angles.spread) * math.cos(angles.swing),
                math.cos(angles.spread) * math.sin(angles.swing),
            ]
        )
        shin = _bend(thigh, np.array([0.0, 0.0, -1.0]), angles.knee)
        joints[f"{prefix}_knee"] = joints[f"{prefix}_hip"] + THIGH * thigh
        joints[f"{prefix}_ankle"] = joints[f"{prefix}_knee"] + SHIN * shin
        toe_direction = rot_y(side * pose.toe_out) @ np.array([0.0, 0.35, 1.0])
        joints[f"{prefix}_toe"] = joints[f"{prefix}_ankle"] + 0.06 * toe_direction / np.linalg.norm(toe_direction)

    # Stand on the ground: the lower foot's sole at y = 1.
    sole = max(joints["right_toe"][1], joints["left_toe"][1], joints["right_ankle"][1], joints["left_ankle"][1])
    ground = np.array([0.0, 1.0 - 0.02 - sole, 0.0])
    return Skeleton({name: point + ground for name, point in joints.items()}, head_yaw=pose.twist + pose.head_turn)


def rot_x(angle: float) -> np.ndarray:
    """Bends forward: a point above the origin moves toward +z (the chest's side)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, s], [0, -s, c]], dtype=np.float64)


def rot_y(angle: float) -> np.ndarray:
    """Turns the body about the vertical: x' = x cos + z sin, z' = -x sin + z cos (a positive
    angle turns the chest toward the picture's right)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def rot_z(angle: float) -> np.ndarray:
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
