"""The AUTOMATIC1111-compatible API (``/sdapi/v1``), end to end: the real app (tiny models, one CPU slot) on a
real port, driven the way its clients drive it, each replayed from the client's own source:

- Open WebUI's "Automatic1111" engine (backend/open_webui/routers/images.py): GET sd-models, GET options and
  POST them back whole with another sd_model_checkpoint, POST txt2img with its fields and the admin's extra
  params; HTTP Basic auth ("user:password" as its AUTOMATIC1111_API_AUTH).
- SillyTavern (src/endpoints/stable-diffusion.js and public/scripts/extensions/stable-diffusion/index.js):
  its start-up calls, set-model (POST options, then GET progress until idle), its txt2img body (its own
  `url` and `auth` included) and POST interrupt when its user closes the request.
- an A1111 img2img inpaint, and the bad inputs, each a 422 naming the field.

Two named keys (ann, bob): each has its own checkpoint, and neither can interrupt the other's jobs.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from studio import pngmeta
from studio.a1111.translate import repaint_mask
from studio.config import Settings
from tests.live import serve, wait_until

ANN_KEY, BOB_KEY = "ann-key", "bob-key"
MODELS = ("sdxl-base", "sdxl-turbo")  # sdxl-base: negative prompt and CFG; sdxl-turbo: neither


@pytest.fixture(scope="module")
def server(tiny_models, lora_models, tmp_path_factory):
    models = tiny_models(*MODELS)
    settings = Settings(
        host="127.0.0.1",
        devices=["cpu"],
        models_dir=models,
        lora_dir=lora_models / "loras",  # tiny LoRAs for the tiny SDXL (the same weights in both folders)
        job_timeout_s=120.0,
        api_key=f"ann:{ANN_KEY},bob:{BOB_KEY}",
        outputs_dir=tmp_path_factory.mktemp("outputs"),
    )
    with serve(settings) as base_url:
        yield base_url


def basic(user_and_password: str) -> str:
    """The header Open WebUI (get_automatic1111_api_auth) and SillyTavern (getBasicAuthHeader) send."""
    return "Basic " + base64.b64encode(user_and_password.encode()).decode()


@pytest.fixture
def ann(server):
    with httpx.Client(base_url=server, headers={"Authorization": basic(f"webui:{ANN_KEY}")}, timeout=120) as session:
        yield session


@pytest.fixture
def bob(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {BOB_KEY}"}, timeout=120) as session:
        yield session


def png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def assert_refused(response: httpx.Response, field: str, *words: str) -> str:
    """A1111's (FastAPI's) 422: ``detail`` is a list of errors; the first names ``field``."""
    assert response.status_code == 422, response.text[:500]
    (first, *_) = response.json()["detail"]
    assert first["loc"][-1] == field, first
    for word in words:
        assert word in first["msg"], first["msg"]
    return first["msg"]


# ---------------------------------------------------------------- Open WebUI


def test_open_webui_automatic1111_flow(server):
    """Open WebUI's engine "automatic1111", as routers/images.py calls it (AUTOMATIC1111_API_AUTH "user:key")."""
    headers = {"authorization": basic(f"admin:{ANN_KEY}")}
    with httpx.Client(base_url=server, headers=headers, timeout=120) as session:
        # verify_url and get_models
        assert session.get("/sdapi/v1/options").status_code == 200
        models = session.get("/sdapi/v1/sd-models").json()
        listed = [{"id": model["title"], "name": model["model_name"]} for model in models]
        assert len(listed) == 15 and {"sdxl-base", "sdxl-turbo"} <= {model["id"] for model in listed}
        # set_image_model: GET options, change the checkpoint, POST the whole options back
        options = session.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] != "sdxl-base"
        options["sd_model_checkpoint"] = "sdxl-base"
        session.post("/sdapi/v1/options", json=options).raise_for_status()
        assert session.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sdxl-base"
        # image_generations: its fields, then the admin's AUTOMATIC1111_PARAMS merged over them
        data = {"prompt": "a red fox", "batch_size": 2, "width": 64, "height": 64, "steps": 2,
                "negative_prompt": "blurry"}
        data = {**data, "cfg_scale": 6, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
        response = session.post("/sdapi/v1/txt2img", json=data)
    assert response.status_code == 200, response.text[:500]
    res = response.json()
    assert set(res) == {"images", "parameters", "info"} and len(res["images"]) == 2
    info = json.loads(res["info"])  # Open WebUI keeps res['info'] with each image
    seed = info["seed"]
    assert info["all_seeds"] == [seed, seed + 1] and info["sd_model_name"] == "sdxl-base"
    assert (info["sampler_name"], info["scheduler"]) == ("DPM++ 2M", "Karras")
    assert res["parameters"]["prompt"] == "a red fox" and res["parameters"]["batch_size"] == 2
    for b64, text, image_seed in zip(res["images"], info["infotexts"], info["all_seeds"]):
        image = decode(b64)  # get_image_data: plain base64, read as PNG
        assert image.format == "PNG" and image.size == (64, 64)
        params = pngmeta.read(base64.b64decode(b64))
        assert (params["model"], params["seed"], params["guidance"], params["negative_prompt"]) == (
            "sdxl-base", image_seed, 6.0, "blurry")
        assert text == params["parameters"] and "Steps: 2" in text and "CFG scale: 6" in text
        assert params["sampler"] == "DPM++ 2M Karras" and "Sampler: DPM++ 2M, Schedule type: Karras" in text


# ---------------------------------------------------------------- SillyTavern


def sillytavern_get(session: httpx.Client, path: str):
    response = session.get(f"/sdapi/v1/{path}")
    assert response.is_success, (path, response.status_code, response.text[:300])  # `if (!result.ok) throw`
    return response.json()


def test_sillytavern_start_up_and_generation(server):
    """SillyTavern's Auto1111 source: its settings' `auto_auth` "user:pass" as Basic on every call."""
    auth = f"tavern:{BOB_KEY}"
    with httpx.Client(base_url=server, headers={"Authorization": basic(auth)}, timeout=120) as session:
        sillytavern_get(session, "options")  # /ping
        upscalers = [x["name"] for x in sillytavern_get(session, "upscalers")]
        latent = [x["name"] for x in sillytavern_get(session, "latent-upscale-modes")]
        upscalers[1:1] = latent  # "0 = None, then Latent Upscalers, then Upscalers"
        assert upscalers[0] == "None"
        assert [x["model_name"] for x in sillytavern_get(session, "sd-vae")] == []
        samplers = [x["name"] for x in sillytavern_get(session, "samplers")]  # the checkpoint's: the default's
        schedulers = [x["name"] for x in sillytavern_get(session, "schedulers")]
        assert "Euler a" in samplers and "karras" in schedulers
        models = [{"value": x["title"], "text": x["title"]} for x in sillytavern_get(session, "sd-models")]
        assert "sdxl-base" in [model["value"] for model in models]
        sillytavern_get(session, "options")["sd_model_checkpoint"]  # /get-model
        # /set-model: POST options, then poll progress until progress == 0 and job_count === 0
        response = session.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl-base"})
        assert response.is_success, response.text
        progress = sillytavern_get(session, "progress")
        assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0
        # its user connects again (validateAutoUrl -> loadSettingOptions): the new checkpoint's samplers
        assert "DDIM" in [x["name"] for x in sillytavern_get(session, "samplers")]
        # /generate: the extension's body, with getSdRequestBody()'s url and auth, sent on whole
        body = {
            "url": server, "auth": auth, "prompt": "a castle on a hill", "negative_prompt": "lowres",
            "sampler_name": "DDIM", "scheduler": "normal", "steps": 2, "cfg_scale": 7, "width": 64, "height": 64,
            "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2.0,
            "denoising_strength": 0.7, "hr_second_pass_steps": 0,  # seed -1 is sent as undefined: left out
            "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
            "clip_skip": 1, "save_images": True, "send_images": True, "do_not_save_grid": False,
            "do_not_save_samples": False,
        }
        response = session.post("/sdapi/v1/txt2img", json=body)
    assert response.is_success, response.text[:500]
    data = response.json()
    image = decode(data["images"][0])  # `return { format: 'png', data: data.images[0] }`
    assert image.size == (64, 64)
    params = pngmeta.read(base64.b64decode(data["images"][0]))
    assert (params["model"], params["sampler"]) == ("sdxl-base", "DDIM")  # scheduler "normal": the plain sampler


LONG = {"prompt": "a long job", "steps": 150, "width": 128, "height": 128, "batch_size": 2,
        "override_settings": {"sd_model_checkpoint": "sdxl-base"}}


def test_interrupt_stops_only_the_callers_own_job(server, ann, bob):
    """SillyTavern sends POST interrupt when its user closes the request; another key's interrupt does nothing."""
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(response=ann.post("/sdapi/v1/txt2img", json=LONG)))
    thread.start()
    try:
        wait_until(lambda: ann.get("/sdapi/v1/progress").json()["progress"] > 0, 120, "ann's job to start its steps")
        progress = ann.get("/sdapi/v1/progress").json()
        assert progress["state"]["job_count"] == 1 and 0 < progress["progress"] < 1
        assert progress["state"]["sampling_steps"] == 150 and progress["eta_relative"] > 0
        wait_until(lambda: ann.get("/sdapi/v1/progress").json()["current_image"], 60, "a preview of ann's job")
        assert decode(ann.get("/sdapi/v1/progress").json()["current_image"]).format == "PNG"
        assert bob.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0  # bob sees none of ann's
        assert bob.post("/sdapi/v1/interrupt").status_code == 200
        before = ann.get("/sdapi/v1/progress").json()["progress"]
        wait_until(lambda: ann.get("/sdapi/v1/progress").json()["progress"] > before, 60, "ann's job to go on after bob's interrupt")
        started = time.monotonic()
        assert ann.post("/sdapi/v1/interrupt").status_code == 200
        thread.join(60)
        assert time.monotonic() - started < 30
    finally:
        thread.join(120)
    response = answer["response"]
    assert response.status_code == 200, response.text[:300]
    body = response.json()
    assert body["images"] == [] and json.loads(body["info"])["interrupted"] is True  # as A1111 before its first image
    assert ann.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    wait_until(lambda: all(not slot["busy"] for slot in ann.get("/health").json()["slots"]), 30, "the slot to be free")


