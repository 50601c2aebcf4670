"""The Gradio studio: the API through gradio_client and the page through headless Chromium, on the live app.

One real server for the module (tiny SDXL models, one CPU slot); the handler tests at the end need none.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from studio import pngmeta
from studio.catalog import load_catalog
from studio.config import Settings
from studio.errors import InvalidRequest
from studio.schemas import GenerationRequest
from studio.ui import NO_STYLE, RANDOM_SEED, Studio, load_styles

MODELS = ("sdxl-turbo", "sdxl-base")
ARTIFACTS = Path(__file__).parent / "artifacts"  # the screenshots, kept after the run (ignored by git)
PHONE = {"width": 390, "height": 844}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def served(tiny_models, tmp_path_factory, models, **settings):
    """The app on the tiny ``models`` and a fresh outputs folder, for a module's server fixture: yields
    ``SimpleNamespace(url, outputs)``."""
    from tests.live import serve

    outputs = tmp_path_factory.mktemp("outputs")
    settings = Settings(devices=["cpu"], models_dir=tiny_models(*models), outputs_dir=outputs, max_queue=8, **settings)
    with serve(settings) as url:
        yield SimpleNamespace(url=url, outputs=outputs)


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    yield from served(tiny_models, tmp_path_factory, MODELS)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server.url + "/", verbose=False, download_files=True)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url + "/")
    page.wait_for_selector("#generate-button", timeout=30_000)
    yield page
    page.close()


@pytest.fixture
def phone(browser, server):
    page = browser.new_page(viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True)
    page.goto(server.url + "/")
    page.wait_for_selector("#generate-button", timeout=30_000)
    yield page
    page.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=path)
    return path


def generate_and_wait(page, outputs: Path) -> Path:
    """Click Generate and wait for its image: the new file in the outputs folder, its seed in the status line."""
    before = set(outputs.rglob("*.png"))
    page.click("#generate-button")
    deadline = time.monotonic() + 90
    while not (new := set(outputs.rglob("*.png")) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert new, "no image was saved within 90 s"
    newest = max(new, key=lambda path: path.name)
    seed = pngmeta.read(newest)["seed"]
    page.wait_for_function("seed => document.querySelector('#job-status').innerText.includes('seed ' + seed)",
                           arg=seed, timeout=30_000)
    return newest


def in_view(page, selector: str) -> bool:
    """Whether the element is wholly inside the viewport (not scrolled away, not below the fold)."""
    box = page.locator(selector).first.bounding_box()
    viewport = page.viewport_size
    return bool(box) and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] + 1


def slots_busy(client) -> list[bool]:
    return [bool(slot.get("busy")) for slot in client.predict(api_name="/status")["slots"]]


def pick_model(page, label: str) -> None:
    page.click("#model input")
    page.click(f"ul[role=listbox] li:has-text('{label}')")
    page.wait_for_function("label => document.querySelector('#model-card').innerText.includes(label)", arg=label)


def fill_advanced(page, **values: str) -> None:
    """Open the Advanced panel and type into its number boxes (``num_images`` is ``#num-images``). Its
    first render can land after a fill and put the model's defaults back: fill until the boxes hold."""
    page.click("#advanced")
    boxes = {name: page.locator(f"#{name.replace('_', '-')} input[type=number]") for name in values}
    for _ in range(10):
        for name, box in boxes.items():
            box.fill(values[name])
            box.press("Tab")
        page.wait_for_timeout(300)
        if all(box.input_value() == values[name] for name, box in boxes.items()):
            return
    raise AssertionError(f"the Advanced boxes did not keep {values}")


def start_a_slow_base_job(page, prompt: str, **advanced: str) -> None:
    """SDXL Base at 256x256 with ``advanced`` values: a job that takes a while on a CPU."""
    pick_model(page, "SDXL Base 1.0")
    page.fill("#prompt textarea", prompt)
    page.fill("#width input", "256")
    page.fill("#height input", "256")
    fill_advanced(page, **advanced)
    page.click("#generate-button")


# ---------------------------------------------------------------- the Gradio API


def test_generate_returns_pngs_that_carry_prompt_and_seed(client, server):
    files, params = client.predict(
        prompt="a red fox in the snow", model="sdxl-turbo", seed=1234, num_images=2, sampler="Euler",
        api_name="/generate"
    )

    assert len(files) == 2
    assert params["seeds"] == [1234, 1235]
    assert (params["model"], params["width"], params["steps"]) == ("sdxl-turbo", 64, 2)  # the tiny defaults
    for path, seed in zip(files, params["seeds"]):
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # PNG, not a webp re-encode
        meta = pngmeta.read(path)
        assert (meta["prompt"], meta["seed"], meta["model"]) == ("a red fox in the snow", seed, "sdxl-turbo")
        assert meta["sampler"] == params["sampler"] == "Euler"  # not the model's own Euler a
    saved = sorted(server.outputs.glob("*.png"))
    assert {path.name for path in saved} >= set(params["files"])  # kept in the outputs folder too


def test_a_style_wraps_the_prompt(client):
    files, params = client.predict(prompt="a lighthouse", model="sdxl-turbo", seed=3, style="pixel-art",
                                   api_name="/generate")

    assert params["prompt"] == load_styles()["pixel-art"].prompt.replace("{prompt}", "a lighthouse")
    assert pngmeta.read(files[0])["prompt"] == params["prompt"]


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(model="sdxl-turbo", steps=0), "steps: 0 is out of range for sdxl-turbo; allowed 1..4"),
        (dict(model="sdxl-turbo", width=5000), "width: 5000 is out of range for sdxl-turbo; allowed 32..1024"),
        (dict(model="sdxl-base", steps=400), "steps: 400 is out of range for sdxl-base; allowed 1..150"),
        (dict(model="sdxl-turbo", steps=9), "steps: 9 is out of range for sdxl-turbo; allowed 1..4"),
        (dict(model="sdxl-base", width=100), "width: 100 must be a multiple of 8 for sdxl-base"),
        (dict(model="sdxl-turbo", negative_prompt="blur"), "negative_prompt: sdxl-turbo does not support"),
        (dict(model="no-such-model"), "model: unknown model 'no-such-model'"),
        (dict(model="sdxl-turbo", num_images=5), "num_images: Input should be less than or equal to 4"),
        (dict(model="sdxl-turbo", prompt="  ", style="anime"), "prompt: must have at least 1 character"),
        (dict(model="sdxl-turbo", seed=-5), "seed: Input should be greater than or equal to 0"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_field(client, inputs, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(api_name="/generate", **{"prompt": "a red fox", **inputs})

    assert message in str(caught.value)


def test_models_endpoint_lists_the_whole_catalog(client):
    models = {model["id"]: model for model in client.predict(api_name="/models")}

    assert len(models) == 15
    assert models["hunyuan-dit"]["sizes"] == models["hunyuan-dit"]["limits"]["allowed_sizes"]
    assert models["flux-schnell"]["cfg"] is False and models["flux-schnell"]["negative_prompt"] is False


def test_internal_ui_events_stay_out_of_the_api(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]

    assert set(endpoints) == {"/generate", "/edit", "/models", "/status", "/loras"}


# ---------------------------------------------------------------- the page in a browser


def test_browser_generates_and_shows_the_image(page, server, tmp_path):
    pick_model(page, "SDXL Turbo")
    assert not page.locator("#negative-prompt").is_visible()  # SDXL Turbo takes no negative prompt
    page.fill("#prompt textarea", "a paper boat on a pond")
    page.click("#advanced")
    assert page.input_value("#sampler input") == "The model's own"
    page.click("#sampler input")  # the model's list, by A1111's names
    page.click("ul[role=listbox] li:has-text('DPM++ 2M Karras')")
    page.wait_for_function("() => document.querySelector('#sampler input').value === 'DPM++ 2M Karras'")
    page.click("#generate-button")

    page.wait_for_selector("#results-gallery img", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#job-status').innerText.startsWith('Done')")
    page.screenshot(path=tmp_path / "studio.png", full_page=True)
    screenshot(page, "desktop-create.png")

    status = page.inner_text("#job-status")
    seed = int(status.split("seed ")[1].split(" ")[0])
    newest = max(server.outputs.glob("*.png"), key=lambda path: path.name)
    assert pngmeta.read(newest)["prompt"] == "a paper boat on a pond"
    assert pngmeta.read(newest)["seed"] == seed
    assert pngmeta.read(newest)["sampler"] == "DPM++ 2M Karras"
    assert (tmp_path / "studio.png").stat().st_size > 10_000


def test_cancel_in_the_browser_stops_the_job_and_frees_the_slot(page, client):
    start_a_slow_base_job(page, "a very slow cathedral", steps="150", num_images="4")
    page.wait_for_function("() => document.querySelector('#job-status').innerText.startsWith('Step')",
                           timeout=60_000)
    assert slots_busy(client) == [True]

    page.click("#cancel-button")
    started = time.monotonic()
    while any(slots_busy(client)) and time.monotonic() - started < 10:
        time.sleep(0.2)

    assert not any(slots_busy(client)), "the slot is still busy 10 s after Cancel"
    page.wait_for_function("() => document.querySelector('#job-status').innerText.includes('Cancelled')")
    # The worker really stopped: a one-step job on the same single slot is not stuck behind 600 steps.
    started = time.monotonic()
    files, _ = client.predict(prompt="quick", model="sdxl-turbo", steps=1, api_name="/generate")
    assert files and time.monotonic() - started < 30


def test_the_gallery_selects_the_newest_image_and_the_parameters_follow_the_selection(page, server):
    pick_model(page, "SDXL Turbo")
    page.fill("#prompt textarea", "a lantern")
    first = generate_and_wait(page, server.outputs)
    second = generate_and_wait(page, server.outputs)
    page.locator("#results-gallery button.thumbnail-small").nth(1).click()  # the older one
    page.wait_for_function("seed => document.querySelector('#params').innerText.includes(seed)",
                           arg=str(pngmeta.read(first)["seed"]))

    third = generate_and_wait(page, server.outputs)

    newest_seed = str(pngmeta.read(third)["seed"])
    page.wait_for_function("name => document.querySelector('#results-gallery .media-button img').src.endsWith(name)",
                           arg=third.name, timeout=15_000)
    assert newest_seed in page.inner_text("#params")
    assert str(pngmeta.read(second)["seed"]) not in page.inner_text("#params")
    # ♻ Reuse puts the shown image's seed back; Random draws a concrete one.
    page.click("#advanced")
    page.click("#seed-reuse")
    page.wait_for_function("seed => document.querySelector('#seed input').value === seed", arg=newest_seed)
    page.click("#seed-random")
    page.wait_for_function("seed => !['-1', seed].includes(document.querySelector('#seed input').value)",
                           arg=newest_seed)
    assert 0 <= int(page.input_value("#seed input"))


def test_an_invalid_value_stays_in_the_status_line_with_the_models_range(page):
    pick_model(page, "SDXL Turbo")
    assert "32..1024 px" in page.inner_text("#width")  # the hint says the tiny model's range...
    page.fill("#prompt textarea", "a wide fox")
    page.fill("#width input", "5000")
    page.click("#generate-button")

    message = "width: 5000 is out of range for sdxl-turbo; allowed 32..1024"  # ...and so does the error
    page.wait_for_function("text => document.querySelector('#job-status').innerText.includes(text)", arg=message, timeout=90_000)
    time.sleep(1)  # a toast would be up by now
    assert page.locator(".toast-body").count() == 0  # the status line holds the error, not a toast that goes
    assert message in page.inner_text("#job-status")
    page.fill("#width input", "64")
    fill_advanced(page, steps="400")  # a box, not a slider: no silent clamp to the top
    page.click("#generate-button")
    page.wait_for_function("() => document.querySelector('#job-status').innerText.includes("
                           "'steps: 400 is out of range for sdxl-turbo; allowed 1..4')", timeout=90_000)


def test_on_a_phone_generate_the_status_and_the_newest_image_are_on_screen_together(phone, server):
    screenshot(phone, "phone-start.png")
    header = phone.locator("#header-row").bounding_box()
    assert header["height"] < 120, f"the header takes {header['height']} px of a 844 px screen"
    pick_model(phone, "SDXL Turbo")
    phone.fill("#prompt textarea", "a kite over the sea")

    newest = generate_and_wait(phone, server.outputs)

    phone.wait_for_function("name => document.querySelector('#results-gallery .media-button img').src.endsWith(name)",
                            arg=newest.name, timeout=15_000)
    phone.wait_for_timeout(800)  # the smooth scroll to the results
    screenshot(phone, "phone-after-generate.png")
    for selector in ("#generate-button", "#job-status", "#results-gallery .media-button img"):
        assert in_view(phone, selector), f"{selector} is not on screen after Generate"
    assert phone.inner_text("#job-status").startswith("Done")

    phone.click("#studio-tabs button[role=tab]:has-text('Models')")  # a tab of its own, not behind "•••"
    groups = phone.locator("h2.model-group")
    groups.first.wait_for()
    assert groups.all_inner_texts() == ["Top tier", "Excellent tier", "Specialized", "Fast generation",
                                        "Experimental"]
    ranks = phone.locator(".model-tile .model-card[data-rank]").evaluate_all("cards => cards.map(c => +c.dataset.rank)")
    assert ranks == list(range(1, 16))
    screenshot(phone, "phone-models.png")


def test_use_on_a_card_loads_the_recommended_settings(page):
    page.click("#studio-tabs button[role=tab]:has-text('Models')")
    page.click("#use-pixart-sigma")
    page.wait_for_function("() => document.querySelector('#model-card').innerText.includes('PixArt-Sigma')")
    page.click("#advanced")
    assert page.input_value("#steps input") == "40"
    assert float(page.input_value("#guidance input")) == 4.5
    screenshot(page, "desktop-after-use.png")


@pytest.fixture(scope="module")
def logins_server(tiny_models, tmp_path_factory):
    yield from served(tiny_models, tmp_path_factory, MODELS, ui_auth=[("ann", "pw-ann"), ("bob", "pw-bob")])


def history_as(browser, server, user: str, password: str) -> list[str]:
    """Sign in through the real login route, open the History tab, return its image file names."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        answer = page.request.post(server.url + "/login", form={"username": user, "password": password})
        assert answer.ok, answer.status
        page.goto(server.url + "/")
        page.wait_for_selector("#generate-button", timeout=30_000)
        page.click("#studio-tabs button[role=tab]:has-text('History')")
        page.wait_for_function("() => /History: \\d+ image/.test(document.querySelector('#history-gallery').innerText)")
        return page.locator("#history-gallery img").evaluate_all(
            "images => [...new Set(images.map(i => decodeURIComponent(i.src).split('/').pop()))]")
    finally:
        context.close()


def test_each_login_sees_only_its_own_images(logins_server, browser):
    from gradio_client import Client

    ann = Client(logins_server.url + "/", auth=("ann", "pw-ann"), verbose=False)
    files, params = ann.predict(prompt="ann's secret garden", model="sdxl-turbo", api_name="/generate")

    saved = logins_server.outputs / "users" / "ann" / params["files"][0]
    assert saved.is_file() and not list(logins_server.outputs.glob("*.png"))  # in ann's folder, not the shared one
    assert history_as(browser, logins_server, "ann", "pw-ann") == [saved.name]
    assert history_as(browser, logins_server, "bob", "pw-bob") == []


# ---------------------------------------------------------------- handlers, no server needed


@pytest.fixture
def studio(tmp_path):
    return Studio(load_catalog(), backend=None, settings=Settings(outputs_dir=tmp_path / "outputs"))


def _controls(studio, model_id):
    updates = studio.on_model_change(model_id)
    return SimpleNamespace(card=updates["card"]["value"], negative=updates["negative_prompt"], size=updates["size"],
                           width=updates["width"], height=updates["height"], steps=updates["steps"],
                           guidance=updates["guidance"], note=updates["guidance_note"], sampler=updates["sampler"])


def test_each_model_shows_only_the_controls_it_supports(studio):
    flux = _controls(studio, "flux-schnell")
    assert flux.negative["visible"] is False
    assert flux.guidance["visible"] is False and flux.note["visible"] is True
    assert flux.steps["info"] == "1..12 for FLUX.1 [schnell]"  # the same range as its errors
    assert flux.sampler["choices"] == [("The model's own", ""), ("Euler", "Euler"), ("Euler Karras", "Euler Karras"),
                                       ("Euler a", "Euler a")]  # flow matching: only its flow-matching samplers

    sdxl = _controls(studio, "sdxl-base")
    assert sdxl.negative["visible"] is True
    assert (sdxl.guidance["visible"], sdxl.guidance["info"]) == (True, "1..20 for SDXL Base 1.0")
    assert "decoder (stage B) always runs" in _controls(studio, "stable-cascade").steps["info"]
    assert ("DPM++ 2M Karras", "DPM++ 2M Karras") in sdxl.sampler["choices"] and sdxl.sampler["value"] == ""

    hunyuan = _controls(studio, "hunyuan-dit")
    sizes = [value for _, value in hunyuan.size["choices"]]
    assert sizes == [f"{w}x{h}" for w, h in load_catalog().get("hunyuan-dit").limits.allowed_sizes]
    assert hunyuan.width["interactive"] is False  # only its ten sizes, picked with the buttons
    assert "错误的眼睛" in hunyuan.negative["placeholder"]  # empty means its official negative prompt
    assert "错误的眼睛" not in sdxl.negative["placeholder"]

    pixart = _controls(studio, "pixart-sigma")
    assert "4096x4096" in [value for _, value in pixart.size["choices"]]
    assert "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers" in hunyuan.card and "#12" in hunyuan.card


def test_reuse_fills_every_control_from_the_png(studio, tmp_path):
    request = GenerationRequest(prompt="a castle", negative_prompt="fog", model="sdxl-base", width=832,
                                height=1216, steps=33, guidance=6.5, seed=77, num_images=1, sampler="DPM++ 2M Karras")
    path = tmp_path / "castle.png"
    path.write_bytes(pngmeta.encode(Image.new("RGB", (8, 8)), request, 77, "SDXL Base 1.0"))

    updates = studio.on_reuse_click(str(path))

    assert [updates[name] for name in ("model", "prompt", "style", "seed", "num_images")] == [
        "sdxl-base", "a castle", NO_STYLE, 77, 1]
    assert [updates[name]["value"] for name in ("negative_prompt", "width", "height")] == ["fog", 832, 1216]
    assert (updates["steps"]["value"], updates["guidance"]["value"]) == (33, 6.5)
    assert updates["sampler"]["value"] == "DPM++ 2M Karras"
    assert updates["size"]["value"] is None or updates["size"]["value"] == "832x1216"
    assert updates["tabs"].selected == "create"


def test_ui_values_resolve_like_the_api(studio):
    spec, request = studio.resolve(dict(prompt="a fox", model="sdxl-base", negative_prompt="", width=512, height=768,
                                        steps=20.0, guidance=5.0, seed=RANDOM_SEED, num_images=2.0, style="anime"))

    assert request.prompt.startswith("anime artwork of a fox")
    assert request.negative_prompt == load_styles()["anime"].negative  # the style's negative, model takes one
    assert (request.width, request.height, request.steps, request.num_images) == (512, 768, 20, 2)
    assert 0 <= request.seed and spec.id == "sdxl-base"
    assert request.sampler is None  # no sampler control: the model's own
    for shown, sampler in (("", None), ("euler a", "Euler a")):  # "": the dropdown's "The model's own"
        _, request = studio.resolve(dict(prompt="a fox", model="sdxl-base", sampler=shown))
        assert request.sampler == sampler
    with pytest.raises(InvalidRequest, match="sampler: flux-schnell cannot run 'DDIM'; its samplers: Euler"):
        studio.resolve(dict(prompt="a fox", model="flux-schnell", sampler="DDIM"))


def test_every_style_keeps_the_prompt():
    styles = load_styles()
    assert len(styles) >= 9 and NO_STYLE in styles
    for style in styles.values():
        prompt, negative = style.apply("a fox", "", supports_negative=False)
        assert "a fox" in prompt and negative == ""


def test_history_tab_lists_images_from_before_a_restart(server, client, tmp_path):
    client.predict(prompt="remember me", model="sdxl-turbo", seed=9, api_name="/generate")
    copy = tmp_path / "outputs"
    shutil.copytree(server.outputs, copy)

    fresh = Studio(load_catalog(), backend=None, settings=Settings(outputs_dir=copy))  # as after a restart
    items = fresh.on_history_refresh("", None)["history_items"]

    assert len(items) == len(list(copy.glob("*.png")))
    assert pngmeta.read(items[0][0])["prompt"] == "remember me"
    assert "seed 9" in items[0][1]


# ---------------------------------------------------------------- edits and live previews


def test_api_edits_an_image_with_and_without_a_mask(client, tmp_path):
    from gradio_client import handle_file

    source, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.linear_gradient("L").resize((96, 64)).convert("RGB").save(source)
    hole = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    hole.paste((0, 0, 0, 0), (0, 0, 48, 64))  # alpha 0: repaint the left half
    hole.save(mask)
    files, params = client.predict(image=handle_file(str(source)), prompt="a watercolour", model="sdxl-turbo",
                                   strength=0.5, steps=2, seed=3, sampler="DPM++ 2M Karras", api_name="/edit")
    assert (params["task"], params["strength"], params["sampler"]) == ("image-to-image", 0.5, "DPM++ 2M Karras")
    assert Image.open(files[0]).size == (96, 64)  # the input's size, valid for the model
    files, params = client.predict(image=handle_file(str(source)), prompt="a door", mask=handle_file(str(mask)),
                                   model="sdxl-turbo", steps=1, api_name="/edit")
    assert pngmeta.read(files[0])["task"] == "inpainting"
    assert params["sampler"] == "Euler a"  # unset: sdxl-turbo's own scheduler, named


def test_browser_shows_a_live_preview_while_the_job_runs(page, client):
    start_a_slow_base_job(page, "a slowly forming harbour", steps="60")
    page.wait_for_selector("#live-preview img", timeout=60_000)  # a preview, before the job is done
    assert not page.inner_text("#job-status").startswith("Done")
    page.click("#cancel-button")
    page.wait_for_function("() => document.querySelector('#job-status').innerText.includes('Cancelled')")
    page.wait_for_selector("#live-preview", state="hidden", timeout=10_000)  # no stale preview after a cancel


def test_the_edit_panel_makes_the_mask_from_the_paint(studio):
    from studio import editor

    background = Image.new("RGB", (64, 48), "blue")
    paint = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    paint.paste((255, 0, 0, 255), (0, 0, 16, 48))
    image, mask = editor.edit_files({"background": background, "layers": [paint], "composite": background})
    repaint = Image.open(io.BytesIO(mask))
    assert repaint.getpixel((2, 2)) == 255 and repaint.getpixel((40, 2)) == 0  # white = repaint
    assert editor.edit_files({"background": background, "layers": [Image.new("RGBA", (64, 48))]})[1] is None
    assert editor.edit_files({"background": None, "layers": []}) == (None, None)
    spec, resolved = studio.resolve(dict(prompt="a cat", model="sdxl-base", negative_prompt="", width=512, height=512,
                                         steps=2, guidance=None, seed=1, num_images=1, style=NO_STYLE, strength=0.6),
                                    image=image, mask=mask)
    assert (resolved.task, resolved.strength) == ("inpainting", 0.6)
    assert studio.on_model_edit_support("pixart-sigma", None, False)["edit_panel"].visible is False


def test_send_to_edit_puts_the_image_in_the_edit_panel(studio, tmp_path):
    path = tmp_path / "made.png"
    Image.new("RGB", (1024, 768), "green").save(path)
    updates = studio.on_send_to_edit("sdxl-base", str(path))
    assert updates["edit_image"]["background"].size == (1024, 768) and updates["edit_panel"].open is True
    assert (updates["width"], updates["height"]) == (1024, 768)  # already valid for SDXL: kept
    assert updates["editing"] is True and updates["generate"].value == "Edit" and updates["edit_clear"].visible is True
    flux = studio.on_send_to_edit("flux-schnell", str(path))
    assert (flux["width"], flux["height"]) == (1024, 768)


def test_an_admin_login_sees_every_folder_and_deletes_only_inside_a_history(tmp_path):
    settings = Settings(outputs_dir=tmp_path, ui_auth=[("ann", "a"), ("bob", "b"), ("root", "r")], ui_admins=["root"])
    studio = Studio(load_catalog(), backend=None, settings=settings)
    as_user = {user: SimpleNamespace(username=user) for user in ("ann", "bob", "root")}
    request = GenerationRequest(prompt="mine", model="sdxl-turbo", width=64, height=64, steps=1, guidance=0.0,
                                seed=5, num_images=1)
    png = pngmeta.encode(Image.new("RGB", (8, 8)), request, 5, "SDXL Turbo")
    ann_file = studio.saved_history(as_user["ann"]).save(png)

    assert ann_file.parent == tmp_path / "users" / "ann"
    assert [item[0] for item in studio.on_history_refresh("", as_user["bob"])["history_items"]] == []
    assert [item[0] for item in studio.on_history_refresh("mine", as_user["root"])["history_items"]] == [str(ann_file)]
    assert "not in your history" in studio.on_history_delete(str(ann_file), "", as_user["bob"])["history_status"]
    assert ann_file.exists()
    studio.on_history_delete(str(ann_file), "", as_user["ann"])
    assert not ann_file.exists()


def test_strength_follows_the_task_s_default_of_every_face_unless_moved(studio):
    from studio.catalog import DEFAULT_STRENGTH

    photo = Image.new("RGB", (64, 64), "navy")
    unpainted = {"background": photo, "layers": [Image.new("RGBA", (64, 64))], "composite": photo}
    painted_layer = Image.new("RGBA", (64, 64))
    painted_layer.paste((255, 59, 48, 255), (10, 10, 30, 30))
    painted = {"background": photo, "layers": [painted_layer], "composite": photo}
    assert studio.on_edit_change(painted, DEFAULT_STRENGTH["image-to-image"]) == {"strength": 1.0}
    assert DEFAULT_STRENGTH["inpainting"] == 1.0
    assert studio.on_edit_change(unpainted, DEFAULT_STRENGTH["inpainting"]) == {
        "strength": DEFAULT_STRENGTH["image-to-image"]}
    assert "strength" not in studio.on_edit_change(painted, 0.4)  # the user's own value stays
    assert "strength" not in studio.on_edit_change(None, 1.0)  # no image: nothing to follow


def test_an_empty_prompt_is_one_plain_message_and_the_header_shows_the_live_slots(page):
    from studio.ui.handlers import EMPTY_PROMPT

    # Drawn at page load, not when the UI was built (before the workers started: "cpu · stopped").
    page.wait_for_function("() => document.querySelector('#slot-status').innerText.includes('idle')", timeout=10_000)
    assert "stopped" not in page.inner_text("#slot-status")
    page.fill("#prompt textarea", "")
    page.click("#generate-button")
    page.wait_for_function("text => document.querySelector('#job-status').innerText.includes(text)",
                           arg=EMPTY_PROMPT, timeout=60_000)
    time.sleep(1)  # a toast or an error badge would be up by now
    assert page.locator(".toast-body").count() == 0
    assert "Error" not in page.inner_text("#results")
