"""One hostile manifest, run end to end as an operator runs it: `fpdm run` (in this process, on the
test's Prefect server) over the moto S3 server with the tiny model. Every kind of bad row the
pipeline knows is in it; each must fail alone, with a message naming its row and column (or the
row as a whole) and the file; the good rows must succeed; the run exits 1. The kinds are listed
in docs/catalog-runs.md, which this test keeps in step."""

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from fpdm_cli.main import main
from pipeline import storage
from pipeline.outputs import read_report
from synthetic import render_person
from synthetic.writers import keypoints_json

pytestmark = pytest.mark.slow  # a flow run over S3 with ~60 rows and three generated variants: about 30 s

DOCS = Path(__file__).resolve().parents[2] / "docs" / "catalog-runs.md"
COLUMNS = ("garment_id", "source_image", "target_pose", "variant_id", "seed", "num_candidates", "steps", "guidance_scale", "enabled", "notes")  # fmt: skip
MAX_INPUT_BYTES = 200_000
BIG = "9" * 400


@dataclass
class Bad:
    kind: str  # as the docs' table names it
    values: dict | str  # the row's values over the good defaults, or a raw line
    column: str  # the column the message names; "" for the row as a whole
    says: str  # what the message says (a fragment of it)
    file: str = ""  # the file the message names, where the problem is a file's


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _coco18(points, width=48, height=64) -> str:
    return json.dumps({"format": "coco18", "width": width, "height": height, "keypoints": points})


@dataclass
class Catalog:
    objects: dict[str, bytes] = field(default_factory=dict)  # s3 URI -> bytes

    def put(self, uri: str, data: bytes | str) -> str:
        self.objects[uri] = data.encode() if isinstance(data, str) else data
        return uri


