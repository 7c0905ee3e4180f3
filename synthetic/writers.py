"""Writing the synthetic catalog: images, coco18 keypoint files, part masks, a pairs CSV and the
description of every person, garment and view (write_dataset, what `fpdm synth` writes), or a
catalog manifest of garments, source photos and target poses (write_catalog_manifest, what
manifests/example.csv is)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model_core.errors import InputError
from model_core.keypoints import Keypoints
from synthetic.people import BACKGROUND, POSE_STREAM, Person, hex_colour, sample_garment, sample_person
from synthetic.rendering import DEFAULT_SIZE, MASK_CLASSES, render_figure
from synthetic.skeletons import sample_pose

MIN_SIZE = (32, 24)
POSES_PER_PERSON = 4  # pairs: every ordered pair of a person's poses, 4 x 3 = 12 per person

# The dataset write_dataset writes into DIR:
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
        pose = sample_pose(np.random.default_rng([seed, index, POSE_STREAM, pose_index]))
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
        for name, (pose, figure) in zip(names, figures, strict=True):
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
