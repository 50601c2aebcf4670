"""PNG files carry their parameters in both the A1111 text and our JSON chunk."""

from PIL import Image

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
