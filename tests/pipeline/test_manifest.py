"""Manifest parsing and validation: every problem named by row and column, good rows kept."""

import pytest

from pipeline import storage
from pipeline.manifest import ManifestError, parse_manifest, read_manifest

EVERY_ROW_ERROR = """garment_id,source_image,target_pose,variant_id,seed,num_candidates,steps,guidance_scale,enabled,season
tee-001,photos/tee.jpg,poses/front.json,front,1,2,20,2.0,yes,SS26
,photos/x.jpg,poses/front.json,,,,,,,
../etc,photos/x.jpg,poses/front.json,,,,,,,
tee 002,photos/x.jpg,poses/front.json,,,,,,,
tee-003,,,,,,,,,
tee-001,photos/tee.jpg,poses/side.json,front,,,,,,
tee-004,photos/x.jpg,poses/front.json,a/b,,,,,,
tee-005,photos/x.jpg,poses/front.json,,seven,,,,,
tee-006,photos/x.jpg,poses/front.json,,,0,,,,
tee-007,photos/x.jpg,poses/front.json,,,,abc,,,
tee-008,photos/x.jpg,poses/front.json,,,,,inf,,
tee-009,photos/x.jpg,poses/front.json,,,,,,maybe,
tee-010,photos/x.jpg,poses/set/,,,,,,no,
..,photos/x.jpg,poses/front.json,,,,,,,
tee-011,photos/y.jpg,s3://poses/library/,,,,,,,
_runs,photos/x.jpg,poses/front.json,,,,,,,
"""


def test_every_kind_of_row_error_is_reported_at_once_and_good_rows_survive():
    manifest = parse_manifest(EVERY_ROW_ERROR.encode(), "s3://catalog/manifests/spring.csv")
    reported = {(p.row, p.column) for p in manifest.problems}
    assert reported == {
        (3, "garment_id"),  # empty
        (4, "garment_id"),  # path traversal
        (5, "garment_id"),  # space
        (6, "source_image"),
        (6, "target_pose"),  # empty
        (7, "variant_id"),  # duplicate (garment_id, variant_id) of row 2
        (8, "variant_id"),  # slash
        (9, "seed"),
        (10, "num_candidates"),
        (11, "steps"),
        (12, "guidance_scale"),
        (13, "enabled"),
        (15, "garment_id"),  # dots only
        (17, "garment_id"),  # '_' prefix: the output's own folders
    }
    messages = {str(p) for p in manifest.problems}
    assert "row 7, variant_id: duplicate of row 2 (same garment_id and variant_id)" in messages
    assert any(m.startswith("row 4, garment_id: '../etc' is not a safe id") for m in messages)
    assert manifest.disabled == [14]
    assert [r.row for r in manifest.rows] == [2, 16]

    good = manifest.rows[0]
    assert (good.garment_id, good.variant_id, good.seed, good.num_candidates, good.steps, good.guidance_scale) == (
        "tee-001",
        "front",
        1,
        2,
        20,
        2.0,
    )
    assert good.source_image == "s3://catalog/manifests/photos/tee.jpg"  # relative to the manifest
    assert good.extra == {"season": "SS26"}  # unknown columns carried
    pose_set = manifest.rows[1]
    assert pose_set.is_pose_set and pose_set.target_pose == "s3://poses/library/"


def test_excel_habits_bom_semicolons_blank_rows_and_spaces(tmp_path):
    sheet = "\ufeff garment_id ; source_image;target_pose ;notes\n tee-1 ; a.jpg ; poses/ ; first \n\n;;;\n;;;\n"
    path = tmp_path / "export.csv"
    path.write_bytes(sheet.encode("utf-8"))
    manifest = read_manifest(str(path))
    assert manifest.problems == []
    (row,) = manifest.rows
    assert (row.garment_id, row.notes) == ("tee-1", "first")
    assert row.source_image == str(tmp_path / "a.jpg")
    assert row.target_pose == str(tmp_path / "poses") + "/" and row.is_pose_set


def test_a_missing_required_column_or_unreadable_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match=r"missing required column\(s\) target_pose"):
        parse_manifest(b"garment_id,source_image\ng,a.jpg\n", "m.csv")
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse_manifest("garment_id,source_image,target_pose\nj\xe4cke,a,b\n".encode("latin-1"), "m.csv")
    with pytest.raises(storage.StorageError, match="no such file"):
        read_manifest(str(tmp_path / "absent.csv"))


def test_manifest_read_from_s3(s3):
    storage.write_bytes("s3://catalog/m/run.csv", b"garment_id,source_image,target_pose\ng1,img/a.jpg,pose/a.json\n")
    (row,) = read_manifest("s3://catalog/m/run.csv").rows
    assert row.source_image == "s3://catalog/m/img/a.jpg" and row.target_pose == "s3://catalog/m/pose/a.json"
