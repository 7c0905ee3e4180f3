"""COCO-18 body keypoints, the model's pose input: reading them (coco18, OpenPose and DeepFashion
files) and fitting them, with their photo, to a canvas. The skeleton images drawn from them are
in `skeletons`. Only numpy and Pillow are used.

Coordinates are pixels of a `width x height` canvas: x to the right, y down, pixel (i, j) covers
[i, i + 1) x [j, j + 1).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from model_core.errors import InputError

COCO18_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
NUM_KEYPOINTS = len(COCO18_NAMES)
# The keypoint file formats `parse_keypoints` reads, by suffix: coco18 or OpenPose JSON, DeepFashion text.
KEYPOINT_SUFFIXES = (".json", ".txt")

# For each COCO-18 index, the index of the same joint on the other side of the body: relabels a
# pose as seen from behind, or (with x flipped) in a mirror.
LEFT_RIGHT_SWAP: tuple[int, ...] = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)


# OpenPose BODY_25 index for each COCO-18 keypoint (BODY_25 adds mid-hip at 8 and feet at 19+).
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

# DeepFashion keypoint files use a 256x256 frame with the 176x256 photo centred in it.
DEEPFASHION_FRAME_MARGIN_X = 40.0
DEEPFASHION_PHOTO_SIZE = (176, 256)

ACCEPTED_FORMATS = (
    'coco18 JSON (.json with "format": "coco18"), OpenPose JSON (.json with "people"), '
    'or DeepFashion keypoints (.txt, 18 rows "x y")'
)

FIT_MODES = ("pad", "crop")

# What a keypoint file may describe: a canvas no larger than any photo the model takes, and
# points on it, give or take a margin (a fraction of the canvas side) for a foot or a hand just
# past the edge. A pose that lies off its canvas would draw an empty skeleton.
MAX_CANVAS_SIDE = 16384
CANVAS_MARGIN = 0.1
# coco18 and OpenPose files nest four levels deep; anything far deeper is not a pose file, and
# json's parser would recurse through it.
MAX_JSON_NESTING = 32


@dataclass(frozen=True)
class Fit:
    """How a (src_w x src_h) picture maps onto a (dst_w x dst_h) canvas without stretching:
    one uniform scale, then an offset. mode "pad": whole picture visible, centred, borders
    filled; mode "crop": canvas filled, centred, overflow cut."""

    scale: float
    offset_x: float
    offset_y: float
    width: int
    height: int

    @classmethod
    def between(cls, src_w: int, src_h: int, dst_w: int, dst_h: int, mode: str = "pad") -> Fit:
        for name, size in (("src_w", src_w), ("src_h", src_h), ("dst_w", dst_w), ("dst_h", dst_h)):
            if size <= 0:
                raise ValueError(f"Fit.between: {name} must be positive, got {size}")
        if mode == "pad":
            scale = min(dst_w / src_w, dst_h / src_h)
        elif mode == "crop":
            scale = max(dst_w / src_w, dst_h / src_h)
        else:
            raise ValueError(f"Fit.between: mode must be one of {FIT_MODES}, got {mode!r}")
        offset_x = (dst_w - src_w * scale) / 2
        offset_y = (dst_h - src_h * scale) / 2
        return cls(scale=scale, offset_x=offset_x, offset_y=offset_y, width=int(dst_w), height=int(dst_h))

    def apply_to_points(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) x, y, confidence rows onto the canvas; missing rows stay all zero."""
        points = np.asarray(points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"Fit.apply_to_points: expected shape (N, 3), got {points.shape}")
        visible = points[:, 2] > 0
        fitted = np.zeros_like(points)
        fitted[visible, 0] = points[visible, 0] * self.scale + self.offset_x
        fitted[visible, 1] = points[visible, 1] * self.scale + self.offset_y
        fitted[visible, 2] = points[visible, 2]
        return fitted


