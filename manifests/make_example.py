"""Draw the example the README's first command runs on: a source photo and three target poses.

The repository ships no real catalog photos (the DeepFashion samples next to it are for tests
only), so the example is a stylised person drawn with Pillow from COCO-18 keypoints: a head, a
striped top in a distinct colour, arms and legs, on a light background. Everything is
deterministic: running this again writes the same files.

    .venv/bin/python manifests/make_example.py      # writes manifests/example/

Writes, at 176x256 (DeepFashion's low-resolution frame):
    example/source.png                              the person in the front pose
    example/poses/{front,walk,arms_up}.json         coco18 keypoint files (see manifests/README.md)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from model_core.poses import COCO18_NAMES, Keypoints

WIDTH, HEIGHT = 176, 256
EXAMPLE_DIR = Path(__file__).resolve().parent / "example"

# Keypoints in COCO-18 order (model_core.poses.COCO18_NAMES), as (x, y) on the 176x256 canvas.
# The person faces the camera, so their right side is on the left of the picture.
POSES: dict[str, list[tuple[float, float]]] = {
    "front": [
        (88, 42), (88, 66),  # nose, neck
        (66, 70), (60, 104), (56, 136),  # right shoulder, elbow, wrist
        (110, 70), (116, 104), (120, 136),  # left shoulder, elbow, wrist
        (77, 138), (75, 184), (74, 230),  # right hip, knee, ankle
        (99, 138), (101, 184), (102, 230),  # left hip, knee, ankle
        (84, 37), (92, 37), (79, 40), (97, 40),  # right eye, left eye, right ear, left ear
    ],
    "walk": [
        (90, 42), (88, 66),
        (66, 70), (56, 102), (62, 132),  # right arm swings back
        (110, 70), (120, 100), (128, 128),  # left arm swings forward
        (77, 138), (68, 182), (56, 226),  # right leg steps out
        (99, 138), (104, 184), (112, 228),
        (86, 37), (94, 37), (81, 40), (99, 40),
    ],
    "arms_up": [
        (88, 50), (88, 74),
        (66, 78), (54, 50), (48, 20),  # both arms raised above the head
        (110, 78), (122, 50), (128, 20),
        (77, 144), (76, 188), (75, 232),
        (99, 144), (100, 188), (101, 232),
        (84, 45), (92, 45), (79, 48), (97, 48),
    ],
}


@dataclass(frozen=True)
class Look:
    """Colours of the drawn person; the garment (a striped top) is what a pose variant must keep."""

    stripe_colors: tuple[tuple[int, int, int], tuple[int, int, int]] = ((214, 60, 52), (250, 236, 214))
    skin: tuple[int, int, int] = (224, 178, 140)
    hair: tuple[int, int, int] = (60, 42, 30)
    trousers: tuple[int, int, int] = (46, 58, 92)
    shoes: tuple[int, int, int] = (30, 30, 30)
    background: tuple[int, int, int] = (242, 240, 235)


# Drawn at 4x and downsampled, for smooth edges without any anti-aliasing support in ImageDraw.
SUPERSAMPLE = 4
STRIPE_HEIGHT = 6  # px at output resolution


def keypoints_for(pose: str) -> Keypoints:
    points = [(x, y, 1.0) for x, y in POSES[pose]]
    return Keypoints(points, WIDTH, HEIGHT)


def draw_person(keypoints: Keypoints, look: Look = Look()) -> Image.Image:
    """The stylised person in the pose of `keypoints` (all 18 must be visible)."""
    if not keypoints.visible.all():
        missing = [COCO18_NAMES[i] for i, seen in enumerate(keypoints.visible) if not seen]
        raise ValueError(f"draw_person needs all 18 keypoints; missing: {', '.join(missing)}")
    scale = SUPERSAMPLE
    width, height = keypoints.width * scale, keypoints.height * scale
    point = {name: (float(x) * scale, float(y) * scale) for name, (x, y, _) in zip(COCO18_NAMES, keypoints.points)}

    image = Image.new("RGB", (width, height), look.background)
    draw = ImageDraw.Draw(image)

    def limb(names: tuple[str, ...], color, thickness: float) -> None:
        # A thick polyline with round caps and joints.
        line_width = round(thickness * scale)
        radius = line_width / 2
        coords = [point[name] for name in names]
        draw.line(coords, fill=color, width=line_width, joint="curve")
        for x, y in coords:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)

    # Legs and shoes first: the top covers the hips.
    for side in ("right", "left"):
        limb((f"{side}_hip", f"{side}_knee", f"{side}_ankle"), look.trousers, 13)
        ankle_x, ankle_y = point[f"{side}_ankle"]
        draw.ellipse((ankle_x - 8 * scale, ankle_y - 2 * scale, ankle_x + 8 * scale, ankle_y + 7 * scale), fill=look.shoes)

    # Arms: skin, with short sleeves of the garment drawn over the upper arm later.
    for side in ("right", "left"):
        limb((f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist"), look.skin, 9)

    # The striped top: torso polygon (shoulders to slightly outside the hips) and sleeves,
    # filled through a mask with horizontal stripes.
    garment_mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(garment_mask)
    right_shoulder, left_shoulder = point["right_shoulder"], point["left_shoulder"]
    right_hip, left_hip = point["right_hip"], point["left_hip"]
    hem = 6 * scale  # the top reaches a little below the hip line
    mask_draw.polygon(
        [
            (right_shoulder[0] - 2 * scale, right_shoulder[1] - 2 * scale),
            (left_shoulder[0] + 2 * scale, left_shoulder[1] - 2 * scale),
            (left_hip[0] + 5 * scale, left_hip[1] + hem),
            (right_hip[0] - 5 * scale, right_hip[1] + hem),
        ],
        fill=255,
    )
    for side in ("right", "left"):
        shoulder, elbow = point[f"{side}_shoulder"], point[f"{side}_elbow"]
        sleeve_end = (shoulder[0] + 0.55 * (elbow[0] - shoulder[0]), shoulder[1] + 0.55 * (elbow[1] - shoulder[1]))
        mask_draw.line([shoulder, sleeve_end], fill=255, width=13 * scale)
        radius = 6.5 * scale
        mask_draw.ellipse((shoulder[0] - radius, shoulder[1] - radius, shoulder[0] + radius, shoulder[1] + radius), fill=255)
    stripes = Image.new("RGB", (width, height), look.stripe_colors[1])
    stripes_draw = ImageDraw.Draw(stripes)
    stripe = STRIPE_HEIGHT * scale
    for top in range(0, height, 2 * stripe):
        stripes_draw.rectangle((0, top, width, top + stripe - 1), fill=look.stripe_colors[0])
    image.paste(stripes, (0, 0), garment_mask)

    # Neck and head, hair on top of the head.
    limb(("neck", "nose"), look.skin, 10)
    nose_x, nose_y = point["nose"]
    head_rx, head_ry = 12 * scale, 15 * scale
    draw.ellipse((nose_x - head_rx, nose_y - head_ry - 2 * scale, nose_x + head_rx, nose_y + head_ry - 2 * scale), fill=look.skin)
    draw.chord(
        (nose_x - head_rx - scale, nose_y - head_ry - 4 * scale, nose_x + head_rx + scale, nose_y + head_ry - 4 * scale),
        start=180,
        end=360,
        fill=look.hair,
    )
    for eye in ("right_eye", "left_eye"):
        x, y = point[eye]
        draw.ellipse((x - 1.5 * scale, y - 1.5 * scale, x + 1.5 * scale, y + 1.5 * scale), fill=look.hair)

    return image.resize((keypoints.width, keypoints.height), Image.Resampling.LANCZOS)


def keypoints_file_text(keypoints: Keypoints) -> str:
    """coco18 JSON with one keypoint row per line, so a diff shows which joint moved."""
    data = keypoints.to_json()
    rows = ",\n".join(f"    {json.dumps(row)}" for row in data["keypoints"])
    header = ",\n".join(f"  {json.dumps(key)}: {json.dumps(data[key])}" for key in ("format", "width", "height"))
    return f'{{\n{header},\n  "keypoints": [\n{rows}\n  ]\n}}\n'


def write_example(out_dir: Path = EXAMPLE_DIR) -> list[Path]:
    written = []
    (out_dir / "poses").mkdir(parents=True, exist_ok=True)
    source = out_dir / "source.png"
    draw_person(keypoints_for("front")).save(source, optimize=True)
    written.append(source)
    for pose in POSES:
        pose_file = out_dir / "poses" / f"{pose}.json"
        pose_file.write_text(keypoints_file_text(keypoints_for(pose)))
        written.append(pose_file)
    return written


if __name__ == "__main__":
    for path in write_example():
        print(path)
