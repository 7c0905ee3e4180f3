"""The openpose backend (controlnet_aux's body network on local or S3 weights) and backend choice.

The real weights can't be in the tests, so the tests write their own: controlnet_aux's body
network at full size with a fixed seed, saved under the tensor names of lllyasviel/Annotators'
body_pose_model.pth. Random weights find nobody; to see a person, one test swaps in a network
that "sees" coloured squares and lets controlnet_aux's own post-processing find the joints.
"""

import hashlib
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from model_core.errors import InputError
from model_core.keypoints import COCO18_NAMES
from pipeline.pose_detection import (
    OPENPOSE_WEIGHTS_ENV,
    POSE_BACKENDS,
    MediapipePoseDetector,
    NoPersonFound,
    OpenposePoseDetector,
    _import_controlnet_aux_openpose,
    keypoints_from_body_peaks,
    make_pose_detector,
)


@pytest.fixture(scope="module")
def state_dict():
    """Full-size random body weights (52 M floats, 209 MB) named as in body_pose_model.pth,
    whose keys drop controlnet_aux's block prefix ("model0.conv1_1.weight" -> "conv1_1.weight")."""
    _, _, model = _import_controlnet_aux_openpose()
    torch.manual_seed(0)
    network = model.bodypose_model()
    return {key.split(".", 1)[1]: value for key, value in network.state_dict().items()}


@pytest.fixture(scope="module")
def weights_dir(state_dict, tmp_path_factory):
    folder = tmp_path_factory.mktemp("openpose")
    torch.save(state_dict, folder / "body_pose_model.pth")
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir):
    return OpenposePoseDetector(str(weights_dir))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FPDM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- keypoint conversion ---------------------------------------------------------------------


def _body_output(people):
    """controlnet_aux's Body output for people given as {part: (x, y, score)}, plus a total
    score each: candidate rows (x, y, score, id), subset rows (18 indices, score, parts)."""
    candidate, subset = [], []
    for parts, total_score in people:
        row = -np.ones(20)
        for part, (x, y, score) in parts.items():
            row[part] = len(candidate)
            candidate.append((x, y, score, len(candidate)))
        row[18:] = total_score, len(parts)
        subset.append(row)
    return np.array(candidate), np.array(subset)


def test_conversion_maps_peaks_to_pixel_centres_of_the_photo():
    # Detection ran at 200x300 on a 400x600 photo: peak pixel i is the photo's 2 * (i + 0.5).
    parts = {0: (100, 50, 0.73), 1: (100, 90, 1.2), 2: (80, 90, 0.0), 5: (120, 90, 0.9), 17: (0, 299, 0.5)}
    candidate, subset = _body_output([(parts, 3.3)])
    keypoints = keypoints_from_body_peaks(candidate, subset, (200, 300), (400, 600))
    assert (keypoints.width, keypoints.height) == (400, 600)
    assert keypoints.visible.tolist() == [i in parts for i in range(18)]
    np.testing.assert_allclose(keypoints.points[0], (201, 101, 0.73), rtol=1e-6)
    np.testing.assert_allclose(keypoints.points[17], (1, 599, 0.5), rtol=1e-6)
    # Heatmap values above 1 are capped; a linked part with a value near 0 stays visible.
    assert keypoints.points[1, 2] == 1.0
    assert 0 < keypoints.points[2, 2] <= 0.01
    assert (keypoints.points[~keypoints.visible] == 0).all()


def test_conversion_keeps_the_person_with_most_parts_then_highest_score():
    few = {i: (10 + i, 10, 0.9) for i in range(5)}
    most = {i: (50 + i, 20, 0.5) for i in range(8)}
    also_most = {i: (90 + i, 30, 0.5) for i in range(8)}
    candidate, subset = _body_output([(few, 9.0), (most, 4.0), (also_most, 4.5)])
    keypoints = keypoints_from_body_peaks(candidate, subset, (100, 100), (100, 100))
    assert keypoints.visible.sum() == 8
    assert keypoints.points[0, :2].tolist() == [90.5, 30.5]


def test_conversion_of_nobody_is_no_person_found():
    # What Body returns when no heatmap has a peak.
    with pytest.raises(NoPersonFound, match="studio.jpg: no person found"):
        keypoints_from_body_peaks(np.array([]), -np.ones((0, 20)), (512, 768), (1000, 1500), "studio.jpg")


# --- the detector end to end ------------------------------------------------------------------


