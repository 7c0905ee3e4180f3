"""Quality control of generated catalog photos: every image gets a status (pass / review / fail),
the reasons for it, a score for best-of-N, and the measurements behind them.

Checks, in order (all thresholds live in `QCConfig`):

- sanity: the pixels are finite, the image is not blank, not clipped to 0/255, not noise. An
  image that fails here gets no further checks: its "no person found" would only repeat it.
- pose fidelity: the pose detected on the image against the target keypoints, as PCK (share of
  target keypoints within `pck_threshold` x body size). Where the detector finds nobody, the
  figure measured from the picture (pipeline/qc_figure.py) is graded against the target pose
  instead, and the reason says the detector did not verify the pose; no figure is a fail.
- appearance: do the garment's colours in the image match the source's? Compared inside the
  person's region (torso, arms and legs drawn from the keypoints, head left out: hair and face
  are not the garment). Where the source photo's pose is not found, the two figures' colours
  are compared instead (`qc_figure.figure_core`). Needs no model weights.
- model checks, with a `ModelReference`: CLIP cosine between source and image, and FPDM
  alignment, the cosine between the fusion embedding (stage 1's prediction of the target's CLIP
  embedding) and the image's CLIP embedding. Both mean something only when the fusion encoder
  is a pretrained CLIP (`FusionModel.config.clip_weights`): from a random initialisation they
  are recorded (alignment) or skipped (CLIP cosine) but never change the status or the score.

Thresholds were calibrated on the DeepFashion photos in ../shared/data/deepfashion; the numbers
measured there are quoted next to each threshold below. Those calibration notes are why the
module runs past 500 lines: a threshold without its measurement beside it could not be judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from model_core.errors import InputError
from model_core.images import PHOTO_FILL, srgb_to_lab
from model_core.keypoints import LEFT_RIGHT_SWAP, Keypoints, fit_image
from pipeline.pose_detection import NoPersonFound, pck
from pipeline.qc_figure import figure_core, measure_figure, person_region

if TYPE_CHECKING:  # torch and the model are only needed when a ModelReference is used
    import torch

    from model_core.pipeline_fpdm import FPDMPipeline, PoseEncoding, SourceEncoding

PASS, REVIEW, FAIL = "pass", "review", "fail"
STATUSES = (PASS, REVIEW, FAIL)  # best first: best_candidate ranks by this order
_SEVERITY = {status: rank for rank, status in enumerate(STATUSES)}


@dataclass(frozen=True)
class QCConfig:
    """Every QC threshold. "Calibration" notes give what the shared DeepFashion photos measured
    (8 real photos of 3 garments, at their own 750x1101 and at 352x512 and 48x64)."""

    # --- sanity ---------------------------------------------------------------------------
    # Std of the 0-255 luminance. Real photos: 44-93. A flat image: 0.
    contrast_fail_below: float = 6.0
    contrast_review_below: float = 15.0
    # Share of pixels with a channel clipped at 0/1 or 254/255, near-white pixels (a catalog
    # background, pure white padding) not counted. Real photos: <= 0.6 %; contrast x2:
    # 10-54 %, x4: 21-60 %; colour saturation x4: 11-34 %; brightness x1.5: 5-14 %.
    saturated_review_above: float = 0.05
    saturated_fail_above: float = 0.15
    # Share of the luminance variance that is pixel-to-pixel (Laplacian energy / 20 x variance:
    # 1 for white noise, 0 for a smooth picture). Real photos: <= 0.02 at 352x512 and above,
    # <= 0.06 at 48x64. Noise or shuffled pixels: 1.0; sigma-50 noise over a photo: 0.16.
    noise_review_above: float = 0.15
    noise_fail_above: float = 0.5

    # --- pose fidelity ------------------------------------------------------------------
    # A keypoint is correct within pck_threshold x the diagonal of the target's keypoint box.
    # Real photo vs its own annotation: 0.83-1.0 (0.67 for a back view at 352x512, where the
    # detector misses both hidden wrists); another pose of the same person: 0.17-0.45, except a
    # back view whose stance mirrors the front one (0.64-0.91: the same skeleton, turned).
    pck_threshold: float = 0.1
    pck_review_below: float = 0.7
    pck_fail_below: float = 0.5
    # The detector names sides as if the person faced the camera; back-view annotations name
    # them anatomically. Labels swapped left/right leave the geometry the same, so the better
    # of the two readings counts (a mirrored pose still fails: its geometry differs).
    allow_side_swap: bool = True

    # --- pose from the figure, where the detector finds no person ---------------------------
    # Figure score: the least of the figure's cover of the target's body region, its share
    # within reach of the target's skeleton and the share of the target's limb points it reaches
    # (pipeline/qc_figure.py). Measured at 64x48 on the synthetic catalog's held-out seeds 2 and
    # 4 (scripts/qc_calibration.py, docs/measurements.md): true photos in their pose 0.90-1.0
    # (PCK >= 0.7 on only 69% of them: the detector misses 15% and misplaces more); a photo of the
    # same person in another pose (copying the source) 0.33-0.98, 6% of them at 0.9 or more,
    # where PCK puts 34% at 0.7 or more; the demo model's quick-start variants 0.96-1.0; no figure 0.
    figure_review_below: float = 0.9
    figure_fail_below: float = 0.75
    # The mask's premise: a background of one colour along the border. Catalog and synthetic
    # photos: all of the border; a gradient or a scene: far less. Below this, no figure is judged.
    figure_min_even_border: float = 0.8
    # Calibrated from the synthetic catalog's smallest picture height (32x24) up; smaller
    # pictures hold too few pixels per limb to judge a figure.
    figure_min_height: int = 32
    # The figure passes a pose only in pictures up to this height: it was calibrated at 64x48,
    # where the detector misses small figures. In a larger picture the detector's miss is itself
    # a sign of a malformed figure, so there the figure can earn a review, not a pass.
    figure_pass_max_height: int = 128

    # --- appearance (colours) -------------------------------------------------------------
    # Colour match: the smaller of "share of the image's person pixels whose colour is in the
    # source's person region" and the same the other way round, colours matching within
    # colour_tolerance (CIE Lab distance; 2.3 is just noticeable). Measured at 750x1101 and
    # 352x512: same garment, another view: 0.86-1.0; the printed front or side of a tee
    # against its plain back: 0.54-0.84 (a real difference the source cannot vouch for);
    # hue rotated 60 degrees: 0.75-0.85, 180 degrees: 0.42-0.63; another garment of other
    # colours: 0.52-0.86 (two black garments: up to 0.92, colours alone cannot tell them
    # apart); noise: <= 0.3. A lower tolerance separates no better: at 10, other views of the
    # printed tee drop to 0.69 while hue rotations by 60 degrees still reach 0.76.
    colour_tolerance: float = 15.0
    colour_review_below: float = 0.8
    colour_fail_below: float = 0.4
    # Fewer person pixels than this (in either picture) and colours are not compared.
    colour_min_pixels: int = 50

    # --- model checks (only with a pretrained CLIP) -----------------------------------------
    # Not calibrated here: no pretrained CLIP can be had offline. 0.6 is low for two photos of
    # one garment with CLIP ViT-L/14 (typically 0.8 and above); review only, never fail.
    clip_review_below: float | None = 0.6
    # The fusion embedding is trained with InfoNCE, which ranks but does not calibrate cosines:
    # an absolute threshold needs a trained model measured on held-out pairs. Until then
    # alignment ranks candidates (FPDM.md's best-of-N) but does not gate the status.
    alignment_review_below: float | None = None

    # --- score: a weighted mean of the measured parts, each in [0, 1] -------------------------
    # Pose and colours always count; CLIP similarity and alignment only with a pretrained CLIP.
    # Alignment weighs most of the two: FPDM.md's best-of-N keeps the sample closest to the
    # fusion embedding.
    weight_pose: float = 0.4
    weight_colour: float = 0.2
    weight_clip: float = 0.1
    weight_alignment: float = 0.3


DEFAULT_QC = QCConfig()


@dataclass
class QCResult:
    status: str  # "pass" | "review" | "fail"
    # One line per check that did not pass in full. A pass has none, except where the detector
    # found no person and the figure passed instead: that line says what went unverified.
    reasons: list[str]
    score: float  # in [0, 1], higher is better: ranks best-of-N candidates within a status
    metrics: dict  # name -> float | bool | int | None (None: not measured)

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "score": float(self.score),
            "metrics": {name: _plain(value) for name, value in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> QCResult:
        if not isinstance(data, dict) or data.get("status") not in STATUSES:
            raise InputError(f"not a QC result: expected a status among {', '.join(STATUSES)}")
        return cls(
            status=data["status"],
            reasons=[str(reason) for reason in data.get("reasons", [])],
            score=float(data.get("score", 0.0)),
            metrics=dict(data.get("metrics", {})),
        )


@dataclass(frozen=True, eq=False)
class ModelReference:
    """What the model knows about one job (source, target pose), for the embedding checks.
    Built once per job and shared by its candidates."""

    pipe: FPDMPipeline
    source_embedding: torch.Tensor | None  # CLIP embedding of the source photo
    fusion_embedding: torch.Tensor | None  # stage 1's prediction of the target's CLIP embedding
    clip_pretrained: bool  # the fusion encoder started from a pretrained CLIP checkpoint

    @classmethod
    def for_job(cls, pipe: FPDMPipeline, source: SourceEncoding, pose: PoseEncoding) -> ModelReference:
        if pipe.fusion is None:  # stage-2-only model: no CLIP to compare with
            return cls(pipe, None, None, clip_pretrained=False)
        return cls(
            pipe,
            source_embedding=source.clip_embedding.float(),
            fusion_embedding=pipe.fusion_embedding(source, pose).float(),
            clip_pretrained=getattr(pipe.fusion.config, "clip_weights", None) is not None,
        )

    def embed(self, image: Image.Image) -> torch.Tensor:
        """The image's CLIP embedding, its picture prepared as the model prepares a photo."""
        import torch

        pipe = self.pipe
        pixels = pipe.clip_pixels(pipe.geometry.photo(image), PHOTO_FILL)[None]
        with torch.no_grad():
            return pipe.fusion.embed(pixels.to(device=pipe.device, dtype=pipe.dtype))[0].float()


