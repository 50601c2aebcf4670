"""``POST /v1/images/edits``, ``/v1/images/variations`` and streaming (both routes), end to end: the real app on a real port with
tiny models (one CPU slot), driven by the official ``openai`` SDK and by plain HTTP.

sdxl-turbo can edit; pixart-sigma cannot (no edit pipelines in diffusers), so it answers 400. The
fault hook of ``tests/faults.py`` lets a prompt crash the worker, for an error in mid-stream.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import httpx
import numpy as np
import openai
import pytest
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
)
from PIL import Image

from studio import pngmeta
from studio.config import Settings
from studio.edits import ImageEditRequest
from studio.openai_api import ImageGenerationRequest, generation_data, request_data
from tests import faults
from tests.live import serve

EDITOR, TEXT_ONLY = "sdxl-turbo", "pixart-sigma"
OWNER, API_KEY = "ann", "edits-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def server(tiny_models, outputs):
    settings = Settings(
        host="127.0.0.1",
        devices=["cpu"],
        models_dir=tiny_models(EDITOR, TEXT_ONLY),
        job_timeout_s=120.0,
        fault_hook="tests.faults:install",
        outputs_dir=outputs,
        api_key=f"{OWNER}:{API_KEY}",  # a named key: its images go to outputs/api/ann/
    )
    with serve(settings) as base_url:
        yield base_url


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as session:
        yield session


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def photo(width: int = 96, height: int = 64) -> bytes:
    return png(Image.linear_gradient("L").resize((width, height)).convert("RGB"))


def mask_with_hole(width: int = 96, height: int = 64) -> bytes:
    """Opaque, with a transparent (alpha 0: repaint) left half."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    return png(mask)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` in a few bytes (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def assert_openai_error(response: httpx.Response, status: int, param: str | None):
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    return error


# ---------------------------------------------------------------- edits


def test_sdk_image_to_image(client):
    result = client.images.edit(
        model=EDITOR, image=("in.png", photo(), "image/png"), prompt="make it a watercolour", n=2,
        extra_body={"steps": 2, "strength": 0.5, "seed": 5, "sampler": "DPM++ 2M Karras"},
    )
    assert len(result.data) == 2 and result.size == "96x64"  # the input's size, valid for the model
    assert result.usage is not None and result.usage.total_tokens == 0
    image = decode(result.data[0].b64_json)
    assert image.size == (96, 64)
    params = pngmeta.read(base64.b64decode(result.data[1].b64_json))
    assert (params["task"], params["strength"], params["seed"]) == ("image-to-image", 0.5, 6)
    assert params["sampler"] == "DPM++ 2M Karras" and "Sampler: DPM++ 2M, Schedule type: Karras" in params["parameters"]


def test_sdk_inpainting_with_an_alpha_mask(client):
    result = client.images.edit(
        model=EDITOR, image=("in.png", photo(), "image/png"), mask=("mask.png", mask_with_hole(), "image/png"),
        prompt="a red door", size="64x64", extra_body={"steps": 1},
    )
    assert result.size == "64x64" and decode(result.data[0].b64_json).size == (64, 64)
    params = pngmeta.read(base64.b64decode(result.data[0].b64_json))
    assert (params["task"], params["strength"]) == ("inpainting", 1.0)


def test_models_say_which_can_edit(client):
    tasks = {model.id: model.model_extra["tasks"] for model in client.models.list()}
    assert tasks[EDITOR] == ["text-to-image", "image-to-image", "inpainting"]
    assert tasks[TEXT_ONLY] == ["text-to-image"]


def test_both_routes_read_their_shared_fields_into_the_same_request_data():
    shared = {"prompt": "a kite", "model": EDITOR, "negative_prompt": "", "steps": 3, "guidance": 2.5, "seed": 7,
              "n": 2, "stream": True, "partial_images": 2}
    generation = generation_data(ImageGenerationRequest(**shared, size="96x64"))
    edit = request_data(ImageEditRequest(**shared), width=96, height=64, num_images=2,
                        strength=0.5, image=b"in", mask=None)
    assert edit == generation | {"strength": 0.5, "image": b"in", "mask": None}
    assert generation["negative_prompt"] is None and generation["previews"] == 2  # "" is no negative prompt
    assert generation_data(ImageGenerationRequest(**shared | {"stream": False}))["previews"] == 0


def test_the_extras_of_each_route_are_the_request_fields_declared_for_it():
    """The REST models' extras come from GenerationRequest: its routes, types and descriptions, bounds in the docs
    (checked once, in GenerationRequest), after OpenAI's own fields."""
    from studio.edits import ImageVariationRequest
    from studio.schemas import GenerationRequest, request_fields

    for model, route in ((ImageGenerationRequest, "generations"), (ImageEditRequest, "edits"),
                         (ImageVariationRequest, "variations")):
        extras = [name for name, _, faces in request_fields() if route in faces.routes]
        assert list(model.model_fields)[-len(extras):] == extras, route
        properties = model.model_json_schema()["properties"]
        for name in extras:
            assert properties[name]["description"].startswith(GenerationRequest.model_fields[name].description)
            assert model.model_fields[name].default is None  # unset: the model's default
    assert set(extras) == {"negative_prompt", "steps", "sampler", "guidance", "seed", "loras", "strength"}
    steps = ImageEditRequest.model_json_schema()["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"]) == (1, 150)
    assert "strength" not in ImageGenerationRequest.model_fields  # an edit's field only


