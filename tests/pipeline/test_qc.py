"""QC of generated images (pipeline.qc), on the real DeepFashion photos: a real photo of the
person in the target pose stands in for a perfect generation, and damaged copies of it for
the failures."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from test_cli import run_fpdm  # tests/ is on sys.path (its conftest.py)

from model_core.errors import InputError
from model_core.keypoints import read_keypoints
from pipeline.pose_detection import MediapipePoseDetector, NoPersonFound
from pipeline.qc import DEFAULT_QC, ModelReference, QCConfig, QCResult, best_candidate, check_image

TEE = "MEN/Tees_Tanks/id_00004047"
MODEL_SIZE = (352, 512)  # the production model's frame (width, height)


@pytest.fixture(scope="module")
def detector():
    return MediapipePoseDetector()


@pytest.fixture(scope="module")
def tee(deepfashion_dir):
    """Photos and annotated poses of one man in one printed tee, by view name."""
    folder = deepfashion_dir / "img" / TEE
    photos = {path.stem: Image.open(path).convert("RGB") for path in sorted(folder.glob("*.jpg"))}
    poses = {name: read_keypoints(deepfashion_dir / "pose" / TEE / f"{name}.txt", 750, 1101) for name in photos}
    return photos, poses


def hue_rotated(image: Image.Image, degrees: int) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def shuffled(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).reshape(-1, 3).copy()
    np.random.default_rng(0).shuffle(pixels)
    return Image.fromarray(pixels.reshape(image.height, image.width, 3))


# ----- a real photo passes -------------------------------------------------------------------


@pytest.mark.parametrize("size", [None, MODEL_SIZE], ids=["photo_size", "model_size"])
@pytest.mark.parametrize("view, source_view", [("01_1_front", "01_7_additional"), ("01_2_side", "01_1_front")])
def test_a_real_photo_in_the_target_pose_passes(detector, tee, view, source_view, size):
    photos, poses = tee
    image = photos[view] if size is None else photos[view].resize(size, Image.Resampling.LANCZOS)
    result = check_image(image, photos[source_view], poses[view], detector)
    assert result.status == "pass", result.reasons
    assert result.reasons == []
    assert result.metrics["person_found"] is True
    assert result.metrics["pose_pck"] >= 0.9  # measured 0.92-1.0
    assert result.metrics["colour_match"] >= 0.85  # measured 0.89-1.0
    assert result.score >= 0.9
    assert result.metrics["alignment"] is None and result.metrics["clip_similarity"] is None  # no model


# ----- sanity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, reason",
    [
        (shuffled, "noise:"),
        (lambda image: Image.fromarray(np.random.default_rng(1).integers(0, 256, (512, 352, 3), dtype=np.uint8)), "noise:"),
        (lambda image: Image.new("RGB", image.size, (128, 128, 128)), "blank:"),
        (lambda image: Image.new("RGB", image.size, (0, 0, 0)), "blank:"),
        (lambda image: ImageEnhance.Contrast(image).enhance(4), "saturated:"),
        (lambda image: ImageEnhance.Color(image).enhance(8), "saturated:"),
    ],
    ids=["shuffled", "noise", "grey", "black", "contrast", "colour"],
)
def test_garbled_images_fail_on_sanity_alone(detector, tee, damage, reason):
    photos, poses = tee
    result = check_image(damage(photos["01_1_front"]), photos["01_7_additional"], poses["01_1_front"], detector)
    assert result.status == "fail"
    assert [r.split()[0] for r in result.reasons] == [reason], result.reasons
    # No pose or colour checks on an unusable image: its "no person" would only repeat it.
    assert result.metrics["person_found"] is None and result.metrics["colour_match"] is None
    assert result.score == 0.0


def test_non_finite_pixels_fail(detector, tee):
    photos, poses = tee
    decoded = np.asarray(photos["01_1_front"], dtype=np.float32)
    decoded[:10] = np.nan
    result = check_image(decoded, photos["01_7_additional"], poses["01_1_front"], detector)
    assert result.status == "fail"
    assert result.metrics["finite"] is False
    assert result.reasons[0].startswith("not finite")
    # The same float pixels, finite, are a real photo.
    clean = check_image(
        np.asarray(photos["01_1_front"], dtype=np.float32), photos["01_7_additional"], poses["01_1_front"], detector
    )
    assert clean.status == "pass" and clean.metrics["finite"] is True


# ----- pose ----------------------------------------------------------------------------------


def test_an_image_without_a_person_fails_with_no_person(detector, tee):
    photos, poses = tee
    # A studio backdrop: a smooth gradient with two flat shapes, sane pixels but nobody there.
    gradient = np.linspace(60, 230, 512, dtype=np.float32)[:, None, None] * np.ones((1, 352, 3), np.float32)
    gradient[100:220, 40:150] = (180, 40, 60)
    gradient[300:420, 200:320] = (40, 90, 160)
    backdrop = Image.fromarray(gradient.astype(np.uint8))
    result = check_image(backdrop, photos["01_7_additional"], poses["01_1_front"], detector)
    assert result.status == "fail"
    assert result.metrics["luminance_std"] > DEFAULT_QC.contrast_review_below  # sane, just empty
    assert result.metrics["person_found"] is False and result.metrics["pose_pck"] is None
    # No even background to tell a figure from: the figure cannot stand in for the detector.
    assert result.reasons[0].startswith("pose: the detector found no person at 352x512, and the background is not even")


def test_the_same_person_in_another_pose_does_not_pass(detector, tee):
    photos, poses = tee
    # The side view checked against the front view's keypoints (measured PCK 0.36).
    result = check_image(photos["01_2_side"], photos["01_1_front"], poses["01_1_front"], detector)
    assert result.status != "pass"
    assert result.metrics["pose_pck"] < DEFAULT_QC.pck_fail_below
    assert any(reason.startswith("pose:") for reason in result.reasons), result.reasons
    right = check_image(photos["01_2_side"], photos["01_1_front"], poses["01_2_side"], detector)
    assert result.score < right.score


# ----- appearance ----------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [60, 180])
def test_a_garment_of_other_colours_is_not_passed(detector, tee, degrees):
    photos, poses = tee
    original = check_image(photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], detector)
    recoloured = check_image(hue_rotated(photos["01_1_front"], degrees), photos["01_7_additional"], poses["01_1_front"], detector)
    assert recoloured.status in ("review", "fail")
    assert any(reason.startswith("appearance:") for reason in recoloured.reasons), recoloured.reasons
    # measured: 1.0 for the photo, 0.80 rotated by 60 degrees, 0.48 by 180
    assert recoloured.metrics["colour_match"] < original.metrics["colour_match"] - 0.15
    assert recoloured.metrics["pose_pck"] == original.metrics["pose_pck"]  # the pose is still right


def test_a_source_without_a_person_leaves_appearance_unmeasured(detector, tee):
    photos, poses = tee
    backdrop = Image.new("RGB", (750, 1101), (225, 224, 222))
    result = check_image(photos["01_1_front"], backdrop, poses["01_1_front"], detector)
    assert result.status == "review"
    assert result.reasons == [
        "appearance not measured: no person found in the source photo, and no figure stands out from the source photo's "
        "background"
    ]
    assert result.metrics["source_person_found"] is False
    assert result.metrics["colour_match"] is None
    assert result.metrics["pose_pck"] == 1.0


class CountingDetector:
    def __init__(self, detector):
        self.detector, self.names = detector, []

    def detect(self, image, name="<image>"):
        self.names.append(name)
        return self.detector.detect(image, name)


def test_given_source_keypoints_are_used_instead_of_detecting(detector, tee):
    photos, poses = tee
    counting = CountingDetector(detector)
    result = check_image(
        photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], counting,
        source_keypoints=poses["01_7_additional"],
    )  # fmt: skip
    assert counting.names == ["generated image"]
    assert result.status == "pass" and result.metrics["colour_match"] >= 0.9
    with pytest.raises(InputError, match="not the shape of the 750x1101 source photo"):
        check_image(
            photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], detector,
            source_keypoints=poses["01_7_additional"].fitted(500, 500),
        )  # fmt: skip


def test_any_detector_that_raises_no_person_found_will_do(tee):
    photos, poses = tee

    class NobodyDetector:
        def detect(self, image, name="<image>"):
            raise NoPersonFound(f"{name}: no person found in the image")

    result = check_image(photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], NobodyDetector())
    # The real photo's figure stands where the pose puts it (figure score 0.83 at 750x1101), so
    # the pose is graded from the figure: a review that says the detector did not verify it.
    assert result.status == "review"
    assert result.reasons[0].startswith("pose not verified: the detector found no person at 750x1101; figure present")
    # Nor is the source's pose found: the colours are compared figure to figure (the same garment).
    assert len(result.reasons) == 1 and result.metrics["colour_match"] >= 0.9  # measured: 0.999
    assert DEFAULT_QC.figure_fail_below <= result.metrics["figure_score"] < DEFAULT_QC.figure_review_below


# ----- best-of-N and the result's JSON -------------------------------------------------------


def make_result(status, score):
    return QCResult(status=status, reasons=[] if status == "pass" else ["x"], score=score, metrics={})


def test_best_candidate_ranks_status_first_then_score():
    assert best_candidate([make_result("fail", 0.9), make_result("review", 0.8), make_result("pass", 0.5)]) == 2
    assert best_candidate([make_result("pass", 0.5), make_result("pass", 0.7), make_result("review", 0.99)]) == 1
    assert best_candidate([make_result("fail", 0.1), make_result("fail", 0.3)]) == 1
    assert best_candidate([make_result("pass", 0.7), make_result("pass", 0.7)]) == 0  # the first on a tie
    with pytest.raises(ValueError):
        best_candidate([])


def test_best_candidate_keeps_the_good_image_among_real_candidates(detector, tee):
    photos, poses = tee
    front = photos["01_1_front"]
    candidates = [shuffled(front), hue_rotated(front, 180), front, photos["01_2_side"]]
    results = [check_image(image, photos["01_7_additional"], poses["01_1_front"], detector) for image in candidates]
    assert [r.status for r in results][2] == "pass"
    assert best_candidate(results) == 2


def test_result_json_round_trip(detector, tee):
    photos, poses = tee
    result = check_image(hue_rotated(photos["01_1_front"], 180), photos["01_7_additional"], poses["01_1_front"], detector)
    data = json.loads(json.dumps(result.to_json()))
    assert set(data) == {"status", "reasons", "score", "metrics"}
    assert QCResult.from_json(data) == result
    with pytest.raises(InputError):
        QCResult.from_json({"status": "great"})


# ----- the model's embedding checks ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_job(tee):
    from model_core.pipeline_fpdm import FPDMPipeline

    photos, poses = tee
    pipe = FPDMPipeline.from_pretrained("tiny")
    source = pipe.encode_source(photos["01_7_additional"])
    return pipe, ModelReference.for_job(pipe, source, pipe.encode_pose(poses["01_1_front"]))


def test_a_random_clip_records_alignment_but_judges_nothing(detector, tee, tiny_job):
    photos, poses = tee
    _, reference = tiny_job
    assert reference.clip_pretrained is False  # the tiny preset is random-initialised
    args = (photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], detector)
    with_model, without = check_image(*args, model=reference), check_image(*args)
    assert -1.0 <= with_model.metrics["alignment"] <= 1.0
    assert with_model.metrics["clip_pretrained"] is False
    assert with_model.metrics["clip_similarity"] is None
    assert (with_model.status, with_model.reasons, with_model.score) == (without.status, without.reasons, without.score)


def test_a_pretrained_clip_gates_and_scores(detector, tee, tiny_job):
    photos, poses = tee
    _, reference = tiny_job
    pretrained = dataclasses.replace(reference, clip_pretrained=True)
    args = (photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], detector)
    strict = QCConfig(clip_review_below=1.01, alignment_review_below=1.01)  # cosines never reach these
    result = check_image(*args, model=pretrained, config=strict)
    assert result.status == "review"
    assert [reason.split(" ")[:2] for reason in result.reasons] == [["appearance:", "CLIP"], ["FPDM", "alignment"]]
    assert -1.0 <= result.metrics["clip_similarity"] <= 1.0
    # The default config ranks with the embeddings but does not gate on alignment.
    default = check_image(*args, model=pretrained)
    assert default.score != check_image(*args).score
    assert not any(reason.startswith("FPDM alignment") for reason in default.reasons)


def test_a_stage_2_only_model_has_no_embedding_checks(detector, tee):
    from model_core.pipeline_fpdm import FPDMPipeline
    from model_core.presets import preset_config

    photos, poses = tee
    pipe = FPDMPipeline.from_config(preset_config("tiny"), stage2_only=True)
    reference = ModelReference.for_job(pipe, pipe.encode_source(photos["01_7_additional"]), pipe.encode_pose(poses["01_1_front"]))
    result = check_image(photos["01_1_front"], photos["01_7_additional"], poses["01_1_front"], detector, model=reference)
    assert result.metrics["alignment"] is None and result.metrics["clip_pretrained"] is None
    assert result.status == "pass"


# ----- fpdm qc -------------------------------------------------------------------------------


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_cli_passes_a_real_photo_in_its_pose(deepfashion_dir):
    result = run_fpdm(
        "qc", "--source", deepfashion_dir / "img" / TEE / "01_7_additional.jpg",
        "--pose", deepfashion_dir / "pose" / TEE / "01_1_front.txt",
        "--image", deepfashion_dir / "img" / TEE / "01_1_front.jpg", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "pass" and data["reasons"] == []
    assert data["metrics"]["pose_pck"] >= 0.9


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_cli_fails_a_garbled_image_and_says_why(deepfashion_dir, tmp_path):
    garbled = tmp_path / "garbled.png"
    shuffled(Image.open(deepfashion_dir / "img" / TEE / "01_1_front.jpg").convert("RGB")).save(garbled)
    result = run_fpdm(
        "qc", "--source", deepfashion_dir / "img" / TEE / "01_7_additional.jpg",
        "--pose", deepfashion_dir / "pose" / TEE / "01_1_front.txt", "--image", garbled,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["status", "fail"]
    assert any(line.strip().startswith("- noise:") for line in lines), result.stdout
    noise_share = next(float(line.split()[1]) for line in lines if line.split()[0] == "noise_share")
    assert noise_share > 0.9


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_cli_bad_input_is_one_error_line(deepfashion_dir, tmp_path):
    result = run_fpdm(
        "qc", "--source", tmp_path / "missing.jpg",
        "--pose", deepfashion_dir / "pose" / TEE / "01_1_front.txt",
        "--image", deepfashion_dir / "img" / TEE / "01_1_front.jpg",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fpdm: error: {tmp_path / 'missing.jpg'}: cannot read image (No such file or directory)"
    ]
