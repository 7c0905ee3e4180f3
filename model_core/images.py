"""Images in and out of the model: safe decoding, the model's geometry, tensor conversion.

Every picture the model sees (source photo, target photo, skeleton) goes through
`ModelGeometry`, so a photo and its keypoints are fitted to the model's resolution by the
same transform (pad, never stretch), and the square encoder inputs are derived from that
fitted picture in turn.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .keypoints import Keypoints, fit_image
from .skeletons import render_skeleton

# A catalog photo is a few megapixels; anything far beyond that is a decompression bomb or a
# mistake, and decoding it would take the worker's memory with it.
MAX_IMAGE_PIXELS = 64_000_000
MIN_IMAGE_SIDE = 16
# Catalog photos are portrait or square, up to a full-body 1:3; a banner or a strip is no photo of
# a person, and the model would see it as a sliver in a wide border.
MAX_ASPECT_RATIO = 4.0
# The formats photos come in. Pillow would otherwise try every decoder it knows, and some hand
# the bytes to other programs (EPS to Ghostscript).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")

PHOTO_FILL = (255, 255, 255)  # catalog photos sit on a light background
SKELETON_FILL = (0, 0, 0)  # skeletons are drawn on black


def decode_image(data: bytes, name: str, formats: tuple[str, ...] = PHOTO_FORMATS) -> Image.Image:
    """Decode image bytes in one of `formats` to RGB, with one clear error naming `name` for
    anything unusable."""
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with _open(data, name, formats) as image:
            _check_size(*image.size, name)
            image.load()
            rgb = image.convert("RGB")
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{name}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    return rgb


def read_image_size(data: bytes, name: str, formats: tuple[str, ...] = PHOTO_FORMATS) -> tuple[int, int]:
    """(width, height) from an image's header alone, with decode_image's checks of format and
    size: what planning needs of a photo, at the cost of a few kilobytes of parsing rather than
    decoding megapixels. A file whose body is damaged passes here and fails when decoded."""
    try:
        with _open(data, name, formats) as image:
            width, height = image.size
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, met in the header already
        raise InputError(f"{name}: image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: not a readable image ({exc.__class__.__name__}: {exc})") from None
    _check_size(width, height, name)
    return width, height


def _open(data: bytes, name: str, formats: tuple[str, ...]) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image in a format accepted for photos ({', '.join(formats)})") from None


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: image is {width}x{height}, over the {MAX_IMAGE_PIXELS} pixel limit")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{name}: image is {width}x{height}, smaller than {MIN_IMAGE_SIDE} px on a side")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InputError(f"{name}: image is {width}x{height}, an aspect ratio beyond {MAX_ASPECT_RATIO:g}:1")


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float tensor (B, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]


@dataclass(frozen=True)
class ModelGeometry:
    """The model's pixel frame (height x width) and how every input is put into it."""

    height: int
    width: int

    def photo(self, image: Image.Image) -> Image.Image:
        return fit_image(image, self.width, self.height, mode="pad", fill=PHOTO_FILL)

    def keypoints(self, keypoints: Keypoints) -> Keypoints:
        return keypoints.fitted(self.width, self.height, mode="pad")

    def skeleton(self, keypoints: Keypoints) -> Image.Image:
        return render_skeleton(self.keypoints(keypoints))


def square_encoder_input(
    fitted: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...], fill: tuple[int, int, int]
) -> torch.Tensor:
    """A model-resolution picture padded to the square `size` an image encoder takes, normalised.

    Padding the already-fitted picture keeps one geometry: the encoders see the same framing
    as the diffusion model, only with more border.
    """
    square = fit_image(fitted, size, size, mode="pad", fill=fill)
    pixels = pil_to_tensor(square)
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB uint8 -> CIE Lab (D65): distances there follow perceived colour difference."""
    linear = rgb.astype(np.float32) / 255.0
    linear = np.where(linear <= 0.04045, linear / 12.92, ((linear + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], np.float32)
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883], np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
