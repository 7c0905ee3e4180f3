import colorsys
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model_core.errors import InputError
from model_core.keypoints import (
    COCO18_NAMES,
    Fit,
    Keypoints,
    fit_image,
    keypoints_from_deepfashion_txt,
    keypoints_from_openpose,
    parse_keypoints,
    read_keypoints,
)
from model_core.skeletons import JOINT_COLORS, LIMB_COLORS, LIMBS, render_skeleton

# The eight DeepFashion samples: pose/<name>.txt, pose_img/<name>.jpg (750x1101).
DEEPFASHION_POSES = (
    "MEN/Tees_Tanks/id_00004047/01_1_front",
    "MEN/Tees_Tanks/id_00004047/01_2_side",
    "MEN/Tees_Tanks/id_00004047/01_3_back",
    "MEN/Tees_Tanks/id_00004047/01_7_additional",
    "WOMEN/Blouses_Shirts/id_00001530/01_3_back",
    "WOMEN/Blouses_Shirts/id_00001530/01_4_full",
    "WOMEN/Shorts/id_00005138/03_1_front",
    "WOMEN/Shorts/id_00005138/03_4_full",
)
PHOTO_W, PHOTO_H = 750, 1101

# Our renderings overlap the reference JPEGs with IoU 0.962-0.973 on all eight poses (the rest is
# JPEG ringing at limb edges). Moving every keypoint by (4, 4) px already drops it to ~0.30 and by
# 10 px to ~0.07, so 0.9 separates "same pixels" from "nearly" with margin both ways.
MIN_IOU_WITH_REFERENCE = 0.9
MAX_IOU_WHEN_SHIFTED = 0.5
# Neighbouring palette colours are 20 degrees of hue apart; JPEG moves hue by up to ~5 degrees.
MAX_HUE_DIFFERENCE = 10.0


def ink_mask(image, threshold=40):
    """Pixels that are not (JPEG-)black."""
    return np.asarray(image).max(axis=2) > threshold


def iou(mask_a, mask_b):
    return (mask_a & mask_b).sum() / (mask_a | mask_b).sum()


def hue_degrees(rgb):
    red, green, blue = (np.asarray(rgb, dtype=np.float64) / 255.0).tolist()
    return colorsys.rgb_to_hsv(red, green, blue)[0] * 360.0


def hue_difference(rgb_a, rgb_b):
    difference = abs(hue_degrees(rgb_a) - hue_degrees(rgb_b)) % 360.0
    return min(difference, 360.0 - difference)


def load_pose(deepfashion_dir, name):
    pose_path = deepfashion_dir / "pose" / f"{name}.txt"
    keypoints = read_keypoints(pose_path, width=PHOTO_W, height=PHOTO_H)
    reference = Image.open(deepfashion_dir / "pose_img" / f"{name}.jpg").convert("RGB")
    return keypoints, reference


def shifted(keypoints, dx, dy):
    points = keypoints.points.copy()
    points[keypoints.visible, 0] += dx
    points[keypoints.visible, 1] += dy
    return Keypoints(points, keypoints.width, keypoints.height)


def make_keypoints(named_points, width=100, height=200):
    """Keypoints with only the given {name: (x, y)} visible."""
    points = np.zeros((18, 3), dtype=np.float32)
    for name, (x, y) in named_points.items():
        points[COCO18_NAMES.index(name)] = (x, y, 1.0)
    return Keypoints(points, width, height)


# ---------------------------------------------------------------------------------------------
# Rendering against the reference renderings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEEPFASHION_POSES)
def test_render_lands_limbs_on_reference_pixels(deepfashion_dir, name):
    keypoints, reference = load_pose(deepfashion_dir, name)
    ours = render_skeleton(keypoints)
    assert ours.size == reference.size == (PHOTO_W, PHOTO_H)
    assert ours.mode == "RGB"

    reference_mask = ink_mask(reference)
    assert iou(ink_mask(ours), reference_mask) > MIN_IOU_WITH_REFERENCE

    # The comparison must be able to fail: a slightly moved skeleton scores clearly lower.
    moved = render_skeleton(shifted(keypoints, 4, 4))
    assert iou(ink_mask(moved), reference_mask) < MAX_IOU_WHEN_SHIFTED