def check_image(
    image: Image.Image | np.ndarray,
    source: Image.Image,
    target: Keypoints,
    detector,
    model: ModelReference | None = None,
    config: QCConfig = DEFAULT_QC,
    source_keypoints: Keypoints | None = None,
) -> QCResult:
    """QC of one image generated from `source` for the pose `target`.

    image: the generated (or a real) picture; a float (H, W, 3) array in 0-255 is accepted too,
    so NaN or infinite decoder output shows as such (a PIL image cannot hold it).
    source: the source photo at any size; it is fitted into the image's frame as the model fits
    it (pad, white). target: keypoints on any canvas, fitted the same way.
    detector: anything with `.detect(image, name) -> Keypoints` raising `NoPersonFound`.
    source_keypoints: the source's pose on the source photo's canvas; detected when not given
    (a batch evaluating many candidates of one source should detect it once and pass it).
    """
    checks = _Checks()
    pixels = _pixels(image, checks)
    if pixels is None:
        return checks.result(config)
    _sanity(pixels, config, checks)
    if checks.status == FAIL:
        return checks.result(config)

    picture = Image.fromarray(pixels, "RGB")
    width, height = picture.size
    target = target.fitted(width, height, mode="pad")
    found = _pose(picture, target, detector, config, checks)

    fitted_source = fit_image(source, width, height, mode="pad", fill=PHOTO_FILL)
    source_pose = _source_pose(source, source_keypoints, detector, checks)
    if source_pose is not None:
        source_pose = source_pose.fitted(width, height, mode="pad")
    # Where the person is: as detected, else where the target says it should be.
    _appearance(fitted_source, source_pose, picture, found if found is not None else target, config, checks)

    if model is not None:
        _model_checks(picture, model, config, checks)
    return checks.result(config)


