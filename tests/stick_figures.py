"""Stick-figure pose-transfer pairs for tests: stick-figure people in distinctly coloured
garments, posed from COCO-18 keypoints, on a light background. Every target is known, so
training can be checked in seconds on a CPU. (The synthetic catalog that the demo model trains
on is another thing: the `synthetic` package.)"""

from __future__ import annotations

import colorsys
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model_core.keypoints import Keypoints
from model_core.skeletons import LIMBS

WIDTH, HEIGHT = 96, 128

# A standing figure on a 96x128 canvas, COCO-18 order.
_STANDING = np.array(
    [
        [48, 18],
        [48, 30],
        [38, 31],
        [34, 48],
        [32, 64],
        [58, 31],
        [62, 48],
        [64, 64],
        [42, 66],
        [41, 88],
        [40, 110],
        [54, 66],
        [55, 88],
        [56, 110],
        [46, 16],
        [50, 16],
        [44, 18],
        [52, 18],
    ],
    dtype=np.float32,
)


def random_pose(rng: np.random.Generator) -> Keypoints:
    """The standing figure with random arm and leg swings and a small shift."""
    points = _STANDING.copy()
    for shoulder, elbow, wrist, side in ((2, 3, 4, -1), (5, 6, 7, 1)):
        angle = rng.uniform(-0.3, 2.6) * side  # from hanging down to raised
        upper, lower = 17.0, 16.0
        direction = np.array([np.sin(angle), np.cos(angle)])
        points[elbow] = points[shoulder] + upper * direction
        points[wrist] = points[elbow] + lower * direction
    for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
        angle = rng.uniform(-0.45, 0.45)
        direction = np.array([np.sin(angle), np.cos(angle)])
        points[knee] = points[hip] + 22 * direction
        points[ankle] = points[knee] + 22 * direction
    points += rng.uniform(-6, 6, size=2)
    return Keypoints(np.concatenate([points, np.ones((18, 1), np.float32)], axis=1), WIDTH, HEIGHT)


def draw_person(keypoints: Keypoints, garment: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (keypoints.width, keypoints.height), (235, 235, 230))
    draw = ImageDraw.Draw(image)
    points = keypoints.points
    skin = (205, 160, 130)
    for a, b in LIMBS:
        colour = garment if {a, b} & {1, 2, 3, 5, 6, 8, 11} and not {a, b} & {0, 14, 15, 16, 17} else skin
        if {a, b} <= {8, 9, 10, 11, 12, 13}:
            colour = tuple(int(c * 0.45) for c in garment)  # trousers: a darker shade
        draw.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=colour, width=7)
    torso = [tuple(points[i, :2]) for i in (2, 5, 11, 8)]
    draw.polygon(torso, fill=garment)
    x, y = points[0, :2]
    draw.ellipse([x - 7, y - 8, x + 7, y + 8], fill=skin)
    return image


def make_pairs(folder: Path, people: int = 12, poses_per_person: int = 3, seed: int = 0) -> Path:
    """Write images, coco18 keypoint files and a pairs CSV; return the CSV path.

    As in a catalog, each person has one source photo and `poses_per_person` target photos;
    targets are never sources, so retrieving the right target takes both the garment (which
    person) and the pose (which of that person's targets).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for person in range(people):
        hue = (person / people + rng.uniform(0, 0.5 / people)) % 1.0
        garment = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.9))
        names = []
        for pose_index in range(poses_per_person + 1):
            keypoints = random_pose(rng)
            name = f"p{person:03d}_{pose_index}"
            draw_person(keypoints, garment).save(folder / f"{name}.png")
            (folder / f"{name}.json").write_text(json.dumps(keypoints.to_json()))
            names.append(name)
        source, targets = names[0], names[1:]
        rows += [(f"{source}.png", f"{target}.png", f"{target}.json") for target in targets]
    csv_path = folder / "pairs.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source_image", "target_image", "target_pose"])
        writer.writerows(rows)
    return csv_path