def test_random_weights_load_and_find_nobody(detector, weights_dir):
    digest = hashlib.sha256((weights_dir / "body_pose_model.pth").read_bytes()).hexdigest()
    assert detector.name == "openpose"
    assert detector.identity.startswith("openpose-controlnet_aux-0.0.10-")
    assert detector.identity.endswith(digest[:16])
    photo = Image.effect_noise((300, 450), 60).convert("RGB")
    with pytest.raises(NoPersonFound, match="noise.jpg: no person found in the image"):
        detector.detect(photo, "noise.jpg")


# A figure facing the camera on a 1000x1500 photo; the person's right is on the image's left.
FIGURE = {
    "nose": (500, 200),
    "neck": (500, 420),
    "right_shoulder": (330, 430),
    "right_elbow": (250, 650),
    "right_wrist": (200, 870),
    "left_shoulder": (670, 430),
    "left_elbow": (750, 650),
    "left_wrist": (800, 870),
    "right_hip": (400, 850),
    "right_knee": (390, 1100),
    "right_ankle": (380, 1350),
    "left_hip": (600, 850),
    "left_knee": (610, 1100),
    "left_ankle": (620, 1350),
    "right_eye": (420, 110),
    "left_eye": (580, 110),
    "right_ear": (300, 170),
    "left_ear": (700, 170),
}
# Copied from controlnet_aux's Body.__call__ (locals there): limb k joins parts limbSeq[k]
# (1-based) and reads its part affinity field from channels mapIdx[k] - 19.
LIMB_SEQ = [
    [2, 3],
    [2, 6],
    [3, 4],
    [4, 5],
    [6, 7],
    [7, 8],
    [2, 9],
    [9, 10],
    [10, 11],
    [2, 12],
    [12, 13],
    [13, 14],
    [2, 1],
    [1, 15],
    [15, 17],
    [1, 16],
    [16, 18],
    [3, 17],
    [6, 18],
]
MAP_IDX = [
    [31, 32],
    [39, 40],
    [33, 34],
    [35, 36],
    [41, 42],
    [43, 44],
    [19, 20],
    [21, 22],
    [23, 24],
    [25, 26],
    [27, 28],
    [29, 30],
    [47, 48],
    [49, 50],
    [53, 54],
    [51, 52],
    [55, 56],
    [37, 38],
    [45, 46],
]


def _level(part: int) -> int:
    return 60 + 10 * part