def best_candidate(results: list[QCResult]) -> int:
    """Index of the best candidate: the best status first, then the highest score; the first
    one on a tie."""
    if not results:
        raise ValueError("best_candidate: no candidates")
    return min(range(len(results)), key=lambda i: (_SEVERITY[results[i].status], -results[i].score, i))


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------

METRIC_NAMES = (
    "finite", "luminance_std", "saturated_share", "noise_share",
    "person_found", "pose_pck", "pose_sides_swapped", "pose_keypoints_found",
    "figure_share", "figure_body_covered", "figure_within_reach", "figure_limbs_found", "figure_score",
    "source_person_found", "colour_match", "colour_in_source", "colour_kept",
    "clip_pretrained", "clip_similarity", "alignment",
)  # fmt: skip


class _Checks:
    """Collects metrics, the worst status so far and its reasons."""

    def __init__(self):
        self.metrics: dict = {name: None for name in METRIC_NAMES}
        self.reasons: list[str] = []
        self.status = PASS
        self.components: dict[str, float] = {}  # score parts, each in [0, 1]

    def flag(self, status: str, reason: str) -> None:
        self.reasons.append(reason)
        if _SEVERITY[status] > _SEVERITY[self.status]:
            self.status = status

    def grade(self, value: float, review_below: float, fail_below: float, reason: str) -> None:
        if value < fail_below:
            self.flag(FAIL, reason)
        elif value < review_below:
            self.flag(REVIEW, reason)

    def grade_above(self, value: float, review_above: float, fail_above: float, reason: str) -> None:
        if value > fail_above:
            self.flag(FAIL, reason)
        elif value > review_above:
            self.flag(REVIEW, reason)

    def result(self, config: QCConfig) -> QCResult:
        weights = {name: getattr(config, f"weight_{name}") for name in self.components}
        total = sum(weights.values())
        # No parts (an image failing sanity): nothing worth ranking, score 0.
        score = sum(weights[name] * value for name, value in self.components.items()) / total if total > 0 else 0.0
        return QCResult(self.status, self.reasons, round(float(score), 4), self.metrics)


