"""LoRAs per request, end to end: the real app (one CPU slot, tiny SDXL and FLUX, their tiny LoRAs) through
the OpenAI SDK (``extra_body``), plain HTTP, gradio_client and the CLI.

One slot, so every job runs on the same worker: the first base image is the fresh worker's, and a job
without LoRAs after jobs with them must give exactly its bytes (no bleed).
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from studio import cli, pngmeta
from studio.config import Settings
from tests.live import serve

SDXL, FLUX = "sdxl-base", "flux-schnell"
SHAPE = {"size": "64x64"}
EXTRAS = {"seed": 3, "steps": 2}


@pytest.fixture(scope="module")
def lora_dir(lora_models, tmp_path_factory):
    """The tiny LoRAs, a subfolder, and the broken files the bad-input tests name."""
    folder = tmp_path_factory.mktemp("loras")
    for path in (lora_models / "loras").glob("*.safetensors"):
        shutil.copy(path, folder / path.name)
    good = (folder / "tiny-sdxl-kohya.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[:-9])
    (folder / "garbage.safetensors").write_bytes(b"\x00\x01 not safetensors" * 4)
    (folder / "pickled.ckpt").write_bytes(b"\x80\x04 a pickle")
    (folder / "styles").mkdir()
    shutil.copy(folder / "tiny-sdxl-diffusers.safetensors", folder / "styles" / "ink.safetensors")
    return folder


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def server(lora_models, lora_dir, outputs):
    settings = Settings(host="127.0.0.1", devices=["cpu"], models_dir=lora_models, lora_dir=lora_dir,
                        outputs_dir=outputs)
    with serve(settings) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=120) as session:
        yield session


def pixels(b64: str) -> bytes:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return image.convert("RGB").tobytes()


def generate(client, model: str, prompt: str = "a red fox", **extras) -> bytes:
    response = client.images.generate(model=model, prompt=prompt, response_format="b64_json", **SHAPE,
                                      extra_body=EXTRAS | extras)
    return response.data[0].b64_json


def input_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("model, family", [(SDXL, "sdxl"), (FLUX, "flux")])
def test_a_lora_changes_the_image_and_leaves_no_trace(client, model, family):
    base = pixels(generate(client, model))  # the first job of this model on the fresh worker
    kohya = pixels(generate(client, model, loras=[{"name": f"tiny-{family}-kohya", "scale": 1}]))
    diffusers_format = pixels(generate(client, model, loras=[f"tiny-{family}-diffusers"]))
    tagged = pixels(generate(client, model, prompt=f"a red fox <lora:tiny-{family}-kohya:1>"))
    zero = pixels(generate(client, model, loras=[{"name": f"tiny-{family}-kohya", "scale": 0}]))
    after = pixels(generate(client, model))
    assert kohya != base
    assert diffusers_format == kohya  # both key formats load, to the same weights
    assert tagged == kohya  # the prompt tag acts exactly like the field
    assert zero == base and after == base  # scale 0, and the job after: the fresh worker's bytes


def test_two_loras_with_their_weights(client):
    one = pixels(generate(client, SDXL, loras=["tiny-sdxl-kohya:0.5"]))
    both = pixels(generate(client, SDXL, loras=["tiny-sdxl-kohya:0.5", "styles/ink:-0.25"]))
    assert len({one, both, pixels(generate(client, SDXL))}) == 3


def test_edits_and_variations_see_the_adapters(client):
    def edit(**extras):
        response = client.images.edit(model=SDXL, image=("in.png", input_png(), "image/png"), prompt="a red fox",
                                      response_format="b64_json", extra_body=EXTRAS | extras)
        return pixels(response.data[0].b64_json)

    def variation(**extras):
        response = client.images.create_variation(model=SDXL, image=("in.png", input_png(), "image/png"),
                                                  response_format="b64_json", extra_body=EXTRAS | extras)
        return pixels(response.data[0].b64_json)

    plain = edit()
    # The SDK sends extra_body in a form as loras[][name]=...&loras[][scale]=...
    assert edit(loras=[{"name": "tiny-sdxl-kohya", "scale": 1.0}]) != plain
    assert edit() == plain
    assert variation(loras=["tiny-sdxl-kohya"]) != variation()


def test_gradio_client_and_cli_apply_the_same_lora(server, client, lora_models, lora_dir, tmp_path):
    from gradio_client import Client

    rest = pixels(generate(client, SDXL, loras=["tiny-sdxl-kohya:0.7"]))
    files, params = Client(server + "/", verbose=False).predict(
        "a red fox", SDXL, None, 64, 64, 2, None, 3, 1, "none", [{"name": "tiny-sdxl-kohya", "scale": 0.7}],
        api_name="/generate")
    with Image.open(files[0]) as image:
        assert image.convert("RGB").tobytes() == rest
    assert params["loras"] == [{"name": "tiny-sdxl-kohya", "scale": 0.7}]
    out = tmp_path / "fox.png"
    assert cli.main(["generate", "--models-dir", str(lora_models), "--lora-dir", str(lora_dir), "--model", SDXL,
                     "--prompt", "a red fox", "--size", "64x64", "--steps", "2", "--seed", "3",
                     "--lora", "tiny-sdxl-kohya:0.7", "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.convert("RGB").tobytes() == rest
    assert pngmeta.read(out)["loras"] == [{"name": "tiny-sdxl-kohya", "scale": 0.7}]


def test_the_images_record_their_loras_as_a1111_does(client, lora_dir):
    from studio.loras import short_hash

    png = base64.b64decode(generate(client, SDXL, prompt="a red fox <lora:styles/ink:0.5>",
                                    loras=[{"name": "tiny-sdxl-kohya", "scale": 0.8}]))
    params = pngmeta.read(png)
    prompt_line, settings = params["parameters"].split("\n")
    assert prompt_line == "a red fox <lora:tiny-sdxl-kohya:0.8> <lora:styles/ink:0.5>"
    kohya, ink = (short_hash(lora_dir / name) for name in ("tiny-sdxl-kohya.safetensors", "styles/ink.safetensors"))
    assert f'Lora hashes: "tiny-sdxl-kohya: {kohya}, styles/ink: {ink}"' in settings
    assert params["prompt"] == "a red fox"
    assert params["loras"] == [{"name": "tiny-sdxl-kohya", "scale": 0.8}, {"name": "styles/ink", "scale": 0.5}]


def test_the_library_is_listed_on_every_face(server, http):
    from gradio_client import Client

    listed = {lora["name"]: lora for lora in http.get("/v1/loras").json()["data"]}
    assert sorted(listed) == ["styles/ink", "tiny-flux-diffusers", "tiny-flux-kohya", "tiny-sdxl-diffusers",
                              "tiny-sdxl-kohya"]  # the broken files are left out
    assert listed["tiny-flux-kohya"]["family"] == "flux"
    assert listed["tiny-flux-kohya"]["models"] == ["flux-dev", "flux-schnell", "chroma"]
    assert listed["tiny-sdxl-kohya"]["trigger_words"] == ["tinystyle"] and listed["tiny-sdxl-kohya"]["size_bytes"] > 0
    assert Client(server + "/", verbose=False).predict(api_name="/loras") == list(listed.values())
    a1111 = {lora["name"]: lora for lora in http.get("/sdapi/v1/loras").json()}
    assert a1111["styles/ink"]["path"] == "styles/ink.safetensors"
    assert a1111["styles/ink"]["metadata"]["models"] == listed["styles/ink"]["models"]


@pytest.mark.parametrize("extras, param, says", [
    ({"loras": ["tiny-sdxl-kohy"]}, "loras", "unknown LoRA 'tiny-sdxl-kohy'; did you mean tiny-sdxl-kohya"),
    ({"loras": ["../../etc/passwd"]}, "loras", "climbs out of the LoRA folder"),
    ({"loras": ["pickled.ckpt"]}, "loras", "is not a .safetensors file"),
    ({"loras": ["truncated"]}, "loras", "truncated.safetensors is truncated or corrupt"),
    ({"loras": ["garbage"]}, "loras", "garbage.safetensors is not a safetensors file"),
    ({"loras": [{"name": "tiny-sdxl-kohya", "scale": 4.5}]}, "loras", "less than or equal to 4 (allowed -4..4)"),
    ({"loras": [f"x{i}" for i in range(9)]}, "loras", "at most 8"),
    ({"loras": ["tiny-sdxl-kohya", "tiny-sdxl-kohya:0.5"]}, "loras", "names tiny-sdxl-kohya twice"),
    ({"prompt": "a fox <lora:tiny-sdxl-kohya:strong>"}, "prompt", "'<lora:tiny-sdxl-kohya:strong>' must be NAME"),
    ({"loras": ["tiny-flux-kohya"]}, "loras", "'tiny-flux-kohya' is a LoRA for flux, not for sdxl-base (sdxl); "
                                              "it fits flux-dev, flux-schnell, chroma"),
    ({"model": "pixart-sigma", "size": "1024x1024", "loras": ["tiny-sdxl-kohya"]}, "loras", "pixart-sigma cannot take LoRAs"),
])
def test_bad_loras_are_a_400_naming_the_field(http, extras, param, says):
    body = {"model": SDXL, "prompt": "a red fox", **SHAPE, **EXTRAS, "response_format": "b64_json"} | extras
    response = http.post("/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    if "pixart" in says:
        assert "models that take LoRAs: " in error["message"] and "flux-schnell" in error["message"]


def test_the_worker_lives_on_after_the_bad_loras(http):
    good = http.post("/v1/images/generations", json={"model": SDXL, "prompt": "a fox", **SHAPE, **EXTRAS})
    assert good.status_code == 200, good.text
    assert http.get("/health").json()["slots"][0]["restarts"] == 0


def test_the_ui_picker_offers_the_loras_that_fit_and_reuse_carries_them(lora_models, lora_dir, tmp_path):
    from studio.catalog import load_catalog
    from studio.ui.handlers import Studio

    studio = Studio(load_catalog(lora_models, lora_dir=lora_dir), backend=None,
                    settings=Settings(outputs_dir=tmp_path / "outputs"))
    sdxl = studio.on_model_change(SDXL)["loras"]
    assert [value for _, value in sdxl["choices"]] == ["styles/ink:1", "tiny-sdxl-diffusers:1", "tiny-sdxl-kohya:1"]
    assert ("tiny-sdxl-kohya · tinystyle", "tiny-sdxl-kohya:1") in sdxl["choices"]  # its trigger words shown
    assert sdxl["visible"] and "Trigger words: " in sdxl["info"] and sdxl["value"] == []
    flux = studio.on_model_change(FLUX)["loras"]
    assert [value for _, value in flux["choices"]] == ["tiny-flux-diffusers:1", "tiny-flux-kohya:1"]
    assert not studio.on_model_change("pixart-sigma")["loras"]["visible"]  # no LoRA loader for PixArt

    spec, request = studio.resolve(dict(prompt="a red fox", model=SDXL, loras=["tiny-sdxl-kohya:1", "styles/ink:-0.5"],
                                        width=64, height=64, steps=2, seed=3, num_images=1))
    assert [(lora.name, lora.scale) for lora in request.loras] == [("tiny-sdxl-kohya", 1.0), ("styles/ink", -0.5)]
    path = tmp_path / "fox.png"
    path.write_bytes(pngmeta.encode(Image.new("RGB", (8, 8)), request, 3, spec.label))
    reused = studio.on_reuse_click(str(path))
    assert reused["prompt"] == "a red fox"
    assert reused["loras"]["value"] == ["tiny-sdxl-kohya:1", "styles/ink:-0.5"]
    assert ("styles/ink:-0.5", "styles/ink:-0.5") in reused["loras"]["choices"]  # a weight of its own, kept


def test_a_model_change_keeps_the_lora_picks_that_fit(lora_models, lora_dir, tmp_path):
    from studio.catalog import load_catalog
    from studio.ui.handlers import Studio

    studio = Studio(load_catalog(lora_models, lora_dir=lora_dir), backend=None,
                    settings=Settings(outputs_dir=tmp_path / "outputs"))
    picks = ["tiny-sdxl-kohya:0.5", "styles/ink:1", "tiny-flux-kohya:1", "someone/hub-lora:1"]
    turbo = studio.on_model_change("sdxl-turbo", loras=picks)["loras"]  # SDXL's, and a hub LoRA not judged yet
    assert turbo["value"] == ["tiny-sdxl-kohya:0.5", "styles/ink:1", "someone/hub-lora:1"]
    assert ("tiny-sdxl-kohya:0.5", "tiny-sdxl-kohya:0.5") in turbo["choices"]  # its own weight, still offered
    sized = studio.on_model_change(SDXL, width=64, height=64, size_chosen=True, loras=turbo["value"])
    assert sized["loras"]["value"] == turbo["value"] and sized["width"]["value"] == 64
    flux = studio.on_model_change(FLUX, loras=[*turbo["value"], "tiny-flux-kohya:1"])["loras"]
    assert flux["value"] == ["someone/hub-lora:1", "tiny-flux-kohya:1"]
    assert studio.on_model_change("pixart-sigma", loras=picks)["loras"]["value"] == []  # no LoRA loader: none sent
    assert studio.on_card_use(FLUX, loras=picks)["loras"]["value"] == ["tiny-flux-kohya:1", "someone/hub-lora:1"]


def test_the_browser_picks_a_lora_and_gets_the_image_rest_gets(server, client, outputs):
    from tests.test_ui import CHROMIUM, CHROMIUM_ARGS, fill_advanced, generate_and_wait, pick_model

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    rest = pixels(generate(client, SDXL, loras=["tiny-sdxl-kohya:1"]))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server + "/")
        page.wait_for_selector("#generate-button", timeout=30_000)
        pick_model(page, "SDXL Base 1.0")
        page.click("#loras input")
        page.click("ul[role=listbox] li:has-text('tiny-sdxl-kohya · tinystyle')")
        for label in ("SDXL Turbo", "SDXL Base 1.0"):  # the pick fits both: it stays picked
            pick_model(page, label)
        page.fill("#prompt textarea", "a red fox")
        fill_advanced(page, steps="2", seed="3")
        newest = generate_and_wait(page, outputs)
        browser.close()
    assert pngmeta.read(newest)["loras"] == [{"name": "tiny-sdxl-kohya", "scale": 1.0}]
    with Image.open(newest) as image:
        assert image.convert("RGB").tobytes() == rest
