"""Figures of the synthetic catalog (synthetic.rendering, synthetic.skeletons): keypoints where
the figure is, the garment on the torso and the background elsewhere, and joints hidden by the
body marked missing."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from model_core.keypoints import COCO18_NAMES
from model_core.skeletons import LIMBS
from synthetic import DEFAULT_SIZE, render_person
from synthetic.people import BACKGROUND, sample_garment, sample_person
from synthetic.rendering import SKIN, TOP, render_figure
from synthetic.skeletons import ArmAngles, sample_pose

KP = {name: index for index, name in enumerate(COCO18_NAMES)}
LIMB_JOINTS = ("elbow", "wrist", "knee", "ankle")


@pytest.fixture(scope="module")
def figures():
    """Every pose of 24 people at the default size: (person, garment, pose, figure)."""
    out = []
    for index in range(24):
        person, garment, posed = render_person(0, index)
        out += [(person, garment, pose, figure) for pose, figure in posed]
    return out


# ----- figures and keypoints ----------------------------------------------------------------


def test_views_and_poses_vary(figures):
    views = {pose.view for _, _, pose, _ in figures}
    families = {pose.family for _, _, pose, _ in figures}
    assert views == {"front", "side", "back"} and len(families) >= 5
    assert any(figure.hidden for *_, figure in figures)  # some limbs are occluded


def test_keypoints_lie_on_the_canvas_and_on_the_figure(figures):
    height, width = DEFAULT_SIZE
    for *_, figure in figures:
        keypoints = figure.keypoints
        assert (keypoints.width, keypoints.height) == (width, height)
        visible = keypoints.visible
        assert visible.sum() >= 10
        points = keypoints.points[visible]
        assert (points[:, 0] >= 0).all() and (points[:, 0] < width).all()
        assert (points[:, 1] >= 0).all() and (points[:, 1] < height).all()
        person = np.asarray(figure.mask) > 0
        # Every visible keypoint and the middle of every limb between two of them are on the person.
        spots = [keypoints.points[i, :2] for i in np.flatnonzero(visible)]
        spots += [(keypoints.points[a, :2] + keypoints.points[b, :2]) / 2 for a, b in LIMBS if visible[a] and visible[b]]
        for x, y in spots:
            col, row = int(x), int(y)
            assert person[max(0, row - 1) : row + 2, max(0, col - 1) : col + 2].any(), (x, y)


def test_the_garment_is_on_the_torso_and_the_background_elsewhere(figures):
    for _, garment, pose, figure in figures:
        image = np.asarray(figure.image).astype(float)
        mask = np.asarray(figure.mask)
        points = figure.keypoints.points
        if pose.view == "front" and pose.family not in ("arms_folded", "reach"):
            # Below the neck, a third of the way to the hips: the top, in its colours (shaded).
            hips = (points[KP["right_hip"], :2] + points[KP["left_hip"], :2]) / 2
            x, y = points[KP["neck"], :2] + (hips - points[KP["neck"], :2]) / 3
            assert mask[int(y), int(x)] == TOP
            pixel = image[int(y), int(x)]
            assert shade_distance(pixel, garment.colours) < 8
        # Away from the person (2 px and more), the picture is the plain background.
        near = dilate(mask > 0, 2)
        assert (image[~near] == BACKGROUND).all()
        assert not near[:2].any() or not near[-1].any()  # the figure fits: not from top to bottom edge


def test_the_evaluation_finds_the_figure_the_mask_marks(figures):
    from model_core.evaluation import figure_mask

    for *_, figure in figures[::3]:
        found = figure_mask(np.asarray(figure.image))
        person = np.asarray(figure.mask) > 0  # pixels mostly covered by the person
        assert (found & person).sum() >= 0.99 * person.sum()
        assert not (found & ~dilate(person, 1)).any()  # beyond it, only partly covered edge pixels


# ----- occlusion ----------------------------------------------------------------------------


def posed(view: str, yaw: float, right_arm: ArmAngles, left_arm: ArmAngles):
    """Person 0 of seed 0 in short sleeves, both arms set, seen from `yaw`."""
    person = sample_person(0, 0)
    garment = dataclasses.replace(sample_garment(0, 0), sleeves="short", texture="solid")
    pose = dataclasses.replace(
        sample_pose(np.random.default_rng(0)),
        view=view,
        yaw=yaw,
        arms=(right_arm, left_arm),
        family="reach",
        twist=0.0,
        head_turn=0.0,
        lean=0.0,
        side_bend=0.0,
        shift=(0.0, 0.0),
    )
    return render_figure(person, garment, pose, (128, 96))


REACH = ArmAngles(raise_=0.1, swing=1.3, elbow=0.6, elbow_plane=1.2)  # forearm in front of the chest
HANG = ArmAngles(raise_=0.15, swing=0.0, elbow=0.1, elbow_plane=0.0)


def mask_at(figure, name):
    x, y = figure.projected[KP[name]]
    return np.asarray(figure.mask)[int(y), int(x)]


def test_an_arm_in_front_of_the_body_is_hidden_from_behind():
    front = posed("front", 0.0, REACH, HANG)
    assert front.keypoints.visible[KP["right_wrist"]] and mask_at(front, "right_wrist") == SKIN
    back = posed("back", math.pi, REACH, HANG)
    assert not back.keypoints.visible[KP["right_wrist"]] and "right_wrist" in back.hidden
    assert mask_at(back, "right_wrist") == TOP  # the back of the top covers the hand
    assert back.keypoints.visible[KP["left_wrist"]] and mask_at(back, "left_wrist") == SKIN
    # No face from behind; a whole face from the front.
    assert not back.keypoints.visible[[KP["nose"], KP["right_eye"], KP["left_eye"]]].any()
    assert front.keypoints.visible[[KP["nose"], KP["right_eye"], KP["left_eye"]]].all()


def test_the_far_arm_is_hidden_in_profile():
    # Turned 90 degrees, the chest faces the picture's right: the person's left side is far.
    side = posed("side", math.pi / 2, HANG, HANG)
    for joint in LIMB_JOINTS[:2]:
        assert side.keypoints.visible[KP[f"right_{joint}"]]
        assert not side.keypoints.visible[KP[f"left_{joint}"]]
    assert not side.keypoints.visible[KP["left_eye"]] and side.keypoints.visible[KP["right_eye"]]
    assert side.keypoints.visible[KP["neck"]]  # the skeleton keeps its hub
    front = posed("front", 0.0, HANG, HANG)
    assert shoulder_width(side) < 0.3 * shoulder_width(front)


def test_hidden_joints_are_covered_by_something_else(figures):
    """A joint is missing where its limb (or a face point where the head) does not show:
    another part of the person covers the spot it projects to, never the background."""
    hidden = 0
    for *_, figure in figures:
        person = dilate(np.asarray(figure.mask) > 0, 1)  # face points may sit on the head's edge
        for name in figure.hidden:
            x, y = figure.projected[KP[name]]
            assert person[int(y), int(x)], name
            hidden += name.endswith(LIMB_JOINTS)
    assert hidden >= 10


# ----- helpers ------------------------------------------------------------------------------


def shoulder_width(figure) -> float:
    return abs(figure.projected[KP["right_shoulder"], 0] - figure.projected[KP["left_shoulder"], 0])


def shade_distance(pixel: np.ndarray, colours) -> float:
    """Distance of a pixel from the garment's colours under the renderer's shading (0.8 to 1
    of a colour), mixed as a pixel on a pattern's edge mixes them."""
    main, pattern = (np.asarray(c, float) for c in colours)
    return min(
        float(np.abs(pixel - shade * (mix * main + (1 - mix) * pattern)).max())
        for shade in np.linspace(0.8, 1.0, 21)
        for mix in np.linspace(0, 1, 21)
    )


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(steps):
        padded = np.pad(grown, 1)
        grown = (
            padded[1:-1, 1:-1]
            | padded[:-2, 1:-1]
            | padded[2:, 1:-1]
            | padded[1:-1, :-2]
            | padded[1:-1, 2:]
            | padded[:-2, :-2]
            | padded[:-2, 2:]
            | padded[2:, :-2]
            | padded[2:, 2:]
        )
    return grown