def _plain(value):
    """JSON-able Python scalars (numpy's are not)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%"


# --------------------------------------------------------------------------------------------
# Sanity
# --------------------------------------------------------------------------------------------


def _pixels(image, checks: _Checks) -> np.ndarray | None:
    """uint8 RGB pixels, or None (with a fail) when they are not finite."""
    if isinstance(image, Image.Image):
        checks.metrics["finite"] = True
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"check_image: expected a PIL image or an (H, W, 3) array, got shape {array.shape}")
    finite = bool(np.isfinite(array).all())
    checks.metrics["finite"] = finite
    if not finite:
        bad = float((~np.isfinite(array)).any(axis=2).mean())
        checks.flag(FAIL, f"not finite: {_pct(bad)} of the pixels are NaN or infinite")
        return None
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _sanity(pixels: np.ndarray, config: QCConfig, checks: _Checks) -> None:
    grey = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    std = float(grey.std())
    checks.metrics["luminance_std"] = round(std, 2)
    checks.grade(
        std, config.contrast_review_below, config.contrast_fail_below,
        f"blank: the brightness hardly varies (std {std:.1f} of 255; review below "
        f"{config.contrast_review_below:g}, fail below {config.contrast_fail_below:g})",
    )  # fmt: skip
    if checks.status == FAIL:  # a flat image: clipped (all black) or not, there is nothing more to say
        return

    clipped = ((pixels <= 1) | (pixels >= 254)).any(axis=2)
    near_white = pixels.min(axis=2) >= 250  # background and padding are white by design
    saturated = float((clipped & ~near_white).mean())
    checks.metrics["saturated_share"] = round(saturated, 4)
    checks.grade_above(
        saturated, config.saturated_review_above, config.saturated_fail_above,
        f"saturated: {_pct(saturated)} of the pixels are clipped at 0 or 255 (review above "
        f"{_pct(config.saturated_review_above)}, fail above {_pct(config.saturated_fail_above)})",
    )  # fmt: skip

    # Laplacian energy over variance: iid noise puts all of its variance between neighbouring
    # pixels (ratio 1), a photograph almost none. The Laplacian of white noise has 20x its variance.
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    variance = float(grey.var())
    noise = float((laplacian**2).mean() / (20 * variance)) if variance > 1e-6 else 0.0
    noise = min(noise, 1.0)
    checks.metrics["noise_share"] = round(noise, 4)
    checks.grade_above(
        noise, config.noise_review_above, config.noise_fail_above,
        f"noise: {_pct(noise)} of the image's variance is pixel-level noise (review above "
        f"{_pct(config.noise_review_above)}, fail above {_pct(config.noise_fail_above)})",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Pose fidelity
# --------------------------------------------------------------------------------------------


def _pose(picture: Image.Image, target: Keypoints, detector, config: QCConfig, checks: _Checks) -> Keypoints | None:
    """Grade the detected pose against `target` (both in the picture's frame); returns it."""
    try:
        found = detector.detect(picture, "generated image")
    except NoPersonFound:
        checks.metrics["person_found"] = False
        checks.metrics["pose_keypoints_found"] = 0
        _pose_from_figure(picture, target, config, checks)
        return None
    checks.metrics["person_found"] = True
    checks.metrics["pose_keypoints_found"] = int(found.visible.sum())

    direct = pck(found, target, config.pck_threshold)
    if direct is None:
        checks.flag(REVIEW, "pose not measured: the target pose has fewer than 2 keypoints in the frame")
        return found
    score, swapped = direct, False
    if config.allow_side_swap:
        mirrored_names = Keypoints(found.points[list(LEFT_RIGHT_SWAP)], found.width, found.height)
        relabelled = pck(mirrored_names, target, config.pck_threshold)
        if relabelled > direct:
            score, swapped = relabelled, True
    checks.metrics["pose_pck"] = round(score, 4)
    checks.metrics["pose_sides_swapped"] = swapped
    checks.components["pose"] = score
    wanted = int(target.visible.sum())
    checks.grade(
        score, config.pck_review_below, config.pck_fail_below,
        f"pose: {round(score * wanted)} of {wanted} target keypoints found within "
        f"{_pct(config.pck_threshold)} of the body size (PCK {score:.2f}; review below "
        f"{config.pck_review_below:.2f}, fail below {config.pck_fail_below:.2f})",
    )  # fmt: skip
    return found


def _pose_from_figure(picture: Image.Image, target: Keypoints, config: QCConfig, checks: _Checks) -> None:
    """Grade the pose by the figure the picture shows, where the detector found nobody: small or
    blurred figures it misses are still judged where they stand, and the reason says so."""
    checks.components["pose"] = 0.0
    missed = f"the detector found no person at {picture.width}x{picture.height}"
    if picture.height < config.figure_min_height:
        checks.flag(
            FAIL, f"pose: {missed}, and a picture under {config.figure_min_height} px high is too small to judge a figure"
        )
        return
    evidence = measure_figure(np.asarray(picture), target)
    if evidence.even_border < config.figure_min_even_border:
        checks.flag(
            FAIL, f"pose: {missed}, and the background is not even (the border is {_pct(evidence.even_border)} "
            f"one colour; at least {_pct(config.figure_min_even_border)} needed), so no figure can be told from it",
        )  # fmt: skip
        return
    score = evidence.score
    checks.metrics.update(
        figure_share=evidence.frame_share, figure_body_covered=evidence.body_covered,
        figure_within_reach=evidence.within_reach, figure_limbs_found=evidence.limbs_found, figure_score=score,
    )  # fmt: skip
    checks.components["pose"] = score
    if evidence.frame_share == 0:
        checks.flag(FAIL, f"pose: {missed}, and nothing stands out from the background")
        return
    status = FAIL if score < config.figure_fail_below else REVIEW if score < config.figure_review_below else PASS
    limit = ""
    if status == PASS and picture.height > config.figure_pass_max_height:
        status, limit = REVIEW, f"; a figure passes only in pictures up to {config.figure_pass_max_height} px high"
    # Even a pass says what the detector could not confirm: which way the person faces, which limb is which.
    checks.flag(
        status,
        f"pose not verified: {missed}; figure present: {evidence.describe()} (figure score {score:.2f}; "
        f"review below {config.figure_review_below:.2f}, fail below {config.figure_fail_below:.2f}{limit})",
    )


# --------------------------------------------------------------------------------------------
# Appearance
# --------------------------------------------------------------------------------------------

COLOUR_SAMPLES = 2000  # pixels compared per picture: enough for a 1 % colour, cheap to match


def _source_pose(source: Image.Image, source_keypoints: Keypoints | None, detector, checks: _Checks) -> Keypoints | None:
    if source_keypoints is not None:
        source_aspect, canvas_aspect = source.width / source.height, source_keypoints.width / source_keypoints.height
        if abs(source_aspect / canvas_aspect - 1) > 0.01:
            raise InputError(
                f"source keypoints are for a {source_keypoints.width}x{source_keypoints.height} canvas, "
                f"which is not the shape of the {source.width}x{source.height} source photo"
            )
        checks.metrics["source_person_found"] = True
        return source_keypoints
    try:
        found = detector.detect(source, "source photo")
    except NoPersonFound:
        checks.metrics["source_person_found"] = False  # the colours are compared figure to figure instead
        return None
    checks.metrics["source_person_found"] = True
    return found


def _appearance(
    source: Image.Image,
    source_pose: Keypoints | None,
    picture: Image.Image,
    picture_pose: Keypoints,
    config: QCConfig,
    checks: _Checks,
) -> None:
    if source_pose is None:
        source_figure, picture_figure = (
            figure_core(np.asarray(image), config.figure_min_even_border, config.colour_min_pixels) for image in (source, picture)
        )
        if source_figure is None or picture_figure is None:
            which = "source photo" if source_figure is None else "image"
            checks.flag(
                REVIEW, f"appearance not measured: no person found in the source photo, and no figure stands out from "
                f"the {which}'s background",
            )  # fmt: skip
            return
        basis = "the figures' colours (no person found in the source photo)"
        _grade_colours(np.asarray(source)[source_figure], np.asarray(picture)[picture_figure], basis, config, checks)
        return
    # Only body parts seen in both pictures: a full-body output of a waist-up source has legs
    # the source cannot vouch for.
    shared = source_pose.visible & picture_pose.visible
    source_region = person_region(source_pose, shared)
    picture_region = person_region(picture_pose, shared)
    smallest = min(int(source_region.sum()), int(picture_region.sum()))
    if smallest < config.colour_min_pixels:
        checks.flag(REVIEW, "appearance not measured: the source and the image show too little of the same body parts")
        return
    _grade_colours(
        np.asarray(source)[source_region], np.asarray(picture)[picture_region], "the garment's colours", config, checks
    )


def _grade_colours(source_rgb: np.ndarray, picture_rgb: np.ndarray, basis: str, config: QCConfig, checks: _Checks) -> None:
    source_lab = srgb_to_lab(source_rgb)
    picture_lab = srgb_to_lab(picture_rgb)
    in_source = _colour_coverage(picture_lab, source_lab, config.colour_tolerance)
    kept = _colour_coverage(source_lab, picture_lab, config.colour_tolerance)
    # Both ways: new colours (another garment, a hue shift) lower the first, lost colours
    # (a print gone) the second.
    match = min(in_source, kept)
    checks.metrics.update(colour_match=round(match, 4), colour_in_source=round(in_source, 4), colour_kept=round(kept, 4))
    checks.components["colour"] = match
    checks.grade(
        match, config.colour_review_below, config.colour_fail_below,
        f"appearance: {basis} differ from the source ({_pct(in_source)} of the image's "
        f"colours are in the source, {_pct(kept)} of the source's are kept; review below "
        f"{_pct(config.colour_review_below)}, fail below {_pct(config.colour_fail_below)})",
    )  # fmt: skip


def _colour_coverage(colours: np.ndarray, palette: np.ndarray, tolerance: float) -> float:
    """Share of `colours` with a colour of `palette` within `tolerance` (Lab distance)."""
    rng = np.random.default_rng(0)  # fixed subsample: the same images always score the same
    if len(colours) > COLOUR_SAMPLES:
        colours = colours[rng.choice(len(colours), COLOUR_SAMPLES, replace=False)]
    if len(palette) > COLOUR_SAMPLES:
        palette = palette[rng.choice(len(palette), COLOUR_SAMPLES, replace=False)]
    squared = (colours**2).sum(1)[:, None] - 2 * colours @ palette.T + (palette**2).sum(1)[None, :]
    nearest = np.sqrt(np.maximum(squared.min(axis=1), 0))
    return float((nearest <= tolerance).mean())


# --------------------------------------------------------------------------------------------
# Model checks
# --------------------------------------------------------------------------------------------


def _model_checks(picture: Image.Image, model: ModelReference, config: QCConfig, checks: _Checks) -> None:
    if model.fusion_embedding is None:  # stage-2-only: nothing to compare with
        return
    import torch.nn.functional as F

    checks.metrics["clip_pretrained"] = model.clip_pretrained
    embedding = model.embed(picture)
    alignment = float(F.cosine_similarity(embedding, model.fusion_embedding.to(embedding), dim=0))
    checks.metrics["alignment"] = round(alignment, 4)
    if not model.clip_pretrained:
        # A random encoder's cosines carry no meaning: recorded, not judged.
        return

    similarity = float(F.cosine_similarity(embedding, model.source_embedding.to(embedding), dim=0))
    checks.metrics["clip_similarity"] = round(similarity, 4)
    checks.components["clip"] = max(similarity, 0.0)
    checks.components["alignment"] = max(alignment, 0.0)
    if config.clip_review_below is not None and similarity < config.clip_review_below:
        checks.flag(
            REVIEW, f"appearance: CLIP similarity to the source {similarity:.2f} (review below {config.clip_review_below:.2f})"
        )
    if config.alignment_review_below is not None and alignment < config.alignment_review_below:
        checks.flag(
            REVIEW,
            f"FPDM alignment {alignment:.2f}: the image is far from what stage 1 predicts "
            f"(review below {config.alignment_review_below:.2f})",
        )