def text_file() -> tuple:
    return ("notes.txt", b"not an image at all", "text/plain")


@pytest.mark.parametrize(
    "files, fields, param, words",
    [
        ({"image": text_file()}, {}, "image", "not a readable image"),
        ({"image": ("tiny.png", png(Image.new("RGB", (1, 1))), "image/png")}, {}, "image", "too small"),
        ({"image": ("bomb.png", png_header_only(20000, 20000), "image/png")}, {}, "image", "over the limit"),
        ({"image": ("big.png", b"\x89PNG" + bytes(60 * 2**20), "image/png")}, {}, "image", "50 MB"),
        (
            {"image": ("in.png", photo(), "image/png"), "mask": ("m.png", mask_with_hole(64, 64), "image/png")},
            {}, "mask", "does not match",
        ),
        ({"image": ("in.png", photo(), "image/png")}, {"model": TEXT_ONLY}, "model", EDITOR),
        ({"image": ("in.png", photo(), "image/png")}, {"strength": "2"}, "strength", "less than or equal to 1"),
        ({"image": ("in.png", photo(), "image/png")}, {"size": "100x100"}, "size", "multiple"),
        ({"image": ("in.png", photo(), "image/png")}, {"size": "64x64x64"}, "size", "WIDTHxHEIGHT"),
        ({}, {}, "image", "required"),
    ],
    ids=["text-file", "1x1", "20000x20000-header", "60MB", "mask-size", "cannot-edit", "strength", "size", "size-shape", "no-image"],
)
def test_bad_uploads_are_400_and_the_server_stays_healthy(http, files, fields, param, words):
    response = http.post("/v1/images/edits", files=files, data={"prompt": "x", "model": EDITOR, **fields})
    error = assert_openai_error(response, 400, param)
    assert words in error["message"], error
    assert http.get("/health").json()["status"] == "ok"


def test_wrong_method_is_405(http):
    response = http.get("/v1/images/edits")
    assert response.status_code == 405 and "POST" in response.json()["error"]["message"]


# ---------------------------------------------------------------- variations


def saved(outputs) -> set:
    return set((outputs / "api" / OWNER).glob("*.png"))


def test_sdk_variation_is_image_to_image_without_a_prompt(client, outputs):
    before = saved(outputs)
    result = client.images.create_variation(
        model=EDITOR, image=("in.png", photo(), "image/png"), n=2, response_format="b64_json",
        extra_body={"steps": 2, "seed": 5, "sampler": "k_euler"},  # an A1111 alias of Euler
    )
    assert len(result.data) == 2 and result.size == "96x64" and result.data[0].revised_prompt == ""
    params = pngmeta.read(base64.b64decode(result.data[1].b64_json))
    assert (params["task"], params["prompt"], params["strength"], params["seed"]) == ("image-to-image", "", 0.6, 6)
    assert params["sampler"] == "Euler"
    kept = saved(outputs) - before  # in the key owner's folder, as edits and generations are
    assert sorted(pngmeta.read(path)["seed"] for path in kept) == [5, 6]

    # What the metadata claims holds: the edit it records (an empty prompt, the same seed and strength)
    # makes the same image, up to the rounding by which a batch member differs from an image made alone.
    again = client.images.edit(model=EDITOR, image=("in.png", photo(), "image/png"), prompt="",
                               extra_body={"steps": 2, "seed": 5, "strength": 0.6, "sampler": "Euler"})
    alone, member = (np.asarray(decode(item.data[0].b64_json), dtype=int) for item in (again, result))
    assert np.abs(alone - member).max() <= 1


def test_readme_variation_example(client, tmp_path, monkeypatch):
    from tests.test_terminal import snippet

    code = snippet(containing="create_variation", language="python")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(photo(64, 64))
    exec(compile(code, "README.md (variations)", "exec"), {"client": client})
    for index, seed in enumerate((7, 8)):
        params = pngmeta.read(tmp_path / f"variation-{index}.png")
        assert (params["seed"], params["model"], params["strength"]) == (seed, EDITOR, 0.6)