def build_catalog() -> tuple[Catalog, list[Bad]]:
    cat = Catalog()
    _, _, tee = render_person(seed=7, index=0)
    _, _, blouse = render_person(seed=7, index=1)
    good_pose = keypoints_json(tee[1][1].keypoints)
    points = json.loads(good_pose)["keypoints"]
    cat.put("s3://catalog/in/sources/tee.png", _png(tee[0][1].image))
    cat.put("s3://catalog/in/sources/blouse.png", _png(blouse[0][1].image))
    cat.put("s3://catalog/in/poses/side.json", good_pose)
    cat.put("s3://library/poses/back.json", keypoints_json(tee[2][1].keypoints))  # admitted by --allow-input
    cat.put("s3://other/in/sources/tee.png", _png(tee[0][1].image))  # readable, but not the manifest's bucket
    cat.put("s3://other/poses/side.json", good_pose)
    cat.put("s3://catalog/in/dup-set/side.json", good_pose)
    cat.put("s3://catalog/in/spaced-set/walk back.json", good_pose)  # (a trailing newline: test_planning.py)

    def source(name: str, data: bytes) -> dict:
        cat.put(f"s3://catalog/in/sources/{name}", data)
        return {"source_image": f"sources/{name}"}

    def pose(name: str, data: bytes | str) -> dict:
        cat.put(f"s3://catalog/in/poses/{name}", data)
        return {"target_pose": f"poses/{name}"}

    truncated = _png(tee[0][1].image)[:300]  # its header reads; its pixels do not
    noise = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 48 64\n0 0 moveto 48 64 lineto stroke\n%%EOF\n"
    gif = io.BytesIO()
    tee[0][1].image.save(gif, format="GIF")
    openpose = {"canvas_width": 48, "canvas_height": 64, "people": [{"pose_keypoints_2d": [1.0] * 30}]}
    first_point = "[" + ", ".join(str(v) for v in points[0]) + "]"

    bad = [
        # The row as the CSV reader sees it.
        Bad("unquoted separator in a value", "bad-01,sources/tee.png,poses/side.json,,,,1,,,long sleeves, cotton", "", "11 values where the header has 10 columns"),
        Bad("values missing", "bad-02,sources/tee.png", "", "2 values where the header has 10 columns"),
        Bad("a cell past the length limit", {"notes": "x" * 200_000}, "", "a cell of 200000 characters, over the 131072-character limit"),
        # Ids.
        Bad("empty garment_id", {"garment_id": ""}, "garment_id", "empty"),
        Bad("path in garment_id", {"garment_id": "../etc"}, "garment_id", "'../etc' is not a safe id"),
        Bad("space in garment_id", {"garment_id": "tee 002"}, "garment_id", "'tee 002' is not a safe id"),
        Bad("garment_id of dots", {"garment_id": ".."}, "garment_id", "'..' is not a safe id"),
        Bad("garment_id longer than 128", {"garment_id": "g" * 129}, "garment_id", "(129 characters) is not a safe id"),
        Bad("garment_id taken by the output (_runs)", {"garment_id": "_runs"}, "garment_id", "starts with '_'"),
        Bad("slash in variant_id", {"variant_id": "a/b"}, "variant_id", "'a/b' is not a safe id"),
        Bad("duplicate variant", {"garment_id": "good-1", "variant_id": "side"}, "variant_id", "duplicate of row"),
        Bad("pose file name that makes no id", {"target_pose": "spaced-set/"}, "variant_id", "the pose file name 'walk back.json' does not make a safe id"),
        Bad("variant made twice (pose set and row)", {"garment_id": "dup", "target_pose": "dup-set/"}, "", "duplicate of variant dup/side from row"),
        # Numbers.
        Bad("seed not a number", {"seed": "seven"}, "seed", "'seven' is not a whole number"),
        Bad("seed of 2^64", {"seed": str(2**64)}, "seed", f"{2**64} is outside 0..{2**63 - 1}"),
        Bad("negative seed", {"seed": "-1"}, "seed", "-1 is outside 0.."),
        Bad("number of 400 digits", {"seed": BIG}, "seed", "(400 characters) is not a number this column takes"),
        Bad("num_candidates 0", {"num_candidates": "0"}, "num_candidates", "0 is outside 1..16"),
        Bad("num_candidates over 16", {"num_candidates": "17"}, "num_candidates", "17 is outside 1..16"),
        Bad("steps not a number", {"steps": "abc"}, "steps", "'abc' is not a whole number"),
        Bad("steps over 1000", {"steps": "1001"}, "steps", "1001 is outside 1..1000"),
        Bad("guidance_scale infinite", {"guidance_scale": "inf"}, "guidance_scale", "'inf' is not a finite number"),
        Bad("guidance_scale NaN", {"guidance_scale": "nan"}, "guidance_scale", "'nan' is not a finite number"),
        Bad("guidance_scale over 50", {"guidance_scale": "51"}, "guidance_scale", "51 is outside 0.0..50.0"),
        Bad("enabled not yes/no", {"enabled": "maybe"}, "enabled", "'maybe' is not yes/no"),
        Bad("required columns empty", {"source_image": "", "target_pose": ""}, "source_image", "empty"),
        # Where inputs come from (the manifest is on S3).
        Bad("local path to a source", {"source_image": "/etc/passwd"}, "source_image", "a local path in a manifest on S3", "/etc/passwd"),
        Bad("local path to a pose", {"target_pose": "/etc/hosts.json"}, "target_pose", "a local path in a manifest on S3", "/etc/hosts.json"),
        Bad("source in another bucket", {"source_image": "s3://other/in/sources/tee.png"}, "source_image", "outside the manifest's bucket catalog", "s3://other/in/sources/tee.png"),
        Bad("pose set in another bucket", {"target_pose": "s3://other/poses/"}, "target_pose", "outside the manifest's bucket catalog", "s3://other/poses/"),
        # Source photos.
        Bad("missing source", {"source_image": "sources/absent.png"}, "source_image", "no such object", "sources/absent.png"),
        Bad("source not an image", source("notes.jpg", b"just some text"), "source_image", "not an image in a format accepted for photos", "notes.jpg"),
        Bad("source in EPS", source("art.jpg", eps), "source_image", "not an image in a format accepted for photos (JPEG, PNG, WEBP)", "art.jpg"),
        Bad("source in GIF", source("anim.gif", gif.getvalue()), "source_image", "not an image in a format accepted for photos", "anim.gif"),
        Bad("source too small", source("dot.png", _png(Image.new("RGB", (8, 8)))), "source_image", "smaller than 16 px on a side", "dot.png"),
        Bad("extreme aspect ratio", source("strip.png", _png(Image.new("RGB", (400, 40)))), "source_image", "an aspect ratio beyond 4:1", "strip.png"),
        Bad("over the pixel limit", source("bomb.png", _png(Image.new("1", (9000, 9000)))), "source_image", "over the 64000000 pixel limit", "bomb.png"),
        Bad("source over the byte cap", source("noise.png", noise), "source_image", f"over the {MAX_INPUT_BYTES}-byte limit", "noise.png"),
        Bad("source damaged past its header", source("truncated.png", truncated), "source_image", "not a readable image", "truncated.png"),
        # Pose files.
        Bad("missing pose file", {"target_pose": "poses/absent.json"}, "target_pose", "no such object", "poses/absent.json"),
        Bad("pose of unknown type", pose("pose.yaml", "a: 1"), "target_pose", "not a pose file", "pose.yaml"),
        Bad("reference photo without a detector", pose("ref.png", _png(tee[0][1].image)), "target_pose", "a reference photo, but the pose backend is 'keypoints'", "ref.png"),
        Bad("pose not UTF-8", pose("latin.json", b"\xff\xfe{}"), "target_pose", "not UTF-8 text", "latin.json"),
        Bad("pose not JSON", pose("broken.json", "{"), "target_pose", "not valid JSON", "broken.json"),
        Bad("JSON neither coco18 nor OpenPose", pose("other.json", '{"a": 1}'), "target_pose", "neither coco18 nor OpenPose", "other.json"),
        Bad("OpenPose without a person", pose("nobody.json", json.dumps({**openpose, "people": []})), "target_pose", "no person in OpenPose JSON", "nobody.json"),
        Bad("OpenPose with a wrong count", pose("count.json", json.dumps(openpose)), "target_pose", "got 30 values", "count.json"),
        Bad("DeepFashion file of 17 rows", pose("short.txt", "\n".join(["60 60"] * 17)), "target_pose", "expected 18 rows", "short.txt"),
        Bad("negative confidence", pose("confidence.json", _coco18([[x, y, -1.0] for x, y, _ in points])), "target_pose", "confidences must be >= 0", "confidence.json"),
        Bad("NaN coordinate", pose("nan.json", good_pose.replace(first_point, "[NaN, 1.0, 1.0]")), "target_pose", "NaN or infinite", "nan.json"),
        Bad("coordinate of 400 digits", pose("far.json", good_pose.replace(first_point, f"[{BIG}, 1.0, 1.0]")), "target_pose", "finite numbers", "far.json"),
        Bad("negative keypoints", pose("negative.json", _coco18([[-40.0, y, c] for _, y, c in points])), "target_pose", "keypoints off the 48x64 canvas", "negative.json"),
        Bad("keypoints off the canvas", pose("off.json", _coco18([[x, y + 200.0, c] for x, y, c in points])), "target_pose", "keypoints off the 48x64 canvas", "off.json"),
        Bad("no visible keypoint", pose("empty.json", _coco18([[0.0, 0.0, 0.0]] * 18)), "target_pose", "no visible keypoint", "empty.json"),
        Bad("canvas over 16384", pose("wide.json", _coco18(points, width=20000)), "target_pose", "width is 20000, larger than 16384", "wide.json"),
        Bad("canvas of 400 digits", pose("huge.json", _coco18(points).replace('"width": 48', f'"width": {BIG}')), "target_pose", "width is a 400-digit number", "huge.json"),
        Bad("JSON nested 60,000 deep", pose("deep.json", "[" * 60_000 + "]" * 60_000), "target_pose", "JSON nested 60000 levels deep", "deep.json"),
        Bad("JSON number of 5,000 digits", pose("digits.json", "1" * 5000), "target_pose", "a number too long to read", "digits.json"),
        Bad("pose file over the byte cap", pose("padded.json", good_pose + " " * MAX_INPUT_BYTES), "target_pose", f"over the {MAX_INPUT_BYTES}-byte limit", "padded.json"),
        Bad("empty pose set", {"target_pose": "empty-set/"}, "target_pose", "pose set has no pose files", "empty-set/"),
    ]  # fmt: skip
    return cat, bad