def test_each_key_has_its_own_checkpoint(ann, bob):
    assert ann.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl-turbo"}).status_code == 200
    assert bob.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl-base"}).status_code == 200
    assert ann.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sdxl-turbo"
    assert bob.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "sdxl-base"
    response = ann.post("/sdapi/v1/txt2img", json={"prompt": "a boat", "width": 64, "height": 64, "seed": 11})
    assert response.status_code == 200, response.text[:300]
    info = json.loads(response.json()["info"])
    assert info["sd_model_name"] == "sdxl-turbo" and info["all_seeds"] == [11]


def test_samplers_are_those_the_callers_checkpoint_can_run(ann, bob):
    """A1111 lists the samplers of the model it has loaded; here, of each key's sd_model_checkpoint."""
    def names(session: httpx.Client) -> list[str]:
        return [sampler["name"] for sampler in session.get("/sdapi/v1/samplers").json()]

    def use(session: httpx.Client, checkpoint: str) -> None:
        assert session.post("/sdapi/v1/options", json={"sd_model_checkpoint": checkpoint}).status_code == 200

    before = {session: session.get("/sdapi/v1/options").json()["sd_model_checkpoint"] for session in (ann, bob)}
    try:
        use(ann, "flux-schnell")
        use(bob, "sdxl-base")
        flux = ann.get("/sdapi/v1/samplers").json()
        assert [sampler["name"] for sampler in flux] == ["Euler", "Euler a"]
        assert flux[1] == {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}}
        sdxl = names(bob)
        assert sdxl[:3] == ["Euler", "Euler a", "DPM++ 2M"] and "DDIM" in sdxl and "DDPM" not in sdxl
        use(ann, "hunyuan-dit")
        assert names(ann)[:2] == ["DDPM", "Euler"]
        use(ann, "playground-v2.5")  # EDM: A1111's DPM++ 2M and Euler, on Karras
        assert names(ann) == ["DPM++ 2M", "Euler"]
    finally:
        for session, checkpoint in before.items():
            use(session, checkpoint)