@pytest.mark.parametrize("name", DEEPFASHION_POSES)
def test_limb_colours_match_reference_at_midpoints(deepfashion_dir, name):
    keypoints, reference = load_pose(deepfashion_dir, name)
    ours = np.asarray(render_skeleton(keypoints))
    theirs = np.asarray(reference)

    checked = 0
    for limb, (start, end) in enumerate(LIMBS):
        if not (keypoints.visible[start] and keypoints.visible[end]):
            continue
        x, y = np.floor((keypoints.points[start, :2] + keypoints.points[end, :2]) / 2).astype(int)
        assert theirs[y, x].max() > 100, f"reference has no limb {limb} at its midpoint"
        difference = hue_difference(ours[y, x], theirs[y, x])
        assert difference < MAX_HUE_DIFFERENCE, (
            f"limb {limb} ({COCO18_NAMES[start]}-{COCO18_NAMES[end]}): ours {ours[y, x]}, "
            f"reference {theirs[y, x]}, hue off by {difference:.1f} degrees"
        )
        checked += 1
    assert checked >= 8  # every sample shows at least 8 limbs (the fewest: a back view)


def test_palette_is_openpose_as_the_reference_shows_it(deepfashion_dir):
    keypoints, reference = load_pose(deepfashion_dir, DEEPFASHION_POSES[0])
    theirs = np.asarray(reference)
    # Neck-nose limb is red and neck-right-shoulder blue in the reference (OpenCV's BGR reading
    # of OpenPose's palette), both at 60 % brightness because limbs are blended over black.
    neck_nose = LIMBS.index((1, 0))
    neck_right_shoulder = LIMBS.index((1, 2))
    assert LIMB_COLORS[neck_nose] == (255, 0, 0)
    assert LIMB_COLORS[neck_right_shoulder] == (0, 0, 255)
    for limb in (neck_nose, neck_right_shoulder):
        start, end = LIMBS[limb]
        x, y = np.floor((keypoints.points[start, :2] + keypoints.points[end, :2]) / 2).astype(int)
        expected = 0.6 * np.array(LIMB_COLORS[limb])
        assert np.abs(theirs[y, x] - expected).max() < 15
    assert len(JOINT_COLORS) == 18 and len(LIMB_COLORS) == len(LIMBS) == 17


def test_render_draws_only_limbs_whose_both_ends_are_visible():
    assert not ink_mask(render_skeleton(make_keypoints({})), threshold=0).any()

    # Neck and nose only: one vertical limb plus two dots, nothing else.
    keypoints = make_keypoints({"neck": (50.5, 120.5), "nose": (50.5, 40.5)}, width=100, height=200)
    image = np.asarray(render_skeleton(keypoints, limb_width=8))
    ys, xs = np.nonzero(image.max(axis=2))
    assert xs.min() >= 50 - 4 and xs.max() <= 50 + 4
    assert ys.min() >= 40 - 4 and ys.max() <= 120 + 4
    # Mid-limb: neck-nose colour at 60 %; at the joints' ends their own dot colours show.
    neck_nose_color = np.array(LIMB_COLORS[LIMBS.index((1, 0))])
    np.testing.assert_array_equal(image[80, 50], np.round(0.6 * neck_nose_color))
    np.testing.assert_array_equal(image[40 - 3, 50], JOINT_COLORS[0])


def test_limb_width_scales_with_canvas(deepfashion_dir):
    keypoints, reference = load_pose(deepfashion_dir, DEEPFASHION_POSES[-1])
    for height in (256, 64):
        width = round(height * PHOTO_W / PHOTO_H)
        ours = render_skeleton(keypoints, width, height)
        assert ours.size == (width, height)
        reference_small = reference.resize((width, height), Image.Resampling.BOX)
        ours_ink = ink_mask(ours, threshold=20).mean()
        reference_ink = ink_mask(reference_small, threshold=20).mean()
        # Measured: 0.033 vs 0.033 at 256 px, 0.070 vs 0.059 at 64 px (1 px is the thinnest line).
        assert ours_ink == pytest.approx(reference_ink, rel=0.3)

    # A fixed 8 px limb (right at 1101 px) would be far too heavy at 256 px.
    small = keypoints.fitted(174, 256)
    fixed_width_ink = ink_mask(render_skeleton(small, limb_width=8)).mean()
    assert fixed_width_ink > 2 * ink_mask(render_skeleton(small)).mean()


