"""Pose detection for catalog photos: backends behind one interface, each returning COCO-18
`Keypoints` in the photo's pixel frame.

- `openpose`: the OpenPose body network as controlnet_aux 0.0.10 ships it, with weights from a
  local folder or an s3:// prefix (copied once into a local cache) holding `body_pose_model.pth`
  (the lllyasviel/Annotators file) or `body_pose_model.safetensors`. controlnet_aux's own loader
  is not used: `OpenposeDetector.from_pretrained` downloads from the Hugging Face hub unless
  given a folder, insists on the hand and face models too, and `Body` unpickles the file with
  a bare `torch.load`. We build its network, load the weights with safetensors or
  `torch.load(weights_only=True)`, and run its detection code on the body only.
- `mediapipe`: MediaPipe's BlazePose, bundled inside the mediapipe 0.10.14 wheel, so it works
  offline; mapped to COCO-18 (the neck is the shoulders' midpoint).
- `keypoints`: no detection; the file is the pose. The caller reads keypoint files (model_core
  reads the formats) and never calls a detector, so `make_pose_detector` returns None.

`auto` is openpose when its weights are configured (an argument or FPDM_OPENPOSE_WEIGHTS), else
mediapipe. Nothing is downloaded at run time.

Every detector has `name` (the backend), `identity` (a cache key for detected poses: it changes
whenever results could) and `detect(image, name) -> Keypoints`. A photo without a person raises
NoPersonFound, an InputError: one bad row, not a crash.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import threading
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from model_core.errors import InputError
from model_core.keypoints import Keypoints
from pipeline import storage

POSE_BACKENDS = ("auto", "openpose", "mediapipe", "keypoints")
OPENPOSE_WEIGHTS_ENV = "FPDM_OPENPOSE_WEIGHTS"
# Looked for in this order: safetensors needs no unpickling at all.
OPENPOSE_WEIGHT_FILES = ("body_pose_model.safetensors", "body_pose_model.pth")
# Bump when our pre- or post-processing changes, so poses cached under an identity go stale.
OPENPOSE_REVISION = 1


class PoseDetector(Protocol):
    name: str
    identity: str

    def detect(self, image: Image.Image, name: str = "<image>") -> Keypoints: ...


# COCO-18 index -> BlazePose landmark index ("right" is the person's right in both).
COCO18_FROM_BLAZEPOSE = {
    0: 0,  # nose
    2: 12,
    3: 14,
    4: 16,  # right shoulder, elbow, wrist
    5: 11,
    6: 13,
    7: 15,  # left shoulder, elbow, wrist
    8: 24,
    9: 26,
    10: 28,  # right hip, knee, ankle
    11: 23,
    12: 25,
    13: 27,  # left hip, knee, ankle
    14: 5,
    15: 2,  # right eye, left eye
    16: 8,
    17: 7,  # right ear, left ear
}
NECK = 1


class NoPersonFound(InputError):
    """The detector found no person in a reference photo (or a generated image)."""


class MediapipePoseDetector:
    name = "mediapipe"

    def __init__(self, min_visibility: float = 0.5, model_complexity: int = 1):
        import mediapipe as mp

        self.min_visibility = min_visibility
        self.identity = f"mediapipe-{mp.__version__}-c{model_complexity}-v{min_visibility:g}"
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=model_complexity)
        self._lock = threading.Lock()  # a MediaPipe graph runs one image at a time

    def detect(self, image: Image.Image, name: str = "<image>") -> Keypoints:
        rgb = np.asarray(image.convert("RGB"))
        with self._lock:
            result = self._pose.process(rgb)
        if result.pose_landmarks is None:
            raise NoPersonFound(f"{name}: no person found in the image")
        width, height = image.size
        landmarks = result.pose_landmarks.landmark
        points = np.zeros((18, 3), dtype=np.float32)
        for coco, blaze in COCO18_FROM_BLAZEPOSE.items():
            mark = landmarks[blaze]
            inside = 0 <= mark.x <= 1 and 0 <= mark.y <= 1
            if mark.visibility >= self.min_visibility and inside:
                points[coco] = (mark.x * width, mark.y * height, mark.visibility)
        right, left = points[2], points[5]
        if right[2] > 0 and left[2] > 0:
            points[NECK] = ((right[0] + left[0]) / 2, (right[1] + left[1]) / 2, min(right[2], left[2]))
        if (points[:, 2] > 0).sum() < 4:
            raise NoPersonFound(f"{name}: no person found in the image (only {(points[:, 2] > 0).sum()} keypoints visible)")
        return Keypoints(points, width, height)


class OpenposePoseDetector:
    """OpenPose's body network (controlnet_aux 0.0.10) on local weights. `weights` is a folder or
    an s3:// prefix holding one of OPENPOSE_WEIGHT_FILES. An s3 prefix is copied into the local
    cache on first use and read from there afterwards without asking S3 again, so point it at
    an immutable (versioned) prefix."""

    name = "openpose"

    def __init__(self, weights: str, detect_resolution: int = 512, device: str | None = None):
        import torch

        version, body_module, model_module = _import_controlnet_aux_openpose()
        weight_file = _local_openpose_weights(str(weights))
        data = weight_file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        # Built on the meta device: no point filling 52 M parameters with random numbers that
        # the file's tensors replace.
        with torch.device("meta"):
            network = model_module.bodypose_model()
        _load_openpose_weights(network, _read_state_dict(data, weight_file), weight_file)
        network.eval().to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Body.__init__ would unpickle the file itself (a bare torch.load); its __call__ needs
        # nothing but the network in `.model`.
        self._body = body_module.Body.__new__(body_module.Body)
        self._body.model = network

        self.weights = str(weights)
        self.weights_sha256 = digest
        self.detect_resolution = detect_resolution
        self.identity = f"openpose-controlnet_aux-{version}-r{OPENPOSE_REVISION}-d{detect_resolution}-{digest[:16]}"
        # One image at a time: controlnet_aux's post-processing holds float64 heatmaps and part
        # affinity fields at detection resolution (~160 MB for a 512x683 image) per call.
        self._lock = threading.Lock()

    def detect(self, image: Image.Image, name: str = "<image>") -> Keypoints:
        import cv2
        import torch

        rgb = np.asarray(image.convert("RGB"))
        height, width = rgb.shape[:2]
        # As controlnet_aux's __call__: the short side goes to detect_resolution, with its choice
        # of interpolation. Unlike it we keep the aspect ratio exact instead of rounding both
        # sides to multiples of 64; the body code pads to its stride itself.
        scale = self.detect_resolution / min(width, height)
        detect_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4
        resized = cv2.resize(rgb, detect_size, interpolation=interpolation)
        bgr = np.ascontiguousarray(resized[:, :, ::-1])  # the network was trained on OpenCV's BGR
        with self._lock, torch.no_grad():
            candidate, subset = self._body(bgr)
        return keypoints_from_body_peaks(candidate, subset, detect_size, (width, height), name)


def keypoints_from_body_peaks(
    candidate: np.ndarray,
    subset: np.ndarray,
    detect_size: tuple[int, int],
    image_size: tuple[int, int],
    name: str = "<image>",
) -> Keypoints:
    """COCO-18 keypoints of one person from controlnet_aux's `Body` output.

    `candidate` rows are the heatmap peaks (x, y, score, id), x and y integer pixel indices of
    the detection-size image (width, height) = `detect_size`; each `subset` row is a person:
    18 candidate indices in OpenPose's COCO-18 order (-1: not found), then total score and
    number of parts. Of several people, the one with the most parts wins, then the highest
    score. A peak at pixel i stands for its centre, i + 0.5, scaled to `image_size`."""
    _, body_module, _ = _import_controlnet_aux_openpose()
    people = body_module.Body.format_body_result(np.asarray(candidate), np.asarray(subset))
    if not people:
        raise NoPersonFound(f"{name}: no person found in the image")
    person = max(people, key=lambda body: (body.total_parts, body.total_score))
    (detect_width, detect_height), (width, height) = detect_size, image_size
    points = np.zeros((18, 3), dtype=np.float32)
    for index, keypoint in enumerate(person.keypoints):
        if keypoint is None:
            continue
        # The score is the raw heatmap value at the peak; keep a part OpenPose linked into the
        # person visible even where that value is tiny, and cap it to a confidence in (0, 1].
        points[index] = (
            (keypoint.x + 0.5) * width / detect_width,
            (keypoint.y + 0.5) * height / detect_height,
            min(max(float(keypoint.score), 0.01), 1.0),
        )
    return Keypoints(points, width, height)


def _import_controlnet_aux_openpose():
    # controlnet_aux's package __init__ imports every detector it has (timm, SAM, ...), which
    # warn about deprecations that are none of ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux
        from controlnet_aux.open_pose import body, model
    return controlnet_aux.__version__, body, model


def _missing_weights(where: str) -> InputError:
    return InputError(
        f"{where}: no OpenPose body weights there (expected {OPENPOSE_WEIGHT_FILES[1]} from "
        f"lllyasviel/Annotators, or {OPENPOSE_WEIGHT_FILES[0]})"
    )


def _local_openpose_weights(weights: str) -> Path:
    """The weight file on local disk; an s3:// prefix is downloaded into the cache once."""
    if not storage.is_s3(weights):
        folder = Path(weights)
        for file_name in OPENPOSE_WEIGHT_FILES:
            if (folder / file_name).is_file():
                return folder / file_name
        raise _missing_weights(weights)

    prefix = weights.rstrip("/")
    cache = storage.local_cache_root() / "openpose" / hashlib.sha256(prefix.encode()).hexdigest()[:16]
    for file_name in OPENPOSE_WEIGHT_FILES:
        if (cache / file_name).is_file():  # complete: write_bytes renames into place
            return cache / file_name
    available = set(storage.list_prefix(prefix + "/"))
    for file_name in OPENPOSE_WEIGHT_FILES:
        uri = storage.join(prefix, file_name)
        if uri in available:
            storage.write_bytes(cache / file_name, storage.read_bytes(uri))
            return cache / file_name
    raise _missing_weights(weights)