class SquareSeer(torch.nn.Module):
    """Stands in for the body network: the heatmap of part k peaks (at 1) on the centroid of
    the pure-green-topped squares whose red level is 60 + 10k; each limb's affinity field is the
    figure's limb direction everywhere. Output at 1/8 of the input, as the real network's."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # Body.__call__ asks the device of one
        directions = np.zeros((38,), np.float32)
        points = [np.array(FIGURE[name], np.float32) for name in COCO18_NAMES]
        for (a, b), channels in zip(LIMB_SEQ, MAP_IDX, strict=True):
            vector = points[b - 1] - points[a - 1]
            directions[[c - 19 for c in channels]] = vector / np.linalg.norm(vector)
        self.directions = torch.from_numpy(directions)

    def forward(self, x):
        _, _, height, width = x.shape
        blue_green_red = (x[0] + 0.5) * 256  # Body feeds BGR, scaled to [-0.5, 0.5)
        green, red = blue_green_red[1], blue_green_red[2]
        cells_y = torch.arange(height // 8) * 8 + 4.0  # output cell centres, in input pixels
        cells_x = torch.arange(width // 8) * 8 + 4.0
        heatmaps = torch.zeros(1, 19, height // 8, width // 8)
        for part in range(18):
            ys, xs = torch.nonzero((green > 250) & ((red - _level(part)).abs() < 4), as_tuple=True)
            if len(ys):
                cy, cx = ys.float().mean() + 0.5, xs.float().mean() + 0.5
                distance2 = (cells_y[:, None] - cy) ** 2 + (cells_x[None, :] - cx) ** 2
                heatmaps[0, part] = torch.exp(-distance2 / (2 * 8.0**2))
        pafs = self.directions[None, :, None, None].expand(1, 38, height // 8, width // 8).clone()
        return pafs, heatmaps


@pytest.mark.parametrize("scale", [1.0, 0.5])  # detected at 512x768: scaled down, scaled up
def test_detect_finds_the_person_in_the_photo_frame(scale, detector, monkeypatch):
    """controlnet_aux's whole post-processing (resize to its 184-px network input, padding,
    heatmap peaks, limb matching) and ours (detection resolution, BGR, pixel frame)."""
    width, height = round(1000 * scale), round(1500 * scale)
    photo = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(photo)
    half = 45 * scale
    for part, name in enumerate(COCO18_NAMES):
        x, y = np.array(FIGURE[name]) * scale
        draw.rectangle([x - half, y - half, x + half, y + half], fill=(_level(part), 255, 0))
    monkeypatch.setattr(detector._body, "model", SquareSeer())

    keypoints = detector.detect(photo, "figure.jpg")

    assert (keypoints.width, keypoints.height) == (width, height)
    assert keypoints.visible.all()
    expected = np.array([FIGURE[name] for name in COCO18_NAMES]) * scale + 0.5  # square centres
    error = np.linalg.norm(keypoints.points[:, :2] - expected, axis=1)
    # Measured at most 6.6 px (1000x1500) and 2.6 px (500x750): OpenPose's peaks are whole
    # pixels at detection resolution, after its 8-px network stride.
    assert error.max() < 12 * scale, dict(zip(COCO18_NAMES, error.round(1), strict=True))
    assert ((keypoints.points[:, 2] > 0.5) & (keypoints.points[:, 2] <= 1)).all()


def test_loading_never_touches_the_network_nor_unpickles(weights_dir, monkeypatch):
    import huggingface_hub
    from controlnet_aux import open_pose

    def no_download(*args, **kwargs):
        raise AssertionError("hub download attempted")

    def no_connection(self, address):
        raise AssertionError(f"network connection attempted to {address}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(open_pose, "hf_hub_download", no_download)
    monkeypatch.setattr(socket.socket, "connect", no_connection)
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    OpenposePoseDetector(str(weights_dir))
    assert loads == [True]


def test_safetensors_weights_load_the_same_network(state_dict, detector, tmp_path):
    from safetensors.torch import save_file

    save_file(state_dict, tmp_path / "body_pose_model.safetensors")
    from_safetensors = OpenposePoseDetector(str(tmp_path))
    assert from_safetensors.identity != detector.identity  # another file, another cache key
    loaded = from_safetensors._body.model.state_dict()
    reference = detector._body.model.state_dict()
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)


# --- weight files refused ---------------------------------------------------------------------


class RunsCode:
    """A pickle that creates a directory when unpickled: what weights_only must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv1_1.weight": RunsCode(marker)}, tmp_path / "body_pose_model.pth")
    with pytest.raises(InputError, match="refused: not a plain tensor state dict"):
        OpenposePoseDetector(str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ({"epoch": 3, "conv1_1.weight": torch.zeros(1)}, "expected a state dict of tensors"),
        ({"conv1_1.weight": torch.zeros(1)}, r"not OpenPose body weights: 183 of 184 tensors missing"),
        ("all keys, wrong shapes", "weights do not fit the OpenPose body network"),
        (b"PK\x03\x04 half a zip", "not a readable torch weight file"),
    ],
)
def test_other_weight_files_are_refused_clearly(content, message, state_dict, tmp_path):
    path = tmp_path / "body_pose_model.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "all keys, wrong shapes":
        torch.save({key: torch.zeros(1) for key in state_dict}, path)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=message) as refused:
        OpenposePoseDetector(str(tmp_path))
    assert str(path) in str(refused.value)


def test_missing_weight_file_names_folder_and_file(tmp_path):
    (tmp_path / "hand_pose_model.pth").write_bytes(b"not the body")
    with pytest.raises(InputError, match=rf"{tmp_path}: no OpenPose body weights there \(expected body_pose_model.pth"):
        OpenposePoseDetector(str(tmp_path))
    with pytest.raises(InputError, match="no OpenPose body weights there"):
        OpenposePoseDetector(str(tmp_path / "nowhere"))


# --- weights on S3 ----------------------------------------------------------------------------


