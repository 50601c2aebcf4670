"""Input images of edits: the upload checks, OpenAI's mask convention, and the size an input gets."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from studio import uploads
from studio.catalog import load_catalog
from studio.errors import InvalidRequest


def encoded(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **options)
    return buffer.getvalue()


def test_png_jpeg_and_webp_pass_with_their_size():
    for kind in ("PNG", "JPEG", "WEBP"):
        upload = uploads.check_image(encoded(Image.new("RGB", (40, 30), "red"), kind))
        assert (upload.width, upload.height) == (40, 30)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"hello, not an image", "not a readable image"),
        (encoded(Image.new("RGB", (20, 20)), "GIF"), "GIF images are not supported"),
        (encoded(Image.new("RGB", (8, 64))), "too small"),
        (encoded(Image.new("RGB", (64, 64)))[:60], "not a readable image"),  # truncated
    ],
    ids=["empty", "text", "gif", "8px", "truncated"],
)
def test_bad_files_name_the_field(data, words):
    with pytest.raises(InvalidRequest) as error:
        uploads.check_image(data, "mask")
    assert error.value.field == "mask" and words in error.value.message


def test_a_sideways_photo_counts_with_its_upright_size():
    exif = Image.Exif()
    exif[uploads.ORIENTATION_TAG] = 6  # turned 90 degrees: stored 60x40, shown 40x60
    data = encoded(Image.new("RGB", (60, 40)), "JPEG", exif=exif.tobytes())
    upload = uploads.check_image(data)
    assert (upload.width, upload.height) == (40, 60)
    assert uploads.load_rgb(data, (40, 60)).size == (40, 60)


def test_the_mask_is_repainted_where_alpha_is_zero_or_white_without_alpha():
    alpha = Image.new("RGBA", (4, 2), (0, 0, 0, 255))
    alpha.putpixel((0, 0), (0, 0, 0, 0))
    repaint = uploads.repaint_mask(encoded(alpha), (4, 2))
    assert repaint.getpixel((0, 0)) == 255 and repaint.getpixel((1, 0)) == 0
    gray = Image.new("L", (4, 2), 0)
    gray.putpixel((3, 1), 255)
    repaint = uploads.repaint_mask(encoded(gray), (8, 4))
    assert repaint.size == (8, 4) and repaint.getpixel((7, 3)) == 255 and repaint.getpixel((0, 0)) == 0


def test_a_transparent_input_is_flattened_on_white():
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert uploads.load_rgb(encoded(image), (20, 20)).getpixel((5, 5)) == (255, 255, 255)


def test_the_input_size_is_fitted_to_the_model():
    catalog = load_catalog()
    sdxl, flux, hunyuan = catalog.get("sdxl-base"), catalog.get("flux-schnell"), catalog.get("hunyuan-dit")
    assert sdxl.fit_size(1024, 768) == (1024, 768)  # valid already
    assert sdxl.fit_size(4000, 3000) == (2048, 1536)  # the longest side the model allows, same aspect
    width, height = flux.fit_size(6000, 4000)
    assert width * height <= flux.limits.max_pixels and width % 16 == height % 16 == 0
    assert abs(width / height - 1.5) < 0.02
    assert sdxl.fit_size(300, 200)[1] >= sdxl.limits.min_side  # scaled up to the model's smallest side
    assert hunyuan.fit_size(1600, 900) in hunyuan.limits.allowed_sizes