def test_a_lora_in_the_prompt_as_a1111_writes_it(ann):
    listed = {lora["name"]: lora for lora in ann.get("/sdapi/v1/loras").json()}
    assert listed["tiny-sdxl-kohya"]["path"] == "tiny-sdxl-kohya.safetensors"  # never a machine path
    plain = ann.post("/sdapi/v1/txt2img", json=txt2img(seed=3))
    tagged = ann.post("/sdapi/v1/txt2img", json=txt2img(seed=3, prompt="a fox <lora:tiny-sdxl-kohya:0.8>"))
    assert plain.status_code == tagged.status_code == 200, tagged.text[:300]
    (plain_b64,), (tagged_b64,) = plain.json()["images"], tagged.json()["images"]
    params = pngmeta.read(base64.b64decode(tagged_b64))
    assert params["prompt"] == "a fox" and params["loras"] == [{"name": "tiny-sdxl-kohya", "scale": 0.8}]
    assert decode(plain_b64).tobytes() != decode(tagged_b64).tobytes()
    unknown = ann.post("/sdapi/v1/txt2img", json=txt2img(prompt="a fox <lora:no-such-lora:1>"))
    assert_refused(unknown, "prompt", "unknown LoRA")


def test_refresh_routes_and_cmd_flags_answer_as_a1111(ann):
    """Clients POST these after adding files; A1111 answers 200 with a null body."""
    for path in ("refresh-loras", "refresh-checkpoints"):
        answer = ann.post(f"/sdapi/v1/{path}")
        assert (answer.status_code, answer.json()) == (200, None), (path, answer.text)
    flags = ann.get("/sdapi/v1/cmd-flags")
    assert flags.status_code == 200 and flags.json()["api"] is True and flags.json()["listen"] is False
    assert ANN_KEY not in flags.text and BOB_KEY not in flags.text
    assert "tiny-sdxl-kohya" in {lora["name"] for lora in ann.get("/sdapi/v1/loras").json()}


