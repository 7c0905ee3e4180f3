"""The synthetic catalog (pipeline.synthetic, `fpdm synth`): deterministic, pairs of one person
and garment in different poses, disjoint garments across seeds, keypoints where the figure is,
joints hidden by the body marked missing, and a pairs CSV that training reads."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from model_core.errors import InputError
from model_core.keypoints import COCO18_NAMES, LIMBS, read_keypoints
from pipeline.synthetic import (
    BACKGROUND,
    DEFAULT_SIZE,
    MASK_CLASSES,
    SKIN,
    TEXTURES,
    TOP,
    ArmAngles,
    parse_size,
    render_figure,
    render_person,
    sample_garment,
    sample_person,
    sample_pose,
    write_dataset,
)
from test_cli import assert_one_error_line, run_fpdm  # tests/ is on sys.path (its conftest.py)

KP = {name: index for index, name in enumerate(COCO18_NAMES)}
LIMB_JOINTS = ("elbow", "wrist", "knee", "ankle")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def figures():
    """Every pose of 24 people at the default size: (person, garment, pose, figure)."""
    out = []
    for index in range(24):
        person, garment, posed = render_person(0, index)
        out += [(person, garment, pose, figure) for pose, figure in posed]
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = write_dataset(out, pairs=30, seed=5)
    return out, result


# ----- the dataset --------------------------------------------------------------------------


def test_same_arguments_write_identical_files(dataset, tmp_path):
    out, _ = dataset
    write_dataset(tmp_path, pairs=30, seed=5)
    assert all_files(tmp_path) == all_files(out)
    other = tmp_path / "other_seed"
    write_dataset(other, pairs=30, seed=6)
    assert (other / "images" / "s6p0000_0.png").read_bytes() != (out / "images" / "s5p0000_0.png").read_bytes()


def test_layout_and_counts(dataset):
    out, result = dataset
    assert (result.pairs, result.people, result.images) == (30, 3, 12)  # 12 ordered pairs per person
    rows = read_csv(out / "pairs.csv")
    assert list(rows[0]) == ["source_image", "target_image", "target_pose"] and len(rows) == 30
    images = read_csv(out / "images.csv")
    assert len(images) == 12
    for row in images:
        for column in ("image", "pose", "mask"):
            assert (out / row[column]).is_file()
        assert row["view"] in ("front", "side", "back") and row["texture"] in TEXTURES
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["seed"] == 5 and metadata["size"] == list(DEFAULT_SIZE) and metadata["mask_classes"] == MASK_CLASSES
    assert [entry["garment"]["garment"] for entry in metadata["people"]] == ["s5g0000", "s5g0001", "s5g0002"]


def test_pairs_share_person_and_garment_and_differ_in_pose(dataset):
    out, _ = dataset
    by_image = {row["image"]: row for row in read_csv(out / "images.csv")}
    for row in read_csv(out / "pairs.csv"):
        source, target = by_image[row["source_image"]], by_image[row["target_image"]]
        assert row["target_pose"] == target["pose"]
        assert source["person"] == target["person"] and source["garment"] == target["garment"]
        assert source["top_colour"] == target["top_colour"] and source["texture"] == target["texture"]
        assert source["image"] != target["image"]
        source_points = read_keypoints(out / source["pose"]).points
        target_points = read_keypoints(out / target["pose"]).points
        assert np.abs(source_points - target_points).max() > 2  # pixels: a different pose


def test_a_smaller_dataset_is_a_prefix_of_a_larger_one(dataset, tmp_path):
    out, _ = dataset
    write_dataset(tmp_path, pairs=5, seed=5)
    assert read_csv(tmp_path / "pairs.csv") == read_csv(out / "pairs.csv")[:5]
    assert (tmp_path / "images" / "s5p0000_3.png").read_bytes() == (out / "images" / "s5p0000_3.png").read_bytes()


def test_seeds_give_disjoint_garments():
    first = [sample_garment(0, i) for i in range(60)]
    second = [sample_garment(1, i) for i in range(60)]
    assert not {g.id for g in first} & {g.id for g in second}
    assert not {(g.texture, g.colours) for g in first} & {(g.texture, g.colours) for g in second}
    assert not {g.colours[0] for g in first} & {g.colours[0] for g in second}
    assert {g.texture for g in first} == set(TEXTURES)  # every texture is used
    assert len({g.colours[0] for g in first}) == 60  # and garments of one seed differ too


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


def test_keypoint_files_read_back(dataset):
    out, _ = dataset
    person, garment, posed = render_person(5, 1)
    for k, (_, figure) in enumerate(posed):
        assert read_keypoints(out / "poses" / f"s5p0001_{k}.json") == figure.keypoints


# ----- occlusion ----------------------------------------------------------------------------


def posed(view: str, yaw: float, right_arm: ArmAngles, left_arm: ArmAngles):
    """Person 0 of seed 0 in short sleeves, both arms set, seen from `yaw`."""
    person = sample_person(0, 0)
    garment = dataclasses.replace(sample_garment(0, 0), sleeves="short", texture="solid")
    pose = dataclasses.replace(
        sample_pose(np.random.default_rng(0)), view=view, yaw=yaw, arms=(right_arm, left_arm),
        family="reach", twist=0.0, head_turn=0.0, lean=0.0, side_bend=0.0, shift=(0.0, 0.0),
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


# ----- the command line ---------------------------------------------------------------------


def test_fpdm_synth_writes_a_pairs_file_training_reads(tmp_path):
    from model_core.training import read_pairs

    out = tmp_path / "catalog"
    result = run_fpdm("synth", "--out", out, "--pairs", 14, "--seed", 2, "--size", "96x64")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        f"synth: 14 pairs, 2 people, 8 images (96x64) in {out}; pairs file {out / 'pairs.csv'}"
    ]
    pairs = read_pairs(out / "pairs.csv")  # what `fpdm train fusion --pairs` reads
    assert len(pairs) == 14
    for pair in pairs:
        keypoints = read_keypoints(pair.target_pose)
        assert (keypoints.width, keypoints.height) == (64, 96)
        assert pair.source_image.parent == out / "images"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--size", "10x10"), "too small"),
        (("--size", "tall"), "HEIGHTxWIDTH"),
        (("--pairs", "0"), "--pairs"),
        (("--seed", "-1"), "--seed"),
    ],
)
def test_fpdm_synth_bad_arguments_give_one_error_line(tmp_path, args, message):
    options = {"--pairs": "4", "--size": "64x48", "--seed": "0"}
    options[args[0]] = args[1]
    result = run_fpdm("synth", "--out", tmp_path / "x", *[part for item in options.items() for part in item])
    assert_one_error_line(result, message)
    assert not (tmp_path / "x").exists()


def test_sizes():
    assert parse_size("96x64") == (96, 64) and parse_size("64X48") == (64, 48)
    with pytest.raises(InputError, match="too small"):
        parse_size("31x24")
    with pytest.raises(InputError, match="width"):
        parse_size("64x200")
    with pytest.raises(InputError, match="pairs"):
        write_dataset("unused", pairs=0)


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
            padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
            | padded[:-2, :-2] | padded[:-2, 2:] | padded[2:, :-2] | padded[2:, 2:]
        )
    return grown


def test_catalog_manifest_lists_each_garments_other_poses_with_a_source_photo_and_the_truth(tmp_path):
    from PIL import Image

    from pipeline.manifest import read_manifest
    from pipeline.synthetic import write_catalog_manifest

    catalog = write_catalog_manifest(tmp_path / "example", 3, seed=3, manifest=tmp_path / "example.csv")
    manifest = read_manifest(str(tmp_path / "example.csv"))
    assert not manifest.problems and catalog.jobs == len(manifest.rows) == 9
    assert [row.garment_id for row in manifest.rows] == [g for g in catalog.garments for _ in range(3)]
    assert all(g.endswith(sample_garment(3, i).texture) for i, g in enumerate(catalog.garments))
    for index, garment in enumerate(catalog.garments):
        _, _, figures = render_person(3, index)
        rows = [row for row in manifest.rows if row.garment_id == garment]
        source = np.asarray(Image.open(rows[0].source_image))
        # The source is the person's first front view, or their first pose when none faces the camera.
        views = [pose.view for pose, _ in figures]
        source_index = views.index("front") if "front" in views else 0
        assert np.array_equal(source, np.asarray(figures[source_index][1].image))
        others = [figure for k, (_, figure) in enumerate(figures) if k != source_index]
        assert len({row.variant_id for row in rows}) == 3
        for row, figure in zip(rows, others):
            # Each target pose is that pose's keypoints; truth/ holds the photo in that pose.
            assert np.allclose(read_keypoints(row.target_pose).points, figure.keypoints.points, atol=0.01)
            truth = tmp_path / "example" / garment / "truth" / f"{row.variant_id}.png"
            assert np.array_equal(np.asarray(Image.open(truth)), np.asarray(figure.image))
    # Another seed, other garments.
    assert not set(write_catalog_manifest(tmp_path / "other", 3, seed=4).garments) & set(catalog.garments)
