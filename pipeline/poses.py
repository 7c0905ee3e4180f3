"""Pose detection for catalog photos: backends that each return COCO-18 `Keypoints`.

- `mediapipe`: MediaPipe's BlazePose, bundled inside the mediapipe 0.10.14 wheel, so it works
  offline; mapped to COCO-18 (the neck is the shoulders' midpoint).
- `keypoints`: no detection; the file is the pose (model_core reads the formats).
The OpenPose backend (controlnet_aux, local weights) comes with the rest of issue 3.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from model_core.errors import InputError
from model_core.poses import Keypoints

# COCO-18 index -> BlazePose landmark index ("right" is the person's right in both).
COCO18_FROM_BLAZEPOSE = {
    0: 0,  # nose
    2: 12, 3: 14, 4: 16,  # right shoulder, elbow, wrist
    5: 11, 6: 13, 7: 15,  # left shoulder, elbow, wrist
    8: 24, 9: 26, 10: 28,  # right hip, knee, ankle
    11: 23, 12: 25, 13: 27,  # left hip, knee, ankle
    14: 5, 15: 2,  # right eye, left eye
    16: 8, 17: 7,  # right ear, left ear
}
NECK = 1


class NoPersonFound(InputError):
    """The detector found no person in a reference photo (or a generated image)."""


class MediapipePoseDetector:
    name = "mediapipe"

    def __init__(self, min_visibility: float = 0.5, model_complexity: int = 1):
        import mediapipe as mp

        self.min_visibility = min_visibility
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
