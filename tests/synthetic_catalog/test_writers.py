"""Writing the synthetic catalog (synthetic.writers, `fpdm synth`): deterministic, pairs of one
person and garment in different poses, a pairs CSV that training reads, and a catalog manifest
of garments with a source photo, target poses and the truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_cli import assert_one_error_line, run_fpdm  # tests/ is on sys.path (its conftest.py)

from model_core.errors import InputError
from model_core.keypoints import read_keypoints
from synthetic import DEFAULT_SIZE, MASK_CLASSES, parse_size, render_person, write_catalog_manifest, write_dataset
from synthetic.people import TEXTURES, sample_garment


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def all_files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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


def test_keypoint_files_read_back(dataset):
    out, _ = dataset
    person, garment, posed = render_person(5, 1)
    for k, (_, figure) in enumerate(posed):
        assert read_keypoints(out / "poses" / f"s5p0001_{k}.json") == figure.keypoints


def test_sizes():
    assert parse_size("96x64") == (96, 64) and parse_size("64X48") == (64, 48)
    with pytest.raises(InputError, match="too small"):
        parse_size("31x24")
    with pytest.raises(InputError, match="width"):
        parse_size("64x200")
    with pytest.raises(InputError, match="pairs"):
        write_dataset("unused", pairs=0)


# ----- the catalog manifest -----------------------------------------------------------------


def test_catalog_manifest_lists_each_garments_other_poses_with_a_source_photo_and_the_truth(tmp_path):
    from PIL import Image

    from pipeline.manifest import read_manifest

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
        for row, figure in zip(rows, others, strict=True):
            # Each target pose is that pose's keypoints; truth/ holds the photo in that pose.
            assert np.allclose(read_keypoints(row.target_pose).points, figure.keypoints.points, atol=0.01)
            truth = tmp_path / "example" / garment / "truth" / f"{row.variant_id}.png"
            assert np.array_equal(np.asarray(Image.open(truth)), np.asarray(figure.image))
    # Another seed, other garments.
    assert not set(write_catalog_manifest(tmp_path / "other", 3, seed=4).garments) & set(catalog.garments)


# ----- the command line ---------------------------------------------------------------------


def test_fpdm_synth_writes_a_pairs_file_training_reads(tmp_path):
    from model_core.training_data import read_pairs

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