def test_tiny_canvas_still_shows_every_limb(deepfashion_dir):
    keypoints, _ = load_pose(deepfashion_dir, DEEPFASHION_POSES[-1])
    small = keypoints.fitted(44, 64)
    image = np.asarray(render_skeleton(small))
    for start, end in LIMBS:
        if small.visible[start] and small.visible[end]:
            x, y = np.floor((small.points[start, :2] + small.points[end, :2]) / 2).astype(int)
            assert image[y, x].max() > 0, f"limb {COCO18_NAMES[start]}-{COCO18_NAMES[end]} vanished"


def test_render_fits_keypoints_to_requested_canvas(deepfashion_dir):
    keypoints, _ = load_pose(deepfashion_dir, DEEPFASHION_POSES[0])
    square = render_skeleton(keypoints, 512, 512)
    assert square.size == (512, 512)
    same = render_skeleton(keypoints.fitted(512, 512, mode="pad"))
    np.testing.assert_array_equal(np.asarray(square), np.asarray(same))


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def test_deepfashion_txt_follows_readme_formula(deepfashion_dir):
    path = deepfashion_dir / "pose" / f"{DEEPFASHION_POSES[0]}.txt"
    # Row 0 (nose) is "125 37" in the 256x256 frame; row 9 (right knee) is "-1 -1".
    keypoints = read_keypoints(path, width=PHOTO_W, height=PHOTO_H)
    assert (keypoints.width, keypoints.height) == (PHOTO_W, PHOTO_H)
    np.testing.assert_allclose(keypoints.points[0], [(125 - 40) * 750 / 176, 37 * 1101 / 256, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(keypoints.points[9], [0, 0, 0])
    assert not keypoints.visible[9] and keypoints.visible[0]
    assert keypoints.visible.sum() == 14

    # Default size: DeepFashion's 176x256 evaluation photos.
    default = read_keypoints(path)
    assert (default.width, default.height) == (176, 256)
    np.testing.assert_allclose(default.points[0], [85.0, 37.0, 1.0])


def test_deepfashion_txt_rejects_wrong_row_count():
    with pytest.raises(InputError, match="broken.txt"):
        keypoints_from_deepfashion_txt("1 2\n3 4\n", source="broken.txt")
    with pytest.raises(InputError, match="bad.txt"):
        parse_keypoints("\n".join(["1 x"] * 18), "s3://bucket/poses/bad.txt")


def test_coco18_json_round_trip(tmp_path):
    points = np.zeros((18, 3), dtype=np.float32)
    points[:, 0] = np.arange(18) * 3.25
    points[:, 1] = np.arange(18) * 7.5 + 1
    points[:, 2] = np.linspace(0.1, 1.0, 18)
    points[5] = 0  # a missing point
    keypoints = Keypoints(points, 640, 480)

    data = keypoints.to_json()
    assert data["format"] == "coco18" and data["width"] == 640 and data["height"] == 480
    assert len(data["keypoints"]) == 18 and data["keypoints"][5] == [0.0, 0.0, 0.0]

    path = tmp_path / "person.json"
    path.write_text(json.dumps(data))
    assert read_keypoints(path) == keypoints
    assert parse_keypoints(json.dumps(data).encode(), "s3://bucket/person.json") == keypoints
    assert Keypoints.from_json(json.loads(json.dumps(data))) == keypoints
    assert read_keypoints(path, width=640, height=480) == keypoints
    with pytest.raises(InputError, match="person.json"):
        read_keypoints(path, width=320, height=240)


def openpose_json(flat, **canvas):
    return {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": flat}], **canvas}


def test_openpose_coco18_with_canvas_from_caller_or_file():
    rows = [[10.0 + i, 20.0 + i, 0.9] for i in range(18)]
    rows[10] = [0.0, 0.0, 0.0]  # OpenPose writes missing points as zeros
    flat = [value for row in rows for value in row]

    content = json.dumps(openpose_json(flat))
    from_caller = parse_keypoints(content, "frame_0001_keypoints.json", 320, 240)
    assert (from_caller.width, from_caller.height) == (320, 240)
    np.testing.assert_allclose(from_caller.points[3], [13.0, 23.0, 0.9], rtol=1e-6)
    assert not from_caller.visible[10] and from_caller.visible.sum() == 17

    with_canvas = openpose_json(flat, canvas_width=640, canvas_height=480)
    from_file = keypoints_from_openpose(with_canvas, source="a.json")
    assert (from_file.width, from_file.height) == (640, 480)
    plain_keys = keypoints_from_openpose(openpose_json(flat, width=100, height=50), source="a.json")
    assert (plain_keys.width, plain_keys.height) == (100, 50)
    np.testing.assert_array_equal(from_file.points, from_caller.points)


def test_openpose_body25_maps_to_coco18():
    # BODY_25 keypoint k at (k, 100 + k): COCO-18 takes 0-7 and 9-18, skipping mid-hip (8).
    flat = [value for k in range(25) for value in (float(k), 100.0 + k, 1.0)]
    keypoints = keypoints_from_openpose(openpose_json(flat), 200, 200, source="body25.json")
    expected_body25_index = list(range(8)) + list(range(9, 19))
    np.testing.assert_array_equal(keypoints.points[:, 0], expected_body25_index)
    assert keypoints.points[COCO18_NAMES.index("right_hip"), 0] == 9
    assert keypoints.points[COCO18_NAMES.index("left_ear"), 0] == 18


def test_openpose_errors_name_the_file():
    flat = [1.0] * 54
    with pytest.raises(InputError, match=r"pose\.json.*canvas"):
        parse_keypoints(json.dumps(openpose_json(flat)), "pose.json")
    with pytest.raises(InputError, match=r"empty\.json.*no person"):
        parse_keypoints(json.dumps({"people": []}), "empty.json", 100, 100)
    with pytest.raises(InputError, match=r"short\.json.*18 \(COCO-18\) or 25 \(BODY_25\)"):
        parse_keypoints(json.dumps(openpose_json([1.0] * 30)), "short.json", 100, 100)


@pytest.mark.parametrize(
    "name, content",
    [
        ("pose.csv", "1,2\n"),
        ("pose", "1 2\n"),
        ("garbage.json", "{not json"),
        ("other.json", '{"hello": 1}'),
        ("binary.txt", b"\xff\xfe\x00garbage"),
        ("short.txt", "1 2\n" * 17),
    ],
)
def test_garbage_input_raises_input_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError) as error:
        read_keypoints(path)
    assert name in str(error.value)
    if name in ("pose.csv", "pose", "garbage.json", "other.json"):
        for accepted_format in ("coco18", "OpenPose", "DeepFashion"):
            assert accepted_format in str(error.value)


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="nowhere.json"):
        read_keypoints(tmp_path / "nowhere.json")


def test_keypoints_validation_and_missing_points():
    with pytest.raises(InputError, match=r"\(18, 3\)"):
        Keypoints(np.zeros((17, 3)), 10, 10)
    points = np.zeros((18, 3))
    points[2, 0] = np.nan
    with pytest.raises(InputError, match="right_shoulder"):
        Keypoints(points, 10, 10)
    with pytest.raises(InputError, match="width"):
        Keypoints(np.zeros((18, 3)), 0, 10)

    # Confidence 0 means missing: its x, y are zeroed and it has no part in the bbox.
    points = np.zeros((18, 3), dtype=np.float32)
    points[0] = (5, 6, 0)
    points[1] = (2, 3, 1)
    points[4] = (8, 1, 0.5)
    keypoints = Keypoints(points, 10, 10)
    np.testing.assert_array_equal(keypoints.points[0], [0, 0, 0])
    assert keypoints.visible.tolist() == [i in (1, 4) for i in range(18)]
    assert keypoints.bbox() == (2.0, 1.0, 8.0, 3.0)
    assert Keypoints(np.zeros((18, 3)), 10, 10).bbox() is None
    with pytest.raises(ValueError):
        keypoints.points[1, 0] = 3  # read-only, like the frozen dataclass around it


# ---------------------------------------------------------------------------------------------
# Geometry: photos and keypoints move together
# ---------------------------------------------------------------------------------------------


def test_fit_between_is_uniform_and_centred():
    tall_pad = Fit.between(100, 200, 300, 300, "pad")
    assert (tall_pad.scale, tall_pad.offset_x, tall_pad.offset_y) == (1.5, 75.0, 0.0)
    tall_crop = Fit.between(100, 200, 300, 300, "crop")
    assert (tall_crop.scale, tall_crop.offset_x, tall_crop.offset_y) == (3.0, 0.0, -150.0)
    wide_pad = Fit.between(400, 100, 200, 200, "pad")
    assert (wide_pad.scale, wide_pad.offset_x, wide_pad.offset_y) == (0.5, 0.0, 75.0)
    wide_crop = Fit.between(400, 100, 200, 200, "crop")
    assert (wide_crop.scale, wide_crop.offset_x, wide_crop.offset_y) == (2.0, -300.0, 0.0)
    assert (wide_crop.width, wide_crop.height) == (200, 200)
    with pytest.raises(ValueError):
        Fit.between(100, 100, 50, 50, "stretch")

    points = np.zeros((18, 3), dtype=np.float32)
    points[0] = (10, 20, 0.7)
    fitted = tall_pad.apply_to_points(points)
    np.testing.assert_allclose(fitted[0], [90.0, 30.0, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(fitted[1:], 0)  # missing stay missing


def red_dot_centre(image):
    pixels = np.asarray(image).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
    ys, xs = np.nonzero(red)
    assert len(xs) > 0, "red dot not found"
    return xs.mean() + 0.5, ys.mean() + 0.5  # pixel (i, j) covers [i, i + 1)


@pytest.mark.parametrize("source_size", [(120, 300), (300, 120)], ids=["tall", "wide"])
@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_photo_and_keypoints_move_together(source_size, mode):
    source_w, source_h = source_size
    photo = Image.new("RGB", source_size, (128, 128, 128))
    draw = ImageDraw.Draw(photo)
    # Two dots centred on whole pixels: one kept in every fit, one near the top-left corner that
    # "crop" cuts off. A keypoint at pixel (i, j) sits at its centre (i + 0.5, j + 0.5).
    kept_pixel = (int(source_w * 0.4), int(source_h * 0.55))
    edge_pixel = (3, 3)
    for (x, y), color in ((kept_pixel, (255, 0, 0)), (edge_pixel, (0, 0, 255))):
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    kept_xy = (kept_pixel[0] + 0.5, kept_pixel[1] + 0.5)
    edge_xy = (edge_pixel[0] + 0.5, edge_pixel[1] + 0.5)
    keypoints = make_keypoints({"nose": kept_xy, "neck": edge_xy}, width=source_w, height=source_h)

    fitted_photo = fit_image(photo, 200, 160, mode=mode)
    fitted_keypoints = keypoints.fitted(200, 160, mode=mode)
    assert fitted_photo.size == (200, 160) and fitted_photo.mode == "RGB"
    assert (fitted_keypoints.width, fitted_keypoints.height) == (200, 160)

    x, y = red_dot_centre(fitted_photo)
    nose = fitted_keypoints.points[COCO18_NAMES.index("nose")]
    assert nose[2] == 1.0
    assert abs(x - nose[0]) < 0.75 and abs(y - nose[1]) < 0.75

    # No stretch: one scale for both axes, the same for photo and points.
    fit = Fit.between(source_w, source_h, 200, 160, mode)
    expected = np.array(kept_xy) * fit.scale + [fit.offset_x, fit.offset_y]
    np.testing.assert_allclose(nose[:2], expected, rtol=1e-5)

    neck_visible = fitted_keypoints.visible[COCO18_NAMES.index("neck")]
    if mode == "pad":
        assert neck_visible  # pad shows the whole picture
        # 200x160 is wider than the tall photo and taller than the wide one: a border either way.
        np.testing.assert_array_equal(np.asarray(fitted_photo)[0, 0], [255, 255, 255])
    else:
        assert not neck_visible  # cut off by the crop, so it becomes missing
        neck = fitted_keypoints.points[COCO18_NAMES.index("neck")]
        np.testing.assert_array_equal(neck, [0, 0, 0])


def test_fit_image_pads_with_given_colour_and_keeps_aspect():
    # A 100x200 white square-checking picture into 200x200: a 100 px wide strip in the middle.
    photo = Image.new("L", (100, 200), 255)
    fitted = np.asarray(fit_image(photo, 200, 200, fill=(0, 0, 0)))
    assert fitted.shape == (200, 200, 3)
    columns_with_photo = np.flatnonzero(fitted[100].max(axis=1) > 0)
    assert (columns_with_photo.min(), columns_with_photo.max()) == (50, 149)
    assert fitted[:, :50].max() == 0 and fitted[:, 150:].max() == 0


def _coco18(points, width=100, height=200) -> str:
    return json.dumps({"format": "coco18", "width": width, "height": height, "keypoints": points})


STANDING = [[50.0, 20.0 + 8 * i, 1.0] for i in range(18)]
BIG = "9" * 400


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("wide.json", _coco18(STANDING, width=20000), "width is 20000, larger than 16384"),
        ("huge.json", _coco18(STANDING).replace('"width": 100', f'"width": {BIG}'), "width is a 400-digit number"),
        (
            "openpose.json",
            json.dumps({"canvas_width": 1, "canvas_height": 1, "people": []}).replace(
                '"canvas_width": 1', f'"canvas_width": {BIG}'
            ),
            "canvas width is a 400-digit number",
        ),
        ("far.json", _coco18(STANDING).replace("[50.0, 20.0, 1.0]", f"[{BIG}, 20.0, 1.0]"), "finite numbers"),
        ("inf.json", _coco18(STANDING).replace("[50.0, 20.0, 1.0]", "[1e400, 20.0, 1.0]"), "infinite"),
        ("nan.json", _coco18(STANDING).replace("[50.0, 20.0, 1.0]", "[NaN, 20.0, 1.0]"), "NaN"),
        ("negative.json", _coco18([[-60.0, y, c] for _, y, c in STANDING]), "keypoints off the 100x200 canvas: nose, neck"),
        ("off.json", _coco18(STANDING[:17] + [[50.0, 900.0, 1.0]]), "keypoints off the 100x200 canvas: left_ear"),
        ("empty.json", _coco18([[0.0, 0.0, 0.0]] * 18), "no visible keypoint"),
        ("deep.json", "[" * 60_000 + "]" * 60_000, "JSON nested 60000 levels deep, more than 32"),
        ("digits.json", "1" * 5000, "a number too long to read"),
        ("off.txt", "\n".join(["300 300"] * 18), "keypoints off the 176x256 canvas"),
    ],
)
def test_a_pose_file_that_would_draw_nothing_or_break_the_batch_is_refused_naming_it(name, content, message):
    with pytest.raises(InputError, match=f"^{name}: ") as raised:
        parse_keypoints(content.encode(), name)
    assert message in str(raised.value)


def test_points_just_past_the_canvas_edge_are_kept():
    keypoints = parse_keypoints(_coco18(STANDING[:17] + [[105.0, 199.0, 1.0]]), "edge.json")
    assert keypoints.points[17, 0] == 105.0


def test_errors_about_a_pose_file_never_quote_its_contents():
    secret = "root:x:0:0:root:/root:/bin/bash"
    for content in (
        _coco18([[secret, 1, 1]] * 18),
        json.dumps({"format": "coco18", "width": secret * 3, "height": 10, "keypoints": STANDING}),
        json.dumps({"people": [{"pose_keypoints_2d": [secret] * 54}], "canvas_width": 10, "canvas_height": 10}),
    ):
        with pytest.raises(InputError) as raised:
            parse_keypoints(content, "pose.json")
        assert "root:" not in str(raised.value)


def test_measuring_nesting_reads_an_unterminated_run_of_escapes_in_one_pass():
    """A string pattern with its escapes backtracked quadratically on `"\\` repeated with no
    closing quote: a megabyte of it held planning (and the lease's heartbeat) for 40 minutes."""
    from model_core.keypoints import json_nesting

    assert json_nesting("[[" + '"\\' * 500_000) == 2
    assert json_nesting('["\\"[", [[2]], "\\\\"]') == 3  # an escaped quote and an escaped backslash