def _read_state_dict(data: bytes, path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as error:  # safetensors raises its own SafetensorError for bad headers
            raise InputError(f"{path}: not a readable safetensors file ({error})") from None

    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a page of advice on loading with weights_only=False; keep the reason.
        reason = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line), "")
        raise InputError(
            f"{path}: refused: not a plain tensor state dict, so it would need unpickling "
            f"(weights load with torch.load(weights_only=True) only){': ' + reason if reason else ''}"
        ) from None
    except Exception as error:  # a truncated or foreign file: zip and storage errors
        raise InputError(f"{path}: not a readable torch weight file ({error.__class__.__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise InputError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def _load_openpose_weights(network, state: dict, path: Path) -> None:
    # The files name layers without the block that holds them ("conv1_1.weight" for
    # "model0.conv1_1.weight"); controlnet_aux's util.transfer drops that first component too.
    file_keys = {key: key.split(".", 1)[1] for key in network.state_dict()}
    missing = [file_key for file_key in file_keys.values() if file_key not in state]
    if missing:
        raise InputError(
            f"{path}: not OpenPose body weights: {len(missing)} of {len(file_keys)} tensors missing "
            f"(such as {', '.join(missing[:3])})"
        )
    try:
        # assign=True takes the tensors as they are, so half-precision files become float here.
        network.load_state_dict({key: state[file_key].float() for key, file_key in file_keys.items()}, assign=True)
    except RuntimeError as error:  # shape mismatches
        detail = str(error).splitlines()[-1].strip()
        raise InputError(f"{path}: weights do not fit the OpenPose body network ({detail})") from None


def make_pose_detector(backend: str = "auto", openpose_weights: str | None = None) -> PoseDetector | None:
    """The detector for a backend name. `openpose_weights` defaults to $FPDM_OPENPOSE_WEIGHTS.
    `keypoints` gives None: the caller reads keypoint files and refuses photos."""
    if backend not in POSE_BACKENDS:
        raise InputError(f"unknown pose backend {backend!r}; choose one of: {', '.join(POSE_BACKENDS)}")
    if openpose_weights is None:
        openpose_weights = os.environ.get(OPENPOSE_WEIGHTS_ENV)
    if backend == "auto":
        backend = "openpose" if openpose_weights else "mediapipe"
    if backend == "keypoints":
        return None
    if backend == "mediapipe":
        return MediapipePoseDetector()
    if not openpose_weights:
        raise InputError(
            f"pose backend 'openpose' needs its weights: set {OPENPOSE_WEIGHTS_ENV} to a local folder "
            f"or an s3:// prefix holding {OPENPOSE_WEIGHT_FILES[1]} (from lllyasviel/Annotators) "
            f"or {OPENPOSE_WEIGHT_FILES[0]}; they are never downloaded"
        )
    return OpenposePoseDetector(openpose_weights)


def pck(predicted: Keypoints, reference: Keypoints, threshold: float = 0.1) -> float | None:
    """Percentage of Correct Keypoints: of the keypoints visible in the reference, the share
    the prediction places within `threshold` x body size (the diagonal of the reference's
    visible keypoints' box). A reference keypoint the prediction misses counts as wrong.
    None when the reference has too few keypoints to define a body size."""
    if (predicted.width, predicted.height) != (reference.width, reference.height):
        predicted = predicted.fitted(reference.width, reference.height)
    box = reference.bbox()
    visible = reference.visible
    if box is None or visible.sum() < 2:
        return None
    body = float(np.hypot(box[2] - box[0], box[3] - box[1]))
    distance = np.linalg.norm(predicted.points[:, :2] - reference.points[:, :2], axis=1)
    correct = visible & predicted.visible & (distance <= threshold * body)
    return float(correct.sum() / visible.sum())
