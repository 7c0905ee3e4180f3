"""Rows -> jobs (pose sets expanded, stable ids and seeds), target poses (cached detection),
jobs -> batches."""

import json
import shutil

import pytest
from PIL import Image

from model_core.errors import InputError
from model_core.keypoints import Keypoints
from pipeline import storage
from pipeline.manifest import parse_manifest
from pipeline.planning import (
    Job,
    PlannedJob,
    PoseResolver,
    RunDefaults,
    TargetPose,
    expand_jobs,
    plan_batches,
    stable_seed,
)
from pipeline.pose_detection import MediapipePoseDetector

FRONT = "img/MEN/Tees_Tanks/id_00004047/01_1_front.jpg"
SIDE_POSE = "pose/MEN/Tees_Tanks/id_00004047/01_2_side.txt"


def _manifest(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    return parse_manifest(path.read_bytes(), str(path))


def test_a_pose_set_row_expands_to_one_job_per_pose_file(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    for name in ("walk.json", "front.txt", "sit.png", "README.md"):
        (library / name).write_text("x")
    manifest = _manifest(
        tmp_path,
        "garment_id,source_image,target_pose,variant_id,seed,steps,enabled\n"
        "tee,tee.jpg,library/,,,,\n"
        "dress,dress.jpg,library/,look2,5,30,\n"
        "skirt,skirt.jpg,empty/,,,,\n"
        ",bad.jpg,x.json,,,,\n"
        "hat,hat.jpg,x.json,,,,no\n",
    )
    (tmp_path / "empty").mkdir()
    jobs, outcomes = expand_jobs(manifest, RunDefaults(steps=12))
    assert [j.job_id for j in jobs] == [
        "tee/front",
        "tee/sit",
        "tee/walk",  # README.md is not a pose file
        "dress/look2-front",
        "dress/look2-sit",
        "dress/look2-walk",  # variant_id prefixes a set's stems
    ]
    assert {j.steps for j in jobs if j.garment_id == "tee"} == {12}  # the run's default
    assert {(j.seed, j.steps) for j in jobs if j.garment_id == "dress"} == {(5, 30)}
    tee_walk = jobs[2]
    assert tee_walk.seed == stable_seed("tee/walk")  # no seed given: derived from the job id
    assert expand_jobs(manifest, RunDefaults(steps=12))[0] == jobs  # stable across calls

    by_row = {o.row: o for o in outcomes}
    assert by_row[4].status == "failed" and "pose set has no pose files" in by_row[4].error
    assert by_row[5].status == "failed" and "row 5, garment_id: empty" in by_row[5].error
    assert by_row[6].status == "skipped" and "disabled" in by_row[6].error


def test_two_rows_that_make_the_same_variant_fail_the_second(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "front.json").write_text("x")
    manifest = _manifest(
        tmp_path,
        "garment_id,source_image,target_pose\ntee,tee.jpg,front.json\ntee,tee.jpg,set/\ntee,tee.jpg,set/bad name.json\n",
    )
    (tmp_path / "set" / "bad name.json").write_text("x")
    jobs, outcomes = expand_jobs(manifest)
    assert [j.job_id for j in jobs] == ["tee/front"]
    errors = sorted((o.row, o.variant_id, o.error) for o in outcomes)
    assert [(row, variant) for row, variant, _ in errors] == [(3, "bad name"), (3, "front"), (4, "bad name")]
    assert "duplicate of variant tee/front from row 2" in errors[1][2]
    assert "row 3, variant_id: the pose file name 'bad name.json' does not make a safe id" in errors[0][2]
    assert "row 4, variant_id" in errors[2][2]


def _planned(garment, variant, candidates=1, steps=20):
    job = Job(garment, variant, 2, f"{garment}.jpg", f"{variant}.json", 0, steps, 2.0, candidates)
    pose = TargetPose(
        f"{variant}.json",
        "0" * 64,
        Keypoints.from_json({"format": "coco18", "width": 8, "height": 8, "keypoints": [[0, 0, 0]] * 18}),
        None,
    )
    return PlannedJob(job, "0" * 64, pose, "k")


def test_batches_fill_up_keep_garments_together_and_split_by_settings():
    planned = [
        _planned("b", "1"),
        _planned("a", "1"),
        _planned("b", "2"),
        _planned("a", "2"),
        _planned("a", "3"),
        _planned("c", "1", candidates=3),
        _planned("c", "2", candidates=5),  # 5 > batch size: alone
        _planned("d", "1", steps=50),
    ]
    batches = plan_batches(planned, batch_size=4)
    as_ids = [[p.job.job_id for p in b.jobs] for b in batches]
    assert as_ids == [["a/1", "a/2", "a/3", "b/1"], ["b/2"], ["c/1"], ["c/2"], ["d/1"]]
    assert [b.images for b in batches] == [4, 1, 3, 5, 1]
    assert [b.batch_id for b in plan_batches(list(reversed(planned)), 4)] == [b.batch_id for b in batches]
    with pytest.raises(InputError, match="batch size"):
        plan_batches(planned, 0)
    assert [len(b.jobs) for b in plan_batches(planned[:3], 1)] == [1, 1, 1]  # the smallest batch size works


class CountingDetector:
    """The real mediapipe detector, counting how often it runs."""

    def __init__(self):
        self.inner = MediapipePoseDetector()
        self.identity = self.inner.identity
        self.calls = 0

    def detect(self, image, name):
        self.calls += 1
        return self.inner.detect(image, name)


def test_reference_photos_are_detected_once_and_cached_by_content(tmp_path, deepfashion_dir):
    # The same photo under two names is one detection; a second run reads the cache.
    shutil.copy(deepfashion_dir / FRONT, tmp_path / "front.jpg")
    shutil.copy(deepfashion_dir / FRONT, tmp_path / "same-photo.jpg")
    output = str(tmp_path / "out")
    detector = CountingDetector()
    resolver = PoseResolver(output, lambda: detector, "mediapipe")
    first = resolver.resolve(str(tmp_path / "front.jpg"), (750, 1101))
    second = resolver.resolve(str(tmp_path / "same-photo.jpg"), (750, 1101))
    assert detector.calls == 1
    assert first.keypoints == second.keypoints and first.detector == detector.identity
    cached = storage.list_prefix(tmp_path / "out" / "_poses")
    assert len(cached) == 1 and cached[0].endswith(f"{first.sha256}.json")

    again = PoseResolver(output, lambda: detector, "mediapipe").resolve(str(tmp_path / "front.jpg"), (750, 1101))
    assert detector.calls == 1 and again.keypoints == first.keypoints


def test_keypoint_files_are_read_on_the_source_canvas_and_photos_need_a_detector(tmp_path, deepfashion_dir):
    never = PoseResolver(str(tmp_path / "out"), lambda: pytest.fail("no detector for keypoint files"), "keypoints")
    pose = never.resolve(str(deepfashion_dir / SIDE_POSE), (750, 1101))
    assert (pose.keypoints.width, pose.keypoints.height) == (750, 1101) and pose.detector is None
    with pytest.raises(InputError, match=r"01_1_front.jpg: a reference photo, but the pose backend is 'keypoints'"):
        never.resolve(str(deepfashion_dir / FRONT), (750, 1101))
    with pytest.raises(InputError, match=r"pose.gif: not a pose file"):
        never.resolve(str(tmp_path / "pose.gif"), (750, 1101))


def test_a_reference_photo_without_a_person_is_a_clear_error(tmp_path):
    Image.linear_gradient("L").convert("RGB").resize((300, 400)).save(tmp_path / "wall.jpg")
    resolver = PoseResolver(str(tmp_path / "out"), CountingDetector, "mediapipe")
    with pytest.raises(InputError, match=r"wall.jpg: no person found"):
        resolver.resolve(str(tmp_path / "wall.jpg"), (300, 400))
    assert not (tmp_path / "out" / "_poses").exists() or not storage.list_prefix(tmp_path / "out" / "_poses")


@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",
        b"[" * 60_000 + b"]" * 60_000,
        b"\xff\xfe not text",
        b'{"format": "coco18", "width": 1e999, "height": 2, "keypoints": []}',
        b'["a list"]',
    ],
)
def test_a_damaged_cache_entry_is_detected_again(tmp_path, deepfashion_dir, damage):
    shutil.copy(deepfashion_dir / FRONT, tmp_path / "front.jpg")
    output = str(tmp_path / "out")
    detector = CountingDetector()
    pose = PoseResolver(output, lambda: detector, "mediapipe").resolve(str(tmp_path / "front.jpg"), (750, 1101))
    [entry] = storage.list_prefix(tmp_path / "out" / "_poses")
    storage.write_bytes(entry, damage)
    again = PoseResolver(output, lambda: detector, "mediapipe").resolve(str(tmp_path / "front.jpg"), (750, 1101))
    assert detector.calls == 2 and again.keypoints == pose.keypoints
    assert json.loads(storage.read_bytes(entry))["format"] == "coco18"


