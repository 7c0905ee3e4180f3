"""Pose transfer measured against ground truth: pairs whose target photo is known (a synthetic
catalog, or held-out real pairs), each generated and compared with its target.

Per pair, in the model's frame (the target photo fitted as the model fits every photo):

    ssim, psnr        structure and pixel fidelity against the target photo (greyscale SSIM with
                      a 7x7 window; PSNR on RGB)
    colour_error      mean CIE Lab distance between the generated and the target pixels inside
                      the target person's region (2.3 is just noticeable; the garment's colours)
    pose_accuracy     PCK of the generated figure's limbs: of the target's visible elbows,
                      wrists, knees and ankles and the points a third and two thirds along its
                      arms and legs, the share with figure pixels of the generated image within
                      POSE_RADIUS x the image height; the figure is every pixel that stands out
                      from the catalog's light background. Head and trunk are left out: they
                      barely move between poses, so they would credit a copy of the source
    figure_iou        overlap of the generated and the target figure (foreground masks)

The person's region and the figure come from the background: catalog photos (and the synthetic
ones) are shot on a light, even background, so whatever differs from the colour along the
image border is the person. No detector and no weights are needed, which is what lets a model
of 64 px be measured: pose detectors do not find people that small.

LPIPS and FID need pretrained networks; they are computed only when the `lpips` package and its
weights are installed locally, and skipped with a notice otherwise (never downloaded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from .images import ModelGeometry, load_image, srgb_to_lab
from .keypoints import Keypoints, read_keypoints
from .training_data import Pair

METRICS = ("ssim", "psnr", "colour_error", "pose_accuracy", "figure_iou")
BACKGROUND_DISTANCE = 12.0  # Lab units from the border colour that make a pixel part of the figure
POSE_RADIUS = 0.02  # of the image height (1 px at 64 px): a point is found if figure pixels lie this close
LIMB_JOINTS = (3, 4, 6, 7, 9, 10, 12, 13)  # elbows, wrists, knees, ankles (COCO-18)
LIMB_SEGMENTS = ((2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (11, 12), (12, 13))  # upper/lower arms and legs


@dataclass
class PairScore:
    pair: int  # index in the pairs file
    ssim: float
    psnr: float
    colour_error: float
    pose_accuracy: float
    figure_iou: float


@dataclass
class Evaluation:
    method: str  # "fpdm", "stage 2 only", "copy the source"
    model: str
    scores: list[PairScore]
    notices: list[str] = field(default_factory=list)
    # With keep_images: (source, generated, target) of each pair, in the model's frame.
    images: list[tuple[Image.Image, Image.Image, Image.Image]] = field(default_factory=list, repr=False)

    def means(self) -> dict[str, float]:
        return {name: float(np.mean([getattr(s, name) for s in self.scores])) for name in METRICS}

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "model": self.model,
            "pairs": len(self.scores),
            "means": {k: round(v, 4) for k, v in self.means().items()},
            "notices": self.notices,
            "per_pair": [asdict(s) for s in self.scores],
        }


# ----- the metrics --------------------------------------------------------------------------------


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two RGB uint8 images (luminance, 7x7 uniform window)."""
    x, y = (_grey(image) for image in (a, b))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _box(x), _box(y)
    var_x = _box(x * x) - mu_x**2
    var_y = _box(y * y) - mu_y**2
    cov = _box(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def figure_mask(image: np.ndarray) -> np.ndarray:
    """Pixels that stand out from the background: farther than BACKGROUND_DISTANCE (Lab) from
    the median colour of the image's border."""
    lab = srgb_to_lab(image)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    return np.linalg.norm(lab - np.median(border, axis=0), axis=-1) > BACKGROUND_DISTANCE


def colour_error(generated: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    if not region.any():
        return 0.0
    return float(np.linalg.norm(srgb_to_lab(generated[region]) - srgb_to_lab(target[region]), axis=-1).mean())


def pose_accuracy(figure: np.ndarray, keypoints: Keypoints, radius: float = POSE_RADIUS) -> float:
    """Share of the target's limb points (see the module's docstring) with figure pixels nearby."""
    visible = keypoints.visible
    points = [keypoints.points[i, :2] for i in LIMB_JOINTS if visible[i]]
    for a, b in LIMB_SEGMENTS:
        if visible[a] and visible[b]:
            points += [keypoints.points[a, :2] * (1 - t) + keypoints.points[b, :2] * t for t in (1 / 3, 2 / 3)]
    if not points:
        return 0.0
    height, width = figure.shape
    reach = max(1, round(radius * height))
    found = 0
    for x, y in points:
        col, row = int(np.clip(x, 0, width - 1)), int(np.clip(y, 0, height - 1))
        found += bool(figure[max(0, row - reach) : row + reach + 1, max(0, col - reach) : col + reach + 1].any())
    return found / len(points)


def score_pair(index: int, generated: Image.Image, target: Image.Image, keypoints: Keypoints) -> PairScore:
    """Scores of one generated image against its target; both already in the model's frame,
    the keypoints too."""
    gen, tgt = np.asarray(generated.convert("RGB")), np.asarray(target.convert("RGB"))
    gen_figure, tgt_figure = figure_mask(gen), figure_mask(tgt)
    union = (gen_figure | tgt_figure).sum()
    return PairScore(
        pair=index,
        ssim=round(ssim(gen, tgt), 4),
        psnr=round(psnr(gen, tgt), 3),
        colour_error=round(colour_error(gen, tgt, tgt_figure), 3),
        pose_accuracy=round(pose_accuracy(gen_figure, keypoints), 4),
        figure_iou=round(float((gen_figure & tgt_figure).sum() / union) if union else 1.0, 4),
    )


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _box(values: np.ndarray, size: int = 7) -> np.ndarray:
    """Mean over every size x size window that fits (a 'valid' uniform filter)."""
    summed = np.cumsum(np.cumsum(np.pad(values, ((1, 0), (1, 0))), axis=0), axis=1)
    window = summed[size:, size:] - summed[:-size, size:] - summed[size:, :-size] + summed[:-size, :-size]
    return window / (size * size)


# ----- running an evaluation ----------------------------------------------------------------------


def evaluate_pairs(
    pipe,
    pairs: list[Pair],
    steps: int = 20,
    guidance_scale: float = 2.0,
    seed: int = 0,
    use_fusion: bool = True,
    batch_size: int = 8,
    copy_source: bool = False,
    scheduler: str | None = None,
    keep_images: bool = False,
) -> Evaluation:
    """Generate every pair (or, with copy_source, take the source photo as the answer: the
    baseline any pose transfer must beat) and score it against its target. The pipe gives the
    frame (and, unless copy_source, the images); seeds are `seed + pair index`; `scheduler`
    names a diffusers scheduler class to sample with instead of the model's own. `keep_images`
    keeps each pair's images in `Evaluation.images` (training's sample grids)."""
    geometry: ModelGeometry = pipe.geometry
    photos: dict[str, object] = {}  # a catalog's pairs share photos: each is read once

    def photo(path):
        if str(path) not in photos:
            photos[str(path)] = load_image(path)
        return photos[str(path)]

    targets, keypoints, sources = [], [], []
    for pair in pairs:
        target = photo(pair.target_image)
        targets.append(geometry.photo(target))
        keypoints.append(geometry.keypoints(read_keypoints(pair.target_pose, default_size=target.size)))
        sources.append(photo(pair.source_image))

    if copy_source:
        generated = [geometry.photo(source) for source in sources]
        method = "copy the source"
    else:
        generated = []
        encodings: dict[str, object] = {}
        for start in range(0, len(pairs), batch_size):
            chunk = range(start, min(start + batch_size, len(pairs)))
            for i in chunk:
                key = str(pairs[i].source_image)
                if key not in encodings:
                    encodings[key] = pipe.encode_source(sources[i])
            with torch.no_grad():
                images = pipe(
                    [encodings[str(pairs[i].source_image)] for i in chunk],
                    [pipe.encode_pose(keypoints[i]) for i in chunk],
                    [seed + i for i in chunk],
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    use_fusion=use_fusion,
                    scheduler=scheduler,
                )
            generated += [candidates[0] for candidates in images]
        method = "fpdm" if use_fusion and pipe.uses_fusion else "stage 2 only"

    scores = [score_pair(i, generated[i], targets[i], keypoints[i]) for i in range(len(pairs))]
    notices = [
        "LPIPS and FID skipped: they need pretrained networks (the lpips package and Inception "
        "weights), which are not installed here and are never downloaded"
    ]
    kept = [(geometry.photo(sources[i]), generated[i], targets[i]) for i in range(len(pairs))] if keep_images else []
    return Evaluation(method, pipe.name, scores, notices, kept)