# ---------------------------------------------------------------- img2img


def test_img2img_inpaint(ann):
    photo = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # white = repaint: the left half
    body = {"init_images": [png(photo)], "mask": png(mask), "prompt": "a red door", "denoising_strength": 0.75,
            "inpainting_mask_invert": 0, "mask_blur": 4, "steps": 4, "seed": 5, "cfg_scale": 7,
            "inpainting_fill": 1, "inpaint_full_res": False, "resize_mode": 0, "include_init_images": False,
            "override_settings": {"sd_model_checkpoint": "sdxl-base"}}
    response = ann.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text[:300]
    res = response.json()
    (b64,) = res["images"]
    assert decode(b64).size == (64, 64)
    params = pngmeta.read(base64.b64decode(b64))
    assert (params["task"], params["strength"], params["seed"]) == ("inpainting", 0.75, 5)
    assert res["parameters"]["init_images"] is None and json.loads(res["info"])["denoising_strength"] == 0.75


def test_a1111_masks_read_as_a1111_reads_them():
    def pixels(data: bytes) -> tuple[int, int]:
        image = Image.open(io.BytesIO(data))
        assert image.mode == "L"
        return image.getpixel((0, 0)), image.getpixel((63, 0))

    def encoded(image: Image.Image) -> bytes:
        return base64.b64decode(png(image))

    white_left = Image.new("RGB", (64, 64), "black")
    white_left.paste((255, 255, 255), (0, 0, 32, 64))
    assert pixels(repaint_mask(encoded(white_left), invert=False, blur=0)) == (255, 0)
    assert pixels(repaint_mask(encoded(white_left), invert=True, blur=0)) == (0, 255)
    painted = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # a painting app's mask: opaque strokes on transparency
    painted.paste((0, 0, 0, 255), (0, 0, 32, 64))
    assert pixels(repaint_mask(encoded(painted), invert=False, blur=0)) == (255, 0)
    edge = Image.open(io.BytesIO(repaint_mask(encoded(white_left), invert=False, blur=4)))
    assert 0 < edge.getpixel((32, 10)) < 255  # blurred across the edge


# ---------------------------------------------------------------- bad input and auth


def txt2img(**fields) -> dict:
    return {"prompt": "a fox", "width": 64, "height": 64, "steps": 2,
            "override_settings": {"sd_model_checkpoint": "sdxl-base"}, **fields}


@pytest.mark.parametrize("route,body,field,words", [
    ("txt2img", txt2img(sampler_name="Warp Drive"), "sampler_name", ("Warp Drive", "DPM++ 2M")),
    ("txt2img", txt2img(sampler_name="DDPM"), "sampler_name", ("sdxl-base cannot run 'DDPM'", "Euler a")),
    ("txt2img", txt2img(sampler_name="Euler", scheduler="Warped"), "scheduler", ("Warped", "Karras")),
    ("txt2img", txt2img(override_settings={"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"}),
     "sd_model_checkpoint", ("unknown checkpoint", "sdxl-base, sdxl-turbo")),
    ("txt2img", txt2img(batch_size=4, n_iter=2), "batch_size", ("8 images", "at most 4", "one batch on one slot")),
    ("txt2img", txt2img(seed=2**32), "seed", ("4294967295",)),
    ("txt2img", txt2img(seed=-2), "seed", ("-1",)),
    ("txt2img", txt2img(enable_hr=True), "enable_hr", ("hires fix",)),
    ("txt2img", txt2img(restore_faces=True), "restore_faces", ("face restoration",)),
    ("txt2img", txt2img(cfg_scale=99), "cfg_scale", ("1..20",)),
    ("img2img", txt2img(init_images=["bm90IGFuIGltYWdl"]), "init_images", ("not a readable image",)),
    ("img2img", txt2img(init_images=["https://example.com/a.png"]), "init_images", ("not fetched",)),
    ("img2img", txt2img(init_images=[], mask=None), "init_images", ()),
])
def test_bad_input_is_a_422_naming_the_field(ann, route, body, field, words):
    assert_refused(ann.post(f"/sdapi/v1/{route}", json=body), field, *words)


