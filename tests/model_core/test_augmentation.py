"""Stage-2 augmentations, each on a synthetic pair (a stick figure and its keypoints), and on the
training tensors: what each does, that each switches off alone, and that a seed replays them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from stick_figures import draw_person, make_pairs, random_pose

from model_core.augmentation import Augmentation, PairView, downsampled
from model_core.keypoints import COCO18_NAMES, Keypoints
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training import REFERENCE_AUGMENTATION
from model_core.training_data import PairTensors, read_pairs

ONLY = {  # each augmentation alone, always applied
    "source_as_target": Augmentation(source_as_target=1, low_resolution_source=0, keypoint_jitter=0, flip=0),
    "low_resolution_source": Augmentation(source_as_target=0, low_resolution_source=1, keypoint_jitter=0, flip=0),
    "keypoint_jitter": Augmentation(source_as_target=0, low_resolution_source=0, flip=0),
    "flip": Augmentation(source_as_target=0, low_resolution_source=0, keypoint_jitter=0, flip=1),
}


@pytest.fixture(scope="module")
def pair() -> PairView:
    rng = np.random.default_rng(3)
    source_pose, target_pose = random_pose(rng), random_pose(rng)
    garment = (200, 40, 60)
    return PairView(draw_person(source_pose, garment), draw_person(target_pose, garment), target_pose)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_the_defaults_are_the_reference_recipe():
    assert REFERENCE_AUGMENTATION == Augmentation()
    a = Augmentation()
    assert (a.source_as_target, a.low_resolution_source, a.low_resolution_scale, a.flip) == (0.05, 0.5, 0.5, 0.5)
    assert a.keypoint_jitter * 550 == pytest.approx(1.0)  # 1 px on the reference's 550-px pose canvas
    assert Augmentation.off().is_off and not a.is_off


def test_off_changes_nothing(pair):
    out = Augmentation.off().apply(pair, np.random.default_rng(0))
    assert out.source is pair.source and out.target is pair.target and out.keypoints == pair.keypoints


def test_source_as_target_trains_on_the_target_photo_as_its_own_source(pair):
    out = ONLY["source_as_target"].apply(pair, np.random.default_rng(0))
    assert out.source is pair.target and out.target is pair.target and out.keypoints == pair.keypoints


def test_a_low_resolution_source_keeps_its_size_and_loses_detail(pair):
    out = ONLY["low_resolution_source"].apply(pair, np.random.default_rng(0))
    assert out.source.size == pair.source.size and out.target is pair.target
    assert np.array_equal(pixels(out.source), pixels(downsampled(pair.source, 0.5)))
    # One-pixel stripes do not survive half the resolution; wide ones do.
    stripes = Image.fromarray(np.tile(np.array([[0], [255]], np.uint8), (32, 48)).repeat(3).reshape(64, 48, 3))
    assert pixels(downsampled(stripes, 0.5)).std() < 0.2 * pixels(stripes).std()
    wide = Image.fromarray(np.tile(np.array([[0]] * 8 + [[255]] * 8, np.uint8), (4, 48)).repeat(3).reshape(64, 48, 3))
    assert pixels(downsampled(wide, 0.5)).std() > 0.8 * pixels(wide).std()


def test_keypoint_jitter_moves_visible_points_by_sigma_and_keeps_missing_ones_missing():
    points = np.column_stack([np.linspace(100, 270, 18), np.linspace(50, 500, 18), np.ones(18)]).astype(np.float32)
    points[3] = 0  # right elbow missing
    keypoints = Keypoints(points, 375, 550)  # the reference's pose canvas: sigma 1 px
    view = PairView(Image.new("RGB", (375, 550)), Image.new("RGB", (375, 550)), keypoints)
    rng = np.random.default_rng(0)
    offsets = []
    for _ in range(200):
        moved = ONLY["keypoint_jitter"].apply(view, rng).keypoints
        assert not moved.visible[3] and moved.visible.sum() == 17
        offsets.append(moved.points[moved.visible, :2] - points[keypoints.visible, :2])
    offsets = np.concatenate(offsets)
    assert abs(offsets.mean()) < 0.05 and offsets.std() == pytest.approx(1.0, abs=0.05)

    # Points stay on the canvas.
    edge = Keypoints(np.tile([[0.0, 549.9, 1.0]], (18, 1)), 375, 550)
    big = Augmentation(source_as_target=0, low_resolution_source=0, flip=0, keypoint_jitter=0.05)
    moved = big.apply(PairView(view.source, view.target, edge), np.random.default_rng(1)).keypoints
    assert (moved.points[:, 0] >= 0).all() and (moved.points[:, 1] < 550).all() and moved.visible.all()


def test_a_flip_mirrors_both_photos_and_the_pose_with_left_and_right_swapped(pair):
    out = ONLY["flip"].apply(pair, np.random.default_rng(0))
    assert np.array_equal(pixels(out.source), pixels(ImageOps.mirror(pair.source)))
    assert np.array_equal(pixels(out.target), pixels(ImageOps.mirror(pair.target)))
    width = pair.keypoints.width
    before, after = pair.keypoints.points, out.keypoints.points
    for name in ("wrist", "elbow", "shoulder", "hip", "knee", "ankle", "eye", "ear"):
        right, left = COCO18_NAMES.index(f"right_{name}"), COCO18_NAMES.index(f"left_{name}")
        # The mirrored right wrist is where the left one would be: x flipped, label swapped.
        assert after[right, 0] == pytest.approx(width - before[left, 0]) and after[right, 1] == before[left, 1]
        assert after[left, 0] == pytest.approx(width - before[right, 0]) and after[left, 1] == before[right, 1]
    nose = COCO18_NAMES.index("nose")
    assert after[nose, 0] == pytest.approx(width - before[nose, 0])
    # The mirrored figure's right wrist (left of the original) is drawn where the mirrored photo has it.
    wrist = after[COCO18_NAMES.index("right_wrist")].astype(int)
    assert pixels(out.target)[wrist[1], wrist[0]].tolist() != [235, 235, 230]  # skin, not background


def test_each_switch_is_independent_and_a_seed_replays_the_draws(pair):
    full = Augmentation(source_as_target=0.5, low_resolution_source=0.5, keypoint_jitter=0.01, flip=0.5)
    a = [full.apply(pair, np.random.default_rng([0, step])) for step in range(12)]
    b = [full.apply(pair, np.random.default_rng([0, step])) for step in range(12)]
    for x, y in zip(a, b, strict=True):
        assert x.keypoints == y.keypoints and np.array_equal(pixels(x.source), pixels(y.source))
    flipped = [np.array_equal(pixels(x.target), pixels(ImageOps.mirror(pair.target))) for x in a]
    assert any(flipped) and not all(flipped)
    # Without the flip, the other augmentations draw the same: the jitter is the unflipped one.
    no_flip = Augmentation(source_as_target=0.5, low_resolution_source=0.5, keypoint_jitter=0.01, flip=0)
    for step, x in enumerate(a):
        y = no_flip.apply(pair, np.random.default_rng([0, step]))
        if not flipped[step]:
            assert x.keypoints == y.keypoints and np.array_equal(pixels(x.source), pixels(y.source))


def test_training_tensors_are_augmented_afresh_on_each_visit(tmp_path):
    csv = make_pairs(tmp_path, people=2, poses_per_person=1, seed=0)
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    pairs = read_pairs(csv)
    plain = PairTensors(pairs, pipe)
    assert torch.equal(PairTensors(pairs, pipe, Augmentation.off()).item(0)["target"], plain.item(0)["target"])

    flipping = PairTensors(pairs, pipe, ONLY["flip"])
    flipped = flipping.item(0, np.random.default_rng(0))
    assert torch.equal(flipped["target"], plain.item(0)["target"].flip(-1))  # mirrored in the model's frame
    assert torch.equal(flipped["source_encoder_pixels"], plain.item(0)["source_encoder_pixels"].flip(-1))
    assert not torch.equal(flipped["skeleton"], plain.item(0)["skeleton"])

    reference = PairTensors(pairs, pipe, REFERENCE_AUGMENTATION)
    visits = [reference.item(0, np.random.default_rng([0, step]))["skeleton"] for step in range(4)]
    assert not all(torch.equal(visits[0], v) for v in visits[1:])  # each visit draws anew
    assert torch.equal(visits[2], reference.item(0, np.random.default_rng([0, 2]))["skeleton"])
    with pytest.raises(ValueError, match="needs a generator"):
        reference.item(0)