GOOD = [
    {"garment_id": "good-1", "variant_id": "side", "notes": "long sleeves, cotton"},  # a quoted separator is fine
    {
        "garment_id": "good-2",
        "variant_id": "back",
        "source_image": "sources/blouse.png",
        "target_pose": "s3://library/poses/back.json",
    },
    {"garment_id": "dup"},  # the variant a later pose-set row makes again
]
DISABLED = {"garment_id": "off", "enabled": "no"}


def manifest_text(bad: list[Bad]) -> tuple[str, dict[int, Bad], dict[int, str]]:
    """The manifest, the bad row at each row number and the good job at each, with a blank line
    half-way (later rows keep the sheet's numbers)."""

    def line(values: dict, index: int) -> str:
        row = {
            "garment_id": f"bad-{index:02d}",
            "source_image": "sources/tee.png",
            "target_pose": "poses/side.json",
            "steps": "1",
        }
        row.update(values)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow([row.get(c, "") for c in COLUMNS])
        return buffer.getvalue()

    lines, bad_rows, good_rows = [",".join(COLUMNS)], {}, {}
    for values in GOOD:
        lines.append(line(values, 0))
        good_rows[len(lines)] = f"{values['garment_id']}/{values.get('variant_id', 'side')}"
    lines.append(line(DISABLED, 0))
    for index, case in enumerate(bad, start=1):
        if index == len(bad) // 2:
            lines.append("")  # a blank row in the middle of the sheet
        lines.append(case.values if isinstance(case.values, str) else line(case.values, index))
        bad_rows[len(lines)] = case
    return "\n".join(lines) + "\n", bad_rows, good_rows