def test_a_mask_of_another_size_is_refused(ann):
    body = txt2img(init_images=[png(Image.new("RGB", (64, 64)))], mask=png(Image.new("L", (32, 32))))
    assert_refused(ann.post("/sdapi/v1/img2img", json=body), "mask", "32x32", "64x64")
    options = ann.post("/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
    assert_refused(options, "sd_model_checkpoint", "available")
    assert ann.get("/health").json()["status"] == "ok"


def test_keys_as_bearer_or_basic_and_unknown_routes(server):
    with httpx.Client(base_url=server, timeout=30) as session:
        missing = session.get("/sdapi/v1/sd-models")
        assert missing.status_code == 401 and "Basic" in missing.json()["detail"]
        assert missing.headers["WWW-Authenticate"] == "Basic"
        assert session.get("/sdapi/v1/sd-models", headers={"Authorization": basic("x:wrong")}).status_code == 401
        assert session.get("/sdapi/v1/sd-models", headers={"Authorization": basic(f"anyone:{ANN_KEY}")}).is_success
        assert session.get("/sdapi/v1/sd-models", headers={"Authorization": f"Bearer {BOB_KEY}"}).is_success
        auth = {"Authorization": f"Bearer {ANN_KEY}"}
        for path, first in (("sd-modules", None), ("loras", None), ("latent-upscale-modes", None),
                            ("schedulers", "automatic"), ("samplers", None)):
            listed = session.get(f"/sdapi/v1/{path}", headers=auth).json()
            assert isinstance(listed, list) and (first is None or listed[0]["name"] == first)
        for method, path in (("GET", "/sdapi/v1/extra-single-image"), ("POST", "/sdapi/v1/png-info"),
                             ("GET", "/sdapi/v2/anything")):
            unknown = session.request(method, path, headers=auth)  # A1111 (a FastAPI app): FastAPI's own 404
            assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"}), (path, unknown.text)
        assert session.get("/sdapi/v1/extra-single-image").status_code == 401  # still behind the key
        wrong_method = session.get("/sdapi/v1/txt2img", headers=auth)
        assert (wrong_method.status_code, wrong_method.json()) == (405, {"detail": "Method Not Allowed"})
        assert wrong_method.headers["Allow"] == "POST"
        docs = session.get("/openapi.json").json()["paths"]["/sdapi/v1/txt2img"]["post"]["description"]
        assert "alwayson_scripts" in docs and "hr_upscaler" in docs and "enable_hr" in docs  # ignored, refused


# ---------------------------------------------------------------- callers (no server)


def test_skip_stops_the_running_job_and_interrupt_all_of_the_callers_own(tiny_catalog):
    import asyncio

    from studio.a1111.callers import Callers
    from studio.jobs import Job
    from studio.schemas import GenerationRequest, JobStage, Progress

    spec = tiny_catalog("sdxl-base").get("sdxl-base")

    async def scenario():
        known = Callers()
        running, queued, others = (Job(spec, GenerationRequest(prompt=name)) for name in ("run", "wait", "bob"))
        for caller, job in (("ann", running), ("ann", queued), ("bob", others)):
            known.follow(caller, job)
        running.emit(Progress(JobStage.GENERATING))
        running.emit(Progress(JobStage.STEP, step=5, total=20))
        await asyncio.sleep(0.05)  # the watchers read the events
        assert known.current("ann").job is running and known.current("ann").progress == 0.25
        assert known.stop("ann", running_only=True) == 1  # skip
        assert running.done() and not queued.done()
        assert known.stop("ann") == 1  # interrupt: the queued one too, never bob's
        assert queued.done() and not others.done()
        await asyncio.sleep(0.05)
        assert known.pending("ann") == [] and known.current("bob").job is others
        others.cancel()

    asyncio.run(scenario())


def test_without_keys_options_are_global_and_jobs_the_addresses():
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    from studio.a1111.auth import require_caller, sent_key

    def request(host: str, key: str | None = None) -> Request:
        app = SimpleNamespace(state=SimpleNamespace(settings=SimpleNamespace(api_key=key)))
        scope = {"type": "http", "headers": [], "client": (host, 5000), "app": app}
        return Request(scope)

    one, two = (asyncio.run(require_caller(request(host))) for host in ("10.0.0.1", "10.0.0.2"))
    assert one.options == two.options == "" and one.jobs != two.jobs
    assert sent_key(basic("undefined")) == "undefined"  # SillyTavern with no auth set: no colon
    assert sent_key(basic("anyone:k")) == "k" and sent_key("Bearer  k ") == "k" and sent_key("") is None