@pytest.mark.parametrize(
    "files, fields, status, param, words",
    [
        ({"image": ("in.png", photo(), "image/png")}, {"model": TEXT_ONLY}, 400, "model", f"{EDITOR}, chroma"),
        ({"image": ("in.png", photo(), "image/png")}, {"prompt": "a cat"}, 400, "prompt", "takes no prompt"),
        ({"image": ("in.png", photo(), "image/png")}, {"mask": "x"}, 400, "mask", "takes no mask"),
        (
            {"image": ("in.png", photo(), "image/png"), "mask": ("m.png", mask_with_hole(), "image/png")},
            {}, 400, "mask", "unexpected file",
        ),
        ({"image": text_file()}, {}, 400, "image", "not a readable image"),
        ({"image": ("bomb.png", png_header_only(20000, 20000), "image/png")}, {}, 400, "image", "over the limit"),
        ({}, {}, 400, "image", "required"),
        ({"image": ("in.png", photo(), "image/png")}, {"strength": "0"}, 400, "strength", "above 0"),
        ({"image": ("in.png", photo(), "image/png")}, {"n": "9"}, 400, "n", "less than or equal to 4"),
        ({"image": ("in.png", photo(), "image/png")}, {"size": "100x100"}, 400, "size", "multiple"),
        ({"image": ("in.png", photo(), "image/png")}, {"stream": "true"}, 400, "stream", "unknown field"),
        ({"image": ("in.png", photo(), "image/png")}, {"model": "no-such-model"}, 404, "model", "unknown model"),
        ({"image": ("in.png", photo(), "image/png")}, {"sampler": "Euler b"}, 400, "sampler", "Euler, Euler Karras"),
    ],
    ids=["cannot-edit", "prompt", "mask-field", "mask-file", "text-file", "bomb", "no-image", "strength", "n",
         "size", "stream", "unknown-model", "sampler"],
)
def test_bad_variations_are_refused_naming_the_field(http, files, fields, status, param, words):
    response = http.post("/v1/images/variations", files=files, data={"model": EDITOR, **fields})
    error = assert_openai_error(response, status, param)
    assert words in error["message"], error


def test_variations_need_the_key_and_are_in_the_docs(server, http):
    wrong = httpx.post(f"{server}/v1/images/variations", headers={"Authorization": "Bearer wrong"},
                       files={"image": ("in.png", photo(), "image/png")}, timeout=60)
    assert_openai_error(wrong, 401, None)
    operation = http.get("/openapi.json").json()["paths"]["/v1/images/variations"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and {"model", "n", "size", "strength", "seed"} <= set(form["properties"])
    assert "prompt" not in form["properties"] and "mask" not in form["properties"]


# ---------------------------------------------------------------- streaming


def test_sdk_streams_a_generation(client):
    stream = client.images.generate(
        model=EDITOR, prompt="a kite", size="64x64", stream=True, partial_images=2, extra_body={"steps": 4},
    )
    events = list(stream)
    assert [type(event) for event in events] == [ImageGenPartialImageEvent] * 2 + [ImageGenCompletedEvent]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    assert all(event.size == "64x64" and event.output_format == "png" for event in events)
    assert decode(events[0].b64_json).size == (64, 64)
    final = events[-1]
    assert final.usage.total_tokens == 0 and decode(final.b64_json).size == (64, 64)
    assert pngmeta.read(base64.b64decode(final.b64_json))["prompt"] == "a kite"


def test_sdk_streams_an_edit_in_jpeg(client):
    stream = client.images.edit(
        model=EDITOR, image=("in.png", photo(), "image/png"), prompt="snow", stream=True, partial_images=1,
        output_format="jpeg", extra_body={"steps": 4, "strength": 1.0},
    )
    events = list(stream)
    assert [type(event) for event in events] == [ImageEditPartialImageEvent, ImageEditCompletedEvent]
    assert decode(events[0].b64_json).format == "JPEG" and decode(events[1].b64_json).size == (96, 64)


def test_a_failure_mid_stream_is_an_error_event(client, http):
    stream = client.images.generate(
        model=EDITOR, prompt=f"{faults.SEGFAULT} now", size="64x64", stream=True, partial_images=1,
    )
    with pytest.raises(openai.APIError) as error:
        list(stream)
    assert error.value.body["code"] == "worker_failed"
    ok = http.post("/v1/images/generations", json={"model": EDITOR, "prompt": "after", "size": "64x64"})
    assert ok.status_code == 200, ok.text


def cancelled_jobs(http, model: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("studio_jobs_total{") and f'model="{model}"' in line and 'outcome="cancelled"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_leaving_the_stream_cancels_the_job(server, http):
    before = cancelled_jobs(http, TEXT_ONLY)
    body = {"model": TEXT_ONLY, "prompt": f"{faults.SLOW} walk away", "size": "64x64", "steps": 40,
            "stream": True, "partial_images": 3}  # a preview after step 10, then 30 slow steps left
    with httpx.stream("POST", f"{server}/v1/images/generations", json=body, headers=AUTH, timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert "event: image_generation.partial_image" in lines  # reads up to the first preview, then leaves
    deadline = time.monotonic() + 60
    while cancelled_jobs(http, TEXT_ONLY) < before + 1:
        assert time.monotonic() < deadline, "the job was not cancelled after the client left"
        time.sleep(0.2)