@pytest.mark.slow  # loads OpenPose's network twice / starts `fpdm`: seconds
def test_s3_weights_are_copied_to_the_cache_once(s3, cache, weights_dir, detector):
    import boto3

    client = boto3.client("s3")
    client.put_object(
        Bucket="catalog", Key="models/openpose/body_pose_model.pth", Body=(weights_dir / "body_pose_model.pth").read_bytes()
    )
    client.put_object(Bucket="catalog", Key="models/openpose-other/body_pose_model.safetensors", Body=b"x")

    first = OpenposePoseDetector("s3://catalog/models/openpose/")
    assert first.identity == detector.identity  # same bytes, same key for cached poses
    [cached] = [p for p in cache.rglob("*") if p.is_file()]
    assert cached.name == "body_pose_model.pth"

    # The cache answers from now on: S3 is not asked again (and its object may be gone).
    client.delete_object(Bucket="catalog", Key="models/openpose/body_pose_model.pth")
    again = OpenposePoseDetector("s3://catalog/models/openpose")
    assert again.identity == detector.identity
    assert [p for p in cache.rglob("*") if p.is_file()] == [cached]


def test_s3_prefix_without_weights_is_named(s3, cache):
    import boto3

    boto3.client("s3").put_object(Bucket="catalog", Key="models/empty/readme.txt", Body=b"x")
    with pytest.raises(InputError, match=r"s3://catalog/models/empty: no OpenPose body weights there"):
        OpenposePoseDetector("s3://catalog/models/empty")
    assert not cache.exists() or not any(cache.rglob("*.pth"))


# --- choosing a backend -----------------------------------------------------------------------


def test_auto_is_mediapipe_without_openpose_weights(monkeypatch):
    monkeypatch.delenv(OPENPOSE_WEIGHTS_ENV, raising=False)
    chosen = make_pose_detector("auto")
    assert isinstance(chosen, MediapipePoseDetector)
    assert chosen.name == "mediapipe"
    assert chosen.identity == "mediapipe-0.10.14-c1-v0.5"
    assert isinstance(make_pose_detector("mediapipe"), MediapipePoseDetector)


def test_auto_is_openpose_when_weights_are_configured(monkeypatch, weights_dir, detector):
    monkeypatch.setenv(OPENPOSE_WEIGHTS_ENV, str(weights_dir))
    chosen = make_pose_detector()
    assert isinstance(chosen, OpenposePoseDetector)
    assert chosen.identity == detector.identity
    monkeypatch.delenv(OPENPOSE_WEIGHTS_ENV)
    assert isinstance(make_pose_detector("auto", openpose_weights=str(weights_dir)), OpenposePoseDetector)


def test_openpose_without_weights_says_how_to_configure_them(monkeypatch):
    monkeypatch.delenv(OPENPOSE_WEIGHTS_ENV, raising=False)
    with pytest.raises(InputError, match=f"needs its weights: set {OPENPOSE_WEIGHTS_ENV}.*body_pose_model.pth"):
        make_pose_detector("openpose")


def test_keypoints_backend_detects_nothing(monkeypatch, weights_dir):
    monkeypatch.setenv(OPENPOSE_WEIGHTS_ENV, str(weights_dir))
    assert make_pose_detector("keypoints") is None


def test_unknown_backend_lists_the_choices():
    assert POSE_BACKENDS == ("auto", "openpose", "mediapipe", "keypoints")
    with pytest.raises(InputError, match="unknown pose backend 'dwpose'; choose one of: auto, openpose, mediapipe, keypoints"):
        make_pose_detector("dwpose")


# --- the CLI's --backend ----------------------------------------------------------------------


@pytest.mark.slow  # loads OpenPose's network twice / starts `fpdm`: seconds
def test_cli_poses_detect_runs_the_chosen_backend(monkeypatch, weights_dir, tmp_path, capsys, deepfashion_dir):
    from fpdm_cli.main import main

    monkeypatch.delenv(OPENPOSE_WEIGHTS_ENV, raising=False)
    photo = deepfashion_dir / "img" / "MEN" / "Tees_Tanks" / "id_00004047" / "01_1_front.jpg"
    out = tmp_path / "poses"
    # openpose on the test's random weights sees nobody: one error line naming the photo, exit 1.
    assert main(["poses", "detect", str(photo), "--out", str(out), "--backend", "openpose",
                 "--openpose-weights", str(weights_dir)]) == 1  # fmt: skip
    assert f"fpdm: error: {photo}: no person found in the image" in capsys.readouterr().err
    assert not out.exists()
    # Without weights, openpose is a configuration error (exit 2) and auto falls back to mediapipe.
    assert main(["poses", "detect", str(photo), "--out", str(out), "--backend", "openpose"]) == 2
    assert OPENPOSE_WEIGHTS_ENV in capsys.readouterr().err
    assert main(["poses", "detect", str(photo), "--out", str(out)]) == 0
    assert (out / "01_1_front.json").is_file()
