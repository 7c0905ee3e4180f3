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
    manifest = parse_manifest(EVERY_ROW_ERROR.encode(), "s3://catalog/manifests/spring.csv", allow_inputs=("s3://poses",))
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


def test_a_malformed_line_fails_its_own_row_and_blank_lines_keep_the_sheets_numbering():
    sheet = (
        "garment_id,source_image,target_pose,notes\n"
        "tee-1,a.jpg,front.json,plain note\n"
        "\n"  # row 3: blank, still a row of the sheet
        "tee-2,a.jpg,front.json,long sleeves, cotton\n"  # row 4: an unquoted comma in the notes
        "tee-3,a.jpg\n"  # row 5: values missing
        'tee-4,a.jpg,front.json,"quoted, as it should be"\n'
        ",,,\n"
        "tee 5,a.jpg,front.json,\n"  # row 8: numbered as the sheet numbers it
    )
    manifest = parse_manifest(sheet.encode(), "m.csv")
    assert [str(p) for p in manifest.problems] == [
        "row 4: 5 values where the header has 4 columns (a value with a separator in it must be in double quotes)",
        "row 5: 2 values where the header has 4 columns (a value with a separator in it must be in double quotes)",
        "row 8, garment_id: 'tee 5' is not a safe id (letters, digits, '.', '_', '-'; at most 128)",
    ]
    assert [(r.row, r.notes) for r in manifest.rows] == [(2, "plain note"), (6, "quoted, as it should be")]


def test_a_value_past_the_csv_readers_limit_fails_its_own_row():
    sheet = f"garment_id,source_image,target_pose,notes\ntee-1,a.jpg,b.json,{'x' * 200_000}\ntee-2,a.jpg,b.json,\n"
    manifest = parse_manifest(sheet.encode(), "m.csv")
    assert [str(p) for p in manifest.problems] == ["row 2: a cell of 200000 characters, over the 131072-character limit"]
    assert [r.row for r in manifest.rows] == [3]


def test_an_oversized_cell_over_several_lines_fails_its_row_and_the_rows_after_it_stay_rows():
    """The reader's own limit stopped inside the quoted cell, and the cell's later lines were read
    as rows: text of the note became a job."""
    note = "x" * 140_000 + "\nb,inside.jpg,inside.json,\n" + "y" * 10
    sheet = f'garment_id,source_image,target_pose,notes\ntee-1,a.jpg,b.json,"{note}"\ntee-2,a.jpg,b.json,\n'
    manifest = parse_manifest(sheet.encode(), "m.csv")
    assert [p.row for p in manifest.problems] == [2]
    assert [(r.row, r.garment_id) for r in manifest.rows] == [(3, "tee-2")]


def test_a_row_with_values_only_past_the_headers_columns_is_not_blank():
    sheet = "garment_id,source_image,target_pose\n,,,extra\ntee,a.jpg,b.json\n"
    manifest = parse_manifest(sheet.encode(), "m.csv")
    assert [str(p) for p in manifest.problems] == [
        "row 2: 4 values where the header has 3 columns (a value with a separator in it must be in double quotes)"
    ]
    assert [r.row for r in manifest.rows] == [3]


BIG = "9" * 400


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("seed", str(2**64), f"{2**64} is outside 0..{2**63 - 1}"),
        ("seed", str(2**63), f"{2**63} is outside 0..{2**63 - 1}"),
        ("seed", "-1", f"-1 is outside 0..{2**63 - 1}"),
        ("seed", BIG, "'999999999999'... (400 characters) is not a number this column takes (over 32 characters)"),
        ("seed", BIG + ".0", "'999999999999'... (402 characters) is not a number this column takes (over 32 characters)"),
        ("steps", "1e400", "'1e400' is not a whole number"),
        ("guidance_scale", "1e400", "'1e400' is not a finite number"),
        ("guidance_scale", "nan", "'nan' is not a finite number"),
        ("num_candidates", "17", "17 is outside 1..16"),
    ],
)
def test_numbers_out_of_bounds_or_of_any_length_fail_their_row_only(column, value, reason):
    sheet = f"garment_id,source_image,target_pose,{column}\ntee-1,a.jpg,b.json,{value}\ntee-2,a.jpg,b.json,\n"
    manifest = parse_manifest(sheet.encode(), "m.csv")
    assert [str(p) for p in manifest.problems] == [f"row 2, {column}: {reason}"]
    assert [r.row for r in manifest.rows] == [3]