def test_a_pose_file_name_with_a_trailing_newline_does_not_make_an_id(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "walk\n.json").write_text("x")
    (tmp_path / "set" / "front.json").write_text("x")
    manifest = _manifest(tmp_path, "garment_id,source_image,target_pose\ntee,tee.jpg,set/\n")
    jobs, outcomes = expand_jobs(manifest)
    assert [j.job_id for j in jobs] == ["tee/front"]
    (outcome,) = outcomes
    assert (
        outcome.error
        == "row 2, variant_id: the pose file name 'walk\\n.json' does not make a safe id; set variant_id in the manifest"
    )


def test_a_retry_keeps_a_pose_set_row_with_a_variant_id_that_could_not_be_listed_then(tmp_path):
    """Its failure named the job `coat/look3`, but once its set has files its jobs are
    `coat/look3-front`...: a retry matched neither the job id nor the row and dropped it."""
    from pipeline.run import Selection

    manifest = _manifest(tmp_path, "garment_id,source_image,target_pose,variant_id\ncoat,coat.jpg,later/,look3\n")
    _, outcomes = expand_jobs(manifest)
    [failure] = outcomes
    assert failure.status == "failed" and failure.variant_id == "" and failure.row == 2
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "front.json").write_text("x")
    jobs, _ = expand_jobs(manifest)
    retry = Selection(frozenset(o.job_id for o in outcomes if o.variant_id), frozenset({failure.row}))
    assert [j.job_id for j in jobs if retry.keeps(j)] == ["coat/look3-front"]
