"""Pose-transfer metrics against known targets, and `fpdm eval` on a synthetic pairs file."""

import json

import numpy as np
import pytest
from PIL import Image
from stick_figures import make_pairs

from model_core.evaluation import evaluate_pairs, figure_mask, pose_accuracy, psnr, score_pair, ssim
from model_core.images import ModelGeometry
from model_core.keypoints import read_keypoints
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.training_data import read_pairs


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), people=3, poses_per_person=2, seed=4)


def _frame(pairs_csv, index=0):
    pair = read_pairs(pairs_csv)[index]
    geometry = ModelGeometry(height=64, width=48)
    target = Image.open(pair.target_image).convert("RGB")
    source = Image.open(pair.source_image).convert("RGB")
    keypoints = geometry.keypoints(read_keypoints(pair.target_pose, default_size=target.size))
    return geometry.photo(source), geometry.photo(target), keypoints


def test_the_target_itself_scores_perfectly_and_the_source_in_another_pose_does_not(pairs_csv):
    source, target, keypoints = _frame(pairs_csv)
    perfect = score_pair(0, target, target, keypoints)
    assert (perfect.ssim, perfect.psnr, perfect.colour_error, perfect.pose_accuracy, perfect.figure_iou) == (
        1.0,
        100.0,
        0.0,
        1.0,
        1.0,
    )
    copied = score_pair(0, source, target, keypoints)
    assert copied.ssim < 1 and copied.psnr < 40 and copied.figure_iou < 0.9
    assert copied.pose_accuracy < 1.0  # the limbs that moved are not where the target has them
    blank = score_pair(0, Image.new("RGB", target.size, (245, 245, 240)), target, keypoints)
    assert blank.pose_accuracy == 0.0 and blank.figure_iou == 0.0


def test_colour_error_grows_with_a_garment_of_another_colour(pairs_csv):
    _, target, keypoints = _frame(pairs_csv)
    pixels = np.asarray(target).copy()
    figure = figure_mask(pixels)
    recoloured = pixels.copy()
    recoloured[figure] = recoloured[figure][:, ::-1]  # RGB -> BGR inside the person
    score = score_pair(0, Image.fromarray(recoloured), target, keypoints)
    assert score.colour_error > 10 and score.pose_accuracy == 1.0  # same figure, other colours


def test_ssim_and_psnr_follow_the_noise():
    rng = np.random.default_rng(0)
    image = (rng.uniform(0, 255, (64, 48, 3))).astype(np.uint8)
    slightly = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    badly = np.clip(image + rng.normal(0, 60, image.shape), 0, 255).astype(np.uint8)
    assert ssim(image, slightly) > ssim(image, badly) and psnr(image, slightly) > psnr(image, badly) + 10


def test_pose_accuracy_counts_keypoints_with_figure_pixels_nearby(pairs_csv):
    _, target, keypoints = _frame(pairs_csv)
    figure = figure_mask(np.asarray(target))
    left_half = figure.copy()
    left_half[:, figure.shape[1] // 2 :] = False
    assert pose_accuracy(figure, keypoints) == 1.0
    assert 0.0 < pose_accuracy(left_half, keypoints) < 1.0


def test_evaluate_generates_every_pair_with_and_without_fusion(pairs_csv):
    pipe = FPDMPipeline.from_pretrained("tiny")
    pairs = read_pairs(pairs_csv)
    full = evaluate_pairs(pipe, pairs, steps=2)
    assert full.method == "fpdm" and [s.pair for s in full.scores] == list(range(len(pairs)))
    assert evaluate_pairs(pipe, pairs, steps=2, use_fusion=False).method == "stage 2 only"
    baseline = evaluate_pairs(pipe, pairs, copy_source=True)
    assert baseline.method == "copy the source"
    # tiny is untrained noise: the copied source, a real figure, is closer to the targets.
    assert baseline.means()["ssim"] > full.means()["ssim"]


def test_cli_eval_prints_means_or_json(pairs_csv, capsys):
    from fpdm_cli.main import main

    assert main(["eval", "--copy-source", "--pairs", str(pairs_csv)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("copy the source (-), 6 pairs") and "pose_accuracy" in out and "LPIPS and FID skipped" in out
    assert main(["eval", "--model", "tiny", "--pairs", str(pairs_csv), "--steps", "2", "--limit", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pairs"] == 2 and result["method"] == "fpdm" and set(result["means"]) >= {"ssim", "psnr", "colour_error"}