@dataclass(frozen=True)
class Keypoints:
    """COCO-18 keypoints in pixel coordinates of a width x height canvas."""

    points: np.ndarray  # float32 (18, 3): x, y, confidence; confidence 0 = missing (x, y then 0)
    width: int
    height: int

    def __post_init__(self):
        try:
            points = np.array(self.points, dtype=np.float32)  # a copy, so callers can't change ours
        except (TypeError, ValueError, OverflowError):
            # numpy's message would quote the offending value, which may be any text of the file.
            raise InputError("keypoints are not a numeric (18, 3) array of finite numbers") from None
        if points.shape != (NUM_KEYPOINTS, 3):
            raise InputError(f"keypoints must have shape (18, 3) (x, y, confidence), got {points.shape}")
        if not np.isfinite(points).all():
            bad = [COCO18_NAMES[i] for i in np.flatnonzero(~np.isfinite(points).all(axis=1))]
            raise InputError(f"keypoints contain NaN or infinite values at {', '.join(bad)}")
        if (points[:, 2] < 0).any():
            raise InputError("keypoint confidences must be >= 0 (0 marks a missing point)")
        points[points[:, 2] == 0] = 0.0
        points.setflags(write=False)

        for name in ("width", "height"):
            size = getattr(self, name)
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
                raise InputError(f"keypoint canvas {name} must be a positive integer, got {size!r}")
            object.__setattr__(self, name, int(size))
        object.__setattr__(self, "points", points)

    # The generated __eq__/__hash__ would compare numpy arrays as truth values, which raises.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keypoints):
            return NotImplemented
        return self.width == other.width and self.height == other.height and np.array_equal(self.points, other.points)

    def __hash__(self) -> int:
        return hash((self.width, self.height, self.points.tobytes()))

    @property
    def visible(self) -> np.ndarray:
        return self.points[:, 2] > 0

    def to_json(self) -> dict:
        return {
            "format": "coco18",
            "width": self.width,
            "height": self.height,
            "keypoints": [[float(x), float(y), float(score)] for x, y, score in self.points],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "<keypoints>") -> Keypoints:
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != "coco18":
            raise InputError(f'{source}: expected "format": "coco18", got {data.get("format")!r}')
        width = _positive_int(data.get("width"), "width", source)
        height = _positive_int(data.get("height"), "height", source)
        rows = data.get("keypoints")
        if not isinstance(rows, list) or len(rows) != NUM_KEYPOINTS:
            raise InputError(f'{source}: "keypoints" must be a list of 18 [x, y, score] rows')
        return _keypoints(rows, width, height, source)

    def fitted(self, width: int, height: int, mode: str = "pad") -> Keypoints:
        """The same keypoints after `fit_image(photo, width, height, mode)`; points that end up
        outside the new canvas (crop) become missing."""
        fit = Fit.between(self.width, self.height, width, height, mode)
        points = fit.apply_to_points(self.points)
        inside_x = (points[:, 0] >= 0) & (points[:, 0] < width)
        inside_y = (points[:, 1] >= 0) & (points[:, 1] < height)
        inside = inside_x & inside_y
        points[~inside] = 0.0
        return Keypoints(points, width, height)

    def bbox(self) -> tuple[float, float, float, float] | None:
        """x0, y0, x1, y1 of the visible points, or None if there are none."""
        visible_points = self.points[self.visible]
        if len(visible_points) == 0:
            return None
        x0, y0 = visible_points[:, :2].min(axis=0)
        x1, y1 = visible_points[:, :2].max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