def test_the_largest_seed_torch_takes_is_accepted():
    sheet = f"garment_id,source_image,target_pose,seed\ntee-1,a.jpg,b.json,{2**63 - 1}\ntee-2,a.jpg,b.json,7.0\n"
    assert [r.seed for r in parse_manifest(sheet.encode(), "m.csv").rows] == [2**63 - 1, 7]


ELSEWHERE = """garment_id,source_image,target_pose
tee-1,/etc/passwd,poses/front.json
tee-2,photos/tee.jpg,/srv/poses/front.json
tee-3,s3://other-team/photos/tee.jpg,poses/front.json
tee-4,photos/tee.jpg,s3://poses/library/
tee-5,s3://poses/library-old/x.jpg,poses/front.json
tee-6,photos/tee.jpg,s3://catalog/poses/front.json
"""


def test_a_manifest_on_s3_takes_inputs_from_its_own_bucket_only_unless_a_prefix_is_allowed():
    manifest = parse_manifest(ELSEWHERE.encode(), "s3://catalog/manifests/spring.csv")
    assert [str(p) for p in manifest.problems] == [
        "row 2, source_image: /etc/passwd: a local path in a manifest on S3; give an s3:// URI (or admit the folder with --allow-input)",
        "row 3, target_pose: /srv/poses/front.json: a local path in a manifest on S3; give an s3:// URI (or admit the folder with --allow-input)",
        "row 4, source_image: s3://other-team/photos/tee.jpg: outside the manifest's bucket catalog (--allow-input PREFIX admits another)",
        "row 5, target_pose: s3://poses/library/: outside the manifest's bucket catalog (--allow-input PREFIX admits another)",
        "row 6, source_image: s3://poses/library-old/x.jpg: outside the manifest's bucket catalog (--allow-input PREFIX admits another)",
    ]
    assert [r.row for r in manifest.rows] == [7]

    allowed = parse_manifest(ELSEWHERE.encode(), "s3://catalog/manifests/spring.csv", ("s3://poses/library", "/srv/poses/"))
    assert [p.row for p in allowed.problems] == [2, 4, 6]  # s3://poses/library admits its folder, not library-old


def test_a_local_manifest_may_name_any_local_file_or_s3_uri(tmp_path):
    manifest = parse_manifest(ELSEWHERE.encode(), str(tmp_path / "m.csv"))
    assert manifest.problems == [] and len(manifest.rows) == 6


def test_an_s3_input_with_dot_segments_is_refused_even_inside_an_allowed_prefix():
    """S3 takes `..` literally, but a path-normalising gateway behind AWS_ENDPOINT_URL would
    serve another bucket: s3://catalog/in/../../other/x.jpg passed as the manifest's bucket."""
    text = "garment_id,source_image,target_pose\ntee,../../other-team/x.jpg,poses/front.json\n"
    text += "blouse,s3://poses/library/../secret/x.jpg,poses/front.json\n"
    manifest = parse_manifest(text.encode(), "s3://catalog/in/manifest.csv", ("s3://poses/library",))
    assert [str(p) for p in manifest.problems] == [
        "row 2, source_image: s3://catalog/in/../../other-team/x.jpg: an S3 URI with '.' or '..' in its path; name the object by its own key",
        "row 3, source_image: s3://poses/library/../secret/x.jpg: an S3 URI with '.' or '..' in its path; name the object by its own key",
    ]
