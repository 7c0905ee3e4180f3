"""Safe image decoding: every unusable image is one InputError naming it."""

import io

import pytest
from PIL import Image

from model_core.errors import InputError
from model_core.images import MAX_IMAGE_PIXELS, decode_image, load_image, read_image_size


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_good_photo_decodes_to_rgb():
    image = decode_image(_encoded(Image.new("L", (40, 60), 128), "PNG"), "grey.png")
    assert image.mode == "RGB" and image.size == (40, 60)


def test_a_one_pixel_image_is_refused():
    with pytest.raises(InputError, match=r"dot.png: image is 1x1"):
        decode_image(_encoded(Image.new("RGB", (1, 1)), "PNG"), "dot.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    bomb = _encoded(Image.new("1", (side, side)), "PNG")  # a few kB that would decode to ~64 Mpx
    assert len(bomb) < 200_000
    with pytest.raises(InputError, match=r"bomb.png: image is \d+x\d+, over the"):
        decode_image(bomb, "bomb.png")


def test_a_truncated_jpeg_is_refused():
    jpeg = _encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(InputError, match=r"cut.jpg: not a readable image"):
        decode_image(jpeg[: len(jpeg) // 2], "cut.jpg")


def test_text_and_missing_files_are_refused_with_their_names(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"notes.jpg: not an image in a format"):
        load_image(text)
    with pytest.raises(InputError, match=r"absent.png: cannot read image"):
        load_image(tmp_path / "absent.png")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 200\n0 0 moveto 100 200 lineto stroke\n%%EOF\n"


@pytest.mark.parametrize("reader", [decode_image, read_image_size])
def test_only_photo_formats_are_opened_unless_others_are_asked_for(reader):
    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # Pillow alone would take it (and call Ghostscript)
    with pytest.raises(InputError, match=r"^art.jpg: not an image in a format accepted for photos \(JPEG, PNG, WEBP\)$"):
        reader(EPS, "art.jpg")
    gif = _encoded(Image.new("RGB", (40, 60)), "GIF")
    with pytest.raises(InputError, match="not an image in a format accepted"):
        reader(gif, "anim.gif")
    size = reader(gif, "anim.gif", formats=("GIF",))
    assert (size if isinstance(size, tuple) else size.size) == (40, 60)
    for fmt in ("JPEG", "PNG", "WEBP"):
        reader(_encoded(Image.new("RGB", (40, 60)), fmt), f"photo.{fmt.lower()}")


@pytest.mark.parametrize("reader", [decode_image, read_image_size])
@pytest.mark.parametrize(
    ("size", "message"),
    [((400, 40), "image is 400x40, an aspect ratio beyond 4:1"), ((20, 100), "image is 20x100, an aspect ratio beyond 4:1")],
)
def test_extreme_aspect_ratios_are_refused(reader, size, message):
    with pytest.raises(InputError, match=f"^strip.png: {message}$"):
        reader(_encoded(Image.new("L", size), "PNG"), "strip.png")
    reader(_encoded(Image.new("L", (40, 160)), "PNG"), "full-body.png")  # 1:4 is still a photo


def test_a_header_claiming_hundreds_of_megapixels_is_one_images_error_not_a_crash():
    """Pillow refuses such a header with DecompressionBombError, not an OSError: reading the size
    at planning let it through, and it ended the whole run without a plan."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", 20_000, 20_000) + bytes(png[24:29])  # width, height, then depth .. interlace
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    with pytest.raises(InputError, match="bomb.png: image too large to decode safely"):
        read_image_size(bytes(png), "bomb.png")
