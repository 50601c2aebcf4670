"""Images carry their parameters in both the A1111 text and our JSON: PNG chunks, JPEG/WebP EXIF."""

import io

import pytest
from PIL import ExifTags, Image

from studio import pngmeta
from studio.schemas import GenerationRequest


def test_parameters_round_trip_and_a1111_text():
    request = GenerationRequest(prompt="a red fox", negative_prompt="blurry", model="sdxl-base", width=64,
                                height=48, steps=3, guidance=6.5, seed=42, num_images=2)
    png = pngmeta.encode(Image.new("RGB", (64, 48), "red"), request, seed=43, label="SDXL Base 1.0")
    params = pngmeta.read(png)
    assert params["prompt"] == "a red fox" and params["negative_prompt"] == "blurry"
    assert params["seed"] == 43 and params["num_images"] == 1  # this image alone: n=1 with its own seed
    assert (params["width"], params["height"], params["steps"], params["guidance"]) == (64, 48, 3, 6.5)
    lines = params["parameters"].splitlines()
    assert lines[0] == "a red fox"
    assert lines[1] == "Negative prompt: blurry"
    assert "Steps: 3" in lines[2] and "CFG scale: 6.5" in lines[2] and "Seed: 43" in lines[2]
    assert "Size: 64x48" in lines[2] and "Model: SDXL Base 1.0" in lines[2]


def test_plain_png_has_no_parameters(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    assert pngmeta.read(path) == {}


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
def test_jpeg_and_webp_keep_the_parameters_in_exif(output_format):
    request = GenerationRequest(prompt="a red fox, 狐狸", negative_prompt="blurry", model="sdxl-base", width=64,
                                height=48, steps=3, guidance=6.5, seed=42)
    png = pngmeta.encode(Image.new("RGB", (64, 48), "red"), request, seed=42, label="SDXL Base 1.0")
    converted = pngmeta.convert(png, output_format, quality=80)
    with Image.open(io.BytesIO(converted)) as image:
        assert image.format == output_format.upper() and image.size == (64, 48)
        # Where A1111 and the tools that read its files look: UTF-16 text in EXIF UserComment.
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
        assert comment.startswith(b"UNICODE\0")
    assert pngmeta.read(converted) == pngmeta.read(png)  # the same parameters, CJK text included
    assert pngmeta.convert(png, "png") is png
    with pytest.raises(ValueError, match="output_format"):
        pngmeta.convert(png, "gif")


def test_plain_jpeg_has_no_parameters(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(path)
    assert pngmeta.read(path) == {}