def test_every_bad_row_fails_alone_naming_its_row_and_column_and_every_good_row_succeeds(prefect_server, s3, tmp_path, capsys):
    catalog, bad = build_catalog()
    assert len(bad) >= 40
    client = boto3.client("s3")
    for bucket in ("library", "other"):
        client.create_bucket(Bucket=bucket)
    for uri, data in catalog.objects.items():
        storage.write_bytes(uri, data)
    text, bad_rows, good_rows = manifest_text(bad)
    storage.write_bytes("s3://catalog/in/manifest.csv", text.encode())
    storage.write_bytes("s3://catalog/out/good-1/side.json", b"[" * 60_000)  # a damaged sidecar: absent

    code = main([
        "run", "s3://catalog/in/manifest.csv", "--output", "s3://catalog/out", "--model", "tiny", "--device", "cpu",
        "--pose-backend", "keypoints", "--allow-input", "s3://library/poses", "--max-input-bytes", str(MAX_INPUT_BYTES),
    ])  # fmt: skip

    assert code == 1
    [report_line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("report: ")]
    outcomes = read_report(report_line.removeprefix("report: "))
    by_row: dict[int, list] = {}
    for outcome in outcomes:
        by_row.setdefault(outcome.row, []).append(outcome)
    assert {row: [o.job_id for o in found] for row, found in by_row.items() if row in good_rows} == {
        row: [job] for row, job in good_rows.items()
    }
    assert all(found[0].status == "succeeded" for row, found in by_row.items() if row in good_rows)
    assert [o.status for o in by_row[len(GOOD) + 2]] == ["skipped"]  # the disabled row
    assert set(by_row) == {*good_rows, len(GOOD) + 2, *bad_rows}  # every row accounted for, blank rows aside

    wrong = {}
    for row, case in bad_rows.items():
        named = f"row {row}, {case.column}: " if case.column else f"row {row}: "
        for outcome in by_row[row]:
            if outcome.status != "failed" or not outcome.error.startswith(named) or case.says not in outcome.error:
                wrong[case.kind] = (row, outcome.status, outcome.error[:300])
            elif case.file and case.file not in outcome.error:
                wrong[case.kind] = (row, "file not named", outcome.error[:300])
    assert wrong == {}
    print(f"hostile manifest: {len(bad)} kinds of bad row failed alone, {len(good_rows)} good rows succeeded")

    documented = DOCS.read_text()
    assert [case.kind for case in bad if f"| {case.kind} |" not in documented] == []