def fit_image(
    image: Image.Image,
    width: int,
    height: int,
    mode: str = "pad",
    fill: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Scale `image` uniformly onto a width x height RGB canvas (see `Fit`). Pad colour: white
    for photos (catalog background); pass (0, 0, 0) for skeletons."""
    fit = Fit.between(image.width, image.height, width, height, mode)
    fill = tuple(fill)
    image = _to_rgb(image, fill)
    canvas = Image.new("RGB", (width, height), fill)

    # Destination pixels the picture covers fully; the source box is derived from them through the
    # same scale and offset as Fit.apply_to_points, so photo and keypoints stay aligned exactly.
    # Partly covered border pixels (under one pixel) keep the fill colour.
    eps = 1e-6
    left = max(0, math.ceil(fit.offset_x - eps))
    top = max(0, math.ceil(fit.offset_y - eps))
    right = min(width, math.floor(fit.offset_x + image.width * fit.scale + eps))
    bottom = min(height, math.floor(fit.offset_y + image.height * fit.scale + eps))
    if right <= left or bottom <= top:
        return canvas
    source_box = (
        min(max((left - fit.offset_x) / fit.scale, 0.0), image.width),
        min(max((top - fit.offset_y) / fit.scale, 0.0), image.height),
        min(max((right - fit.offset_x) / fit.scale, 0.0), image.width),
        min(max((bottom - fit.offset_y) / fit.scale, 0.0), image.height),
    )
    resized = image.resize((right - left, bottom - top), Image.Resampling.LANCZOS, box=source_box)
    canvas.paste(resized, (left, top))
    return canvas


def _to_rgb(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    # Transparent areas should look like the padding, not like whatever RGB hides under alpha 0.
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    background = Image.new("RGBA", image.size, fill + (255,))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


# --------------------------------------------------------------------------------------------
# Reading keypoint files
# --------------------------------------------------------------------------------------------


def read_keypoints(
    path, width: int | None = None, height: int | None = None, default_size: tuple[int, int] | None = None
) -> Keypoints:
    """Read a coco18 JSON, OpenPose JSON (.json) or DeepFashion (.txt) keypoint file.

    width/height: for OpenPose, the canvas the points were detected on (else taken from the
    file); for DeepFashion, the photo size to scale to (default 176x256); for coco18, the size
    the file must declare.
    default_size: (width, height) of the canvas for files that state none (DeepFashion, OpenPose
    without canvas_width/canvas_height); files that state theirs keep it. A target pose read
    beside a photo passes the photo's size here.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read keypoint file: {error.strerror or error}") from None
    return parse_keypoints(data, str(path), width, height, default_size)


def parse_keypoints(
    data: bytes | str,
    name: str,
    width: int | None = None,
    height: int | None = None,
    default_size: tuple[int, int] | None = None,
) -> Keypoints:
    """`read_keypoints` on content already read (e.g. from S3); `name` picks the format by its
    suffix and names the file in error messages."""
    if (width is None) != (height is None):
        raise ValueError(f"{name}: give both width and height, or neither")
    suffix = PurePosixPath(str(name)).suffix.lower()
    if suffix not in KEYPOINT_SUFFIXES:
        kind = repr(suffix) if suffix else "(no suffix)"
        raise InputError(f"{name}: unknown keypoint file type {kind}; accepted: {ACCEPTED_FORMATS}")

    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{name}: not UTF-8 text; accepted: {ACCEPTED_FORMATS}") from None
    else:
        text = data

    if suffix == ".txt":
        if width is None:
            width, height = default_size or DEEPFASHION_PHOTO_SIZE
        return _on_canvas(keypoints_from_deepfashion_txt(text, width, height, source=name), name)

    content = load_json(text, name)
    if isinstance(content, dict) and content.get("format") == "coco18":
        keypoints = Keypoints.from_json(content, source=name)
        if width is not None and (width, height) != (keypoints.width, keypoints.height):
            raise InputError(
                f"{name}: keypoints are for a {keypoints.width}x{keypoints.height} canvas, expected {width}x{height}"
            )
        return _on_canvas(keypoints, name)
    if isinstance(content, dict) and "people" in content:
        if width is None and default_size is not None and not _openpose_canvas(content):
            width, height = default_size
        return _on_canvas(keypoints_from_openpose(content, width, height, source=name), name)
    raise InputError(f"{name}: JSON is neither coco18 nor OpenPose; accepted: {ACCEPTED_FORMATS}")


def _openpose_canvas(data: dict) -> tuple[int, int] | None:
    """The canvas an OpenPose file states (canvas_width/canvas_height, or width/height), if any."""
    width = data.get("canvas_width", data.get("width"))
    height = data.get("canvas_height", data.get("height"))
    return None if width is None or height is None else (width, height)


def keypoints_from_openpose(
    data: dict, width: int | None = None, height: int | None = None, source: str = "<openpose>"
) -> Keypoints:
    """The first person of an OpenPose JSON (COCO-18 or BODY_25 model)."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected an OpenPose JSON object, got {type(data).__name__}")

    if width is None or height is None:
        width, height = _openpose_canvas(data) or (None, None)
        if width is None or height is None:
            raise InputError(f"{source}: OpenPose JSON has no canvas size (canvas_width/canvas_height) and none was given")
    width = _positive_int(width, "canvas width", source)
    height = _positive_int(height, "canvas height", source)

    people = data.get("people")
    if not isinstance(people, list):
        raise InputError(f'{source}: "people" must be a list')
    if len(people) == 0:
        raise InputError(f"{source}: no person in OpenPose JSON")
    person = people[0]
    # "pose_keypoints" is what OpenPose wrote before version 1.2.
    flat = None
    if isinstance(person, dict):
        flat = person.get("pose_keypoints_2d", person.get("pose_keypoints"))
    if flat is None:
        raise InputError(f'{source}: first person has no "pose_keypoints_2d"')
    try:
        values = np.asarray(flat, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f'{source}: "pose_keypoints_2d" must be a list of numbers') from None

    if values.size == NUM_KEYPOINTS * 3:
        points = values.reshape(NUM_KEYPOINTS, 3)
    elif values.size == 25 * 3:
        points = values.reshape(25, 3)[list(BODY25_TO_COCO18)]
    else:
        raise InputError(
            f"{source}: expected 18 (COCO-18) or 25 (BODY_25) keypoints of x, y, confidence, got {values.size} values"
        )
    return _keypoints(points, width, height, source)


def keypoints_from_deepfashion_txt(
    text: str,
    width: int = DEEPFASHION_PHOTO_SIZE[0],
    height: int = DEEPFASHION_PHOTO_SIZE[1],
    source: str = "<deepfashion txt>",
) -> Keypoints:
    """18 rows "x y" in DeepFashion's 256x256 frame ("-1 -1" = missing), scaled to a
    width x height photo."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) != NUM_KEYPOINTS or any(len(row) != 2 for row in rows):
        raise InputError(f'{source}: expected 18 rows of "x y" (DeepFashion keypoints), got {len(rows)} rows')
    try:
        frame_xy = np.array(rows, dtype=np.float64)
    except ValueError:
        raise InputError(f"{source}: DeepFashion keypoints must be numbers") from None
    if not np.isfinite(frame_xy).all():
        raise InputError(f"{source}: DeepFashion keypoints contain NaN or infinite values")

    photo_w, photo_h = DEEPFASHION_PHOTO_SIZE
    missing = (frame_xy < 0).any(axis=1)  # "-1 -1"
    points = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
    points[:, 0] = (frame_xy[:, 0] - DEEPFASHION_FRAME_MARGIN_X) * width / photo_w
    points[:, 1] = frame_xy[:, 1] * height / photo_h
    points[:, 2] = 1.0
    points[missing] = 0.0
    return _keypoints(points, width, height, source)


def load_json(text: str, name: str):
    """JSON text parsed, with one InputError naming `name` for anything unusable: invalid JSON,
    nesting deeper than MAX_JSON_NESTING (refused before the parser recurses into it), numbers
    too long to convert."""
    depth = json_nesting(text)
    if depth > MAX_JSON_NESTING:
        raise InputError(f"{name}: JSON nested {depth} levels deep, more than {MAX_JSON_NESTING}; accepted: {ACCEPTED_FORMATS}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{name}: not valid JSON ({error.msg} at line {error.lineno}); accepted: {ACCEPTED_FORMATS}") from None
    except (ValueError, RecursionError):
        raise InputError(f"{name}: not usable JSON (a number too long to read); accepted: {ACCEPTED_FORMATS}") from None


# Escapes out first, then strings: two linear passes. (One pattern for a string with its escapes
# backtracks quadratically on a run of `"\` with no closing quote: a megabyte took 40 minutes.)
_JSON_ESCAPE = re.compile(r"\\.", re.DOTALL)
_JSON_STRING = re.compile(r'"[^"]*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_nesting(text: str) -> int:
    """How deep the arrays and objects of JSON text nest (brackets inside strings not counted),
    without parsing it."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", _JSON_ESCAPE.sub("", text))):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _keypoints(points, width: int, height: int, source: str) -> Keypoints:
    for what, size in (("canvas width", width), ("canvas height", height)):
        if size > MAX_CANVAS_SIDE:
            raise InputError(f"{source}: {what} {size} is larger than {MAX_CANVAS_SIDE}")
    # Keypoints' own checks don't know the file; prefix it so the error names it.
    try:
        return Keypoints(points, width, height)
    except InputError as error:
        raise InputError(f"{source}: {error}") from None


def _on_canvas(keypoints: Keypoints, source: str) -> Keypoints:
    """A pose file's keypoints, refused where they would draw an empty or clipped skeleton:
    none visible, or a visible point off the canvas by more than CANVAS_MARGIN."""
    if not keypoints.visible.any():
        raise InputError(f"{source}: no visible keypoint (every confidence is 0): the skeleton would be empty")
    size = np.array([keypoints.width, keypoints.height])
    xy = keypoints.points[:, :2]
    outside = ((xy < -CANVAS_MARGIN * size) | (xy > (1 + CANVAS_MARGIN) * size)).any(axis=1) & keypoints.visible
    if outside.any():
        names = ", ".join(COCO18_NAMES[i] for i in np.flatnonzero(outside))
        raise InputError(f"{source}: keypoints off the {keypoints.width}x{keypoints.height} canvas: {names}")
    return keypoints


def _positive_int(value, what: str, source: str) -> int:
    # JSON writers sometimes emit 750.0 for 750.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        shown = repr(value) if len(repr(value)) <= 24 else f"{type(value).__name__} of {len(repr(value))} characters"
        raise InputError(f"{source}: {what} must be a positive integer, got {shown}")
    if value > MAX_CANVAS_SIDE:
        shown = value if value < 10**12 else f"a {len(str(value))}-digit number"
        raise InputError(f"{source}: {what} is {shown}, larger than {MAX_CANVAS_SIDE}")
    return int(value)
