"""The OpenAI-compatible REST API, end to end: the real app (tiny models, two CPU slots) on a real
port, driven by the official ``openai`` SDK and by plain HTTP.

One server for the whole module. It has an API key (so every call also checks auth), a queue of
one (so a few long jobs fill it) and a short job timeout (so a long job reaches 504). Tiny models
finish any job they allow in seconds, so this module's copy of sdxl-base allows 512x512: with
n=4 and 150 steps that is a minute of work, cancellable at every step.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from PIL import Image

from studio import pngmeta
from studio.catalog import load_catalog
from studio.config import Settings
from tests.live import ROOT, metric, run_app, serve, wait_until

API_KEY = "test-key"
UI_LOGIN = ("ann", "ui-secret")  # --ui-auth: the web UI and the Gradio API
MODELS = ("sdxl-turbo", "sdxl-base")  # sdxl-turbo: no negative prompt, no guidance; sdxl-base: both
JOB_TIMEOUT_S = 20.0  # every job's limit but the timeout test's own (SHORT_TIMEOUT_S)
SHORT_TIMEOUT_S = 3.0  # the timeout test's: LONG_JOB runs far longer
QUEUE_WAIT_S = 1.0  # past the queue of one, a request waits this long for a place before its 429
LONG_SIDE = 512
LONG_JOB = {"model": "sdxl-base", "prompt": "a long job", "size": f"{LONG_SIDE}x{LONG_SIDE}", "n": 4, "steps": 150}


@pytest.fixture(scope="module")
def models_dir(tiny_models, tmp_path_factory):
    """The tiny models, with sdxl-base allowed up to LONG_SIDE so that LONG_JOB is long."""
    target = tmp_path_factory.mktemp("rest-models")
    for model_id in MODELS:
        shutil.copytree(tiny_models(model_id) / model_id, target / model_id)
    override = target / "sdxl-base" / "studio.toml"
    tables = tomllib.loads(override.read_text())
    tables["limits"].update(max_side=LONG_SIDE, max_pixels=LONG_SIDE * LONG_SIDE)
    override.write_text(toml_text(tables))
    return target


def toml_text(tables: dict) -> str:
    """Top-level keys, then one-level tables; values as JSON, which TOML reads alike for these types."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in tables.items() if not isinstance(value, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines += [f"[{name}]", *(f"{key} = {json.dumps(value)}" for key, value in table.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def settings(models_dir, tmp_path_factory) -> Settings:
    """The server's settings: the app and its slots read job_timeout_s at every check, so a test may change it."""
    return Settings(
        host="127.0.0.1",
        devices=["cpu", "cpu"],
        models_dir=models_dir,
        max_queue=1,
        queue_wait_s=QUEUE_WAIT_S,
        job_timeout_s=JOB_TIMEOUT_S,
        api_key=API_KEY,
        ui_auth=[UI_LOGIN],
        outputs_dir=tmp_path_factory.mktemp("outputs"),
    )


@pytest.fixture(scope="module")
def server(settings):
    with serve(settings) as base_url:
        yield base_url


@pytest.fixture
def client(server) -> openai.OpenAI:
    # No retries: a 429 or 503 must reach the test, not be retried away by the SDK.
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as session:
        yield session


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def slots_idle(http) -> bool:
    status = http.get("/health").json()
    return all(not slot["busy"] for slot in status["slots"]) and status["queue_depth"] == 0


def open_request(base_url: str, body: dict) -> HTTPConnection:
    """Send a generation request and leave it waiting; ``close()`` is a client walking away."""
    url = urlsplit(base_url)
    connection = HTTPConnection(url.hostname, url.port, timeout=120)
    connection.request(
        "POST", "/v1/images/generations", body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    return connection


# ---------------------------------------------------------------- generating


def test_sdk_generates_n_images_with_seeds_and_metadata(client):
    response = client.images.generate(
        model="sdxl-base", prompt="a red fox", n=2, size="64x64", response_format="b64_json",
        extra_body={"seed": 7, "steps": 2},
    )
    assert response.size == "64x64" and response.output_format == "png"
    assert [image.seed for image in response.data] == [7, 8]  # the extras come back as extra attributes
    for image, seed in zip(response.data, (7, 8)):
        assert image.url is None and image.revised_prompt == "a red fox"
        png = base64.b64decode(image.b64_json)
        assert decode(image.b64_json).size == (64, 64)
        params = pngmeta.read(png)
        assert (params["model"], params["seed"], params["steps"], params["num_images"]) == ("sdxl-base", seed, 2, 1)
    first, second = (decode(image.b64_json).tobytes() for image in response.data)
    assert first != second  # two seeds, two different images


def test_data_url_and_model_defaults(http, models_dir):
    response = http.post("/v1/images/generations",
                         json={"model": "sdxl-turbo", "prompt": "a boat", "size": "auto", "response_format": "url"})
    assert response.status_code == 200, response.text
    body = response.json()
    defaults = load_catalog(models_dir).get("sdxl-turbo").defaults  # what the server's catalog says
    (image,) = body["data"]
    assert set(image) == {"url", "seed", "revised_prompt"}
    prefix = "data:image/png;base64,"
    assert image["url"].startswith(prefix)
    width, height = decode(image["url"][len(prefix):]).size
    assert body["size"] == f"{width}x{height}" and body["model"] == "sdxl-turbo"
    assert (width, height) == (defaults.width, defaults.height) != (512, 512)  # the tiny default, not the hub's
    assert isinstance(image["seed"], int)


def data_url_image(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return decode(url[len(prefix):])


def test_unset_response_format_answers_url_and_b64_json(client):
    """OpenAI clients differ in the field they read; with no response_format each image has both."""
    response = client.images.generate(model="sdxl-turbo", prompt="a fox", size="64x64", extra_body={"seed": 5})
    (image,) = response.data
    assert decode(image.b64_json).tobytes() == data_url_image(image.url).tobytes()
    assert pngmeta.read(base64.b64decode(image.b64_json))["seed"] == 5


def test_librechat_reads_b64_json_of_a_body_without_response_format(http):
    # LibreChat's image tool (api/app/clients/tools/structured/OpenAIImageTools.js) sends this body (its model
    # is fixed to gpt-image-1 there; a server id here) and reads only data[0].b64_json.
    body = {"model": "sdxl-turbo", "prompt": "a red fox", "n": 1, "background": "auto", "output_format": "png",
            "quality": "auto", "size": "64x64"}
    response = http.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert decode(response.json()["data"][0]["b64_json"]).size == (64, 64)


def test_open_webui_openai_engine(server):
    # Open WebUI's engine "openai" (backend/open_webui/routers/images.py, image_generations): Bearer key, this
    # body (response_format b64_json unless its model matches IMAGE_URL_RESPONSE_MODELS_REGEX_PATTERN), then
    # each image's `url` when there is one, else `b64_json`, read by get_image_data.
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    data = {"model": "sdxl-turbo", "prompt": "a red fox", "n": 1, "size": "64x64", "response_format": "b64_json"}
    response = httpx.post(f"{server}/v1/images/generations", json=data, headers=headers, timeout=120)
    response.raise_for_status()
    for image in response.json()["data"]:
        encoded = image.get("url") or image["b64_json"]
        encoded = encoded.split(",", 1)[1] if "," in encoded else encoded
        assert decode(encoded).size == (64, 64)


def test_langchain_dalle_wrapper_reads_the_data_url(server):
    from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper

    # run() sends prompt, n, size and model, and returns the images' `url`s joined by newlines.
    wrapper = DallEAPIWrapper(model="sdxl-turbo", size="64x64", api_key=API_KEY, base_url=f"{server}/v1")
    assert data_url_image(wrapper.run("a lighthouse")).size == (64, 64)


def test_litellm_image_generation(server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    import litellm

    response = litellm.image_generation(
        model="openai/sdxl-turbo", prompt="a kite", size="64x64", api_base=f"{server}/v1", api_key=API_KEY,
    )
    (image,) = response.data
    assert data_url_image(image.url).tobytes() == decode(image.b64_json).tobytes()


def test_sampler_extra_and_each_models_samplers(client):
    samplers = {model.id: model.model_extra["samplers"] for model in client.models.list()}
    assert "DPM++ 2M Karras" in samplers["sdxl-base"] and samplers["flux-schnell"] == ["Euler", "Euler Karras", "Euler a"]
    response = client.images.generate(model="sdxl-base", prompt="a fox", size="64x64",
                                      extra_body={"seed": 5, "steps": 2, "sampler": "dpm++ 2m karras"})
    params = pngmeta.read(base64.b64decode(response.data[0].b64_json))
    assert params["sampler"] == "DPM++ 2M Karras"
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in params["parameters"]


@pytest.mark.parametrize("output_format,pil_format", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp(http, output_format, pil_format):
    common = {"model": "sdxl-turbo", "prompt": "a kite", "size": "64x64", "seed": 3, "output_format": output_format}
    sizes = {}
    for compression in (10, 95):
        response = http.post("/v1/images/generations", json={**common, "output_compression": compression})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["output_format"] == output_format
        image = decode(body["data"][0]["b64_json"])
        assert image.format == pil_format and image.size == (64, 64)
        params = pngmeta.read(base64.b64decode(body["data"][0]["b64_json"]))
        assert (params["prompt"], params["seed"], params["model"]) == ("a kite", 3, "sdxl-turbo")
        sizes[compression] = len(body["data"][0]["b64_json"])
    assert sizes[10] < sizes[95]  # output_compression really is the encoder's quality


def test_num_images_alias_and_width_height_extras(http):
    response = http.post("/v1/images/generations", json={
        "model": "sdxl-base", "prompt": "two", "num_images": 2, "width": 48, "height": 32, "steps": 1, "seed": 1,
        "negative_prompt": "blur", "guidance": 3.0,
    })
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2 and all(decode(item["b64_json"]).size == (48, 32) for item in data)
    assert pngmeta.read(base64.b64decode(data[0]["b64_json"]))["negative_prompt"] == "blur"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "body,status,param,words",
    [
        ({"prompt": "x", "size": "64"}, 400, "size", "WIDTHxHEIGHT"),
        ({"prompt": "x", "model": "sdxl-base", "size": "65x64"}, 400, "size", "multiple of 8"),
        ({"prompt": "x", "model": "sdxl-base", "size": "1024x1024"}, 400, "size", f"32..{LONG_SIDE}"),
        ({"prompt": "x", "model": "sdxl-base", "n": 5}, 400, "n", "1..4"),
        ({"prompt": "x", "model": "sdxl-base", "n": 0}, 400, "n", "1..4"),
        ({"prompt": "x", "model": "sdxl-base", "steps": 0}, 400, "steps", "1..150"),
        ({"prompt": "x", "model": "sdxl-turbo", "steps": 9}, 400, "steps", "1..4"),
        ({"prompt": "x", "model": "sdxl-turbo", "negative_prompt": "blur"}, 400, "negative_prompt", "sdxl-turbo"),
        ({"prompt": "x", "model": "sdxl-base", "guidance": 31}, 400, "guidance", "1..20"),
        ({"prompt": "x", "model": "sdxl-base", "seed": -1}, 400, "seed", "0..4294967295"),
        ({"prompt": "x", "output_compression": 101}, 400, "output_compression", "0..100"),
        ({"prompt": "x", "response_format": "png"}, 400, "response_format", "b64_json"),
        ({"prompt": "x", "output_format": "gif"}, 400, "output_format", "webp"),
        ({"prompt": "x", "stream": True, "partial_images": 4}, 400, "partial_images", "0..3"),
        ({"prompt": "x", "n": 2, "num_images": 3}, 400, "num_images", "n=2"),
        ({"prompt": "x", "size": "64x64", "width": 32}, 400, "size", "width=32"),
        ({"prompt": "x", "colour": "red"}, 400, "colour", "unknown field"),
        ({"prompt": ""}, 400, "prompt", "at least 1"),
        ({"model": "sdxl-base"}, 400, "prompt", "required"),
        ({"prompt": "x", "model": "dall-e-3"}, 404, "model", "sdxl-base"),
        ({"prompt": "x", "model": "sdxl-turbo", "sampler": "Euler b"}, 400, "sampler", "Euler a, DPM++ 2M"),
    ],
)
def test_bad_requests_get_openai_errors(http, body, status, param, words):
    error = assert_openai_error(http.post("/v1/images/generations", json=body), status, param=param)
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body,param,words",
    [
        ({"prompt": "x", "n": "2"}, "n", "valid integer"),
        ({"prompt": "x", "n": True}, "n", "valid integer"),
        ({"prompt": "x", "seed": "42"}, "seed", "valid integer"),
        ({"prompt": "x", "guidance": "7"}, "guidance", "valid number"),
        ({"prompt": "x", "stream": 0}, "stream", "valid boolean"),
        ({"prompt": "x", "size": " 64x64"}, "size", "no spaces"),
        ({"prompt": "x", "size": "64x64 "}, "size", "no spaces"),
        ({"prompt": "x", "size": "\u0666\u0664x\u0666\u0664"}, "size", "WIDTHxHEIGHT"),  # Arabic-Indic digits
        ({"prompt": "x", "model": "sdxl-base", "size": "0x0"}, "size", "size: 0x0"),
        ({"prompt": "a\u0000b"}, "prompt", "U+0000"),
        ({"prompt": "x", "model": "sdxl-base", "negative_prompt": "\u001b[31m"}, "negative_prompt", "U+001B"),
    ],
)
def test_strict_types_and_clean_text(http, body, param, words):
    error = assert_openai_error(http.post("/v1/images/generations", json=body), 400, param=param)
    assert words in error["message"] and error["message"].startswith(f"{param}: "), error


def test_errors_quote_at_most_a_short_piece_of_what_was_sent(http):
    huge = "m" * 1_000_000
    missing = http.post("/v1/images/generations", json={"prompt": "x", "model": huge})
    assert_openai_error(missing, 404, code="model_not_found")
    unknown = http.post("/v1/images/generations", json={"prompt": "x", huge: 1})
    assert_openai_error(unknown, 400)
    assert len(missing.content) < 2000 and len(unknown.content) < 2000
    assert len(http.get(f"/v1/models/{'m' * 5000}").content) < 2000


def test_a_known_route_with_a_wrong_method_is_405(http):
    for method, path in (("POST", "/v1/models/sdxl-base"), ("DELETE", "/v1/models"), ("POST", "/health"),
                         ("POST", "/metrics"), ("PUT", "/v1/images/generations")):
        response = http.request(method, path)
        assert_openai_error(response, 405)
        assert "GET" in response.headers.get("Allow", "GET") or "POST" in response.headers["Allow"]


def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model="sdxl-base", prompt="x", n=5)
    assert bad.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(model="no-such-model", prompt="x")
    assert missing.value.body["code"] == "model_not_found"


def test_invalid_json_and_unknown_routes(http):
    response = http.post("/v1/images/generations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_openai_error(response, 400)
    assert_openai_error(http.get("/v1/audio/speech"), 404, code="not_found")
    assert_openai_error(http.get("/v1/images/generations"), 405)
    assert_openai_error(http.get("/v1/images/variations"), 405)  # served, for POST


def test_api_key_guards_v1_only(server):
    body = {"model": "sdxl-turbo", "prompt": "x"}
    with httpx.Client(base_url=server, timeout=30) as anonymous:
        assert_openai_error(anonymous.post("/v1/images/generations", json=body), 401, code="invalid_api_key")
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert_openai_error(wrong, 401)
        assert wrong.headers["WWW-Authenticate"] == "Bearer"
        assert anonymous.get("/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()


def test_ui_auth_guards_the_web_ui_and_the_gradio_api(server):
    from gradio_client import Client

    with httpx.Client(base_url=server, timeout=30) as anonymous:
        assert anonymous.get("/config").status_code == 401  # what the page needs before it can show anything
        assert anonymous.post("/login", data={"username": UI_LOGIN[0], "password": "wrong"}).status_code == 400
    with pytest.raises(ValueError, match="credentials were not provided"):
        Client(server + "/", verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(server + "/", auth=(UI_LOGIN[0], "wrong"), verbose=False)
    models = Client(server + "/", auth=UI_LOGIN, verbose=False).predict(api_name="/models")
    assert len(models) == 15


# ---------------------------------------------------------------- models, health, metrics, docs


def test_models_lists_all_15_with_capabilities(client):
    models = {model.id: model for model in client.models.list().data}
    assert set(models) == {spec.id for spec in load_catalog(None)} and len(models) == 15
    turbo = models["sdxl-turbo"]
    assert turbo.object == "model" and turbo.owned_by == "stabilityai"
    assert turbo.negative_prompt is False and turbo.cfg is False and turbo.max_n == 4
    assert turbo.limits["max_steps"] == 4 and "64x64" in turbo.sizes  # the tiny override, as the server sees it
    assert models["hunyuan-dit"].limits["allowed_sizes"]
    assert client.models.retrieve("pixart").id == "pixart-sigma"  # aliases resolve


def test_health_reports_slots(server):
    response = httpx.get(f"{server}/health", timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert [slot["device"] for slot in body["slots"]] == ["cpu", "cpu"]
    assert all(slot["alive"] for slot in body["slots"])
    # Each slot's memory plan: the resident model's (a CPU loads whole), none without a model.
    assert all(slot["plan"] == ("full" if slot["model"] else None) for slot in body["slots"])


def test_docs_and_ui_share_the_app(server):
    assert "swagger" in httpx.get(f"{server}/docs", timeout=30).text.lower()
    schema = httpx.get(f"{server}/openapi.json", timeout=30).json()
    generations = schema["paths"]["/v1/images/generations"]["post"]
    assert {"200", "400", "401", "404", "429", "503", "504"} <= set(generations["responses"])
    assert "422" not in generations["responses"]
    assert "ErrorResponse" in json.dumps(generations["responses"]["429"])
    assert {"prompt", "n", "size", "response_format", "seed", "steps"} <= set(
        schema["components"]["schemas"]["ImageGenerationRequest"]["properties"]
    )
    page = httpx.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and "gradio" in page.text.lower()


# ---------------------------------------------------------------- queue, disconnect, timeout, failure


def busy_slots(http) -> list[dict]:
    return [slot for slot in http.get("/health").json()["slots"] if slot["busy"]]


def test_queue_full_is_429_and_disconnect_cancels(server, http, client):
    """Fill both slots and the queue of one with long jobs; the next is refused; hanging up frees everything."""
    wait_until(lambda: slots_idle(http), 60, "idle slots before the test")
    cancelled_before = metric(http, "studio_jobs_total", model="sdxl-base", outcome="cancelled")
    connections = []
    try:
        for _ in range(3):  # two run, one waits
            connections.append(open_request(server, LONG_JOB))
        wait_until(lambda: len(busy_slots(http)) == 2 and http.get("/health").json()["queue_depth"] == 1,
                 60, "two busy slots and one queued job")

        refused = http.post("/v1/images/generations", json={"model": "sdxl-turbo", "prompt": "one more"})
        assert_openai_error(refused, 429, code="queue_full")  # after its wait for a place
        assert "1 more wait" not in refused.json()["error"]["message"]  # its place in the waiting room is gone
        assert int(refused.headers["Retry-After"]) > 0
        with pytest.raises(openai.RateLimitError):
            client.images.generate(model="sdxl-turbo", prompt="and another")
    finally:
        for connection in connections:
            connection.close()  # the client walks away: the server must cancel its job
    wait_until(lambda: slots_idle(http), 15, "the slots to go idle after the clients hung up")

    assert metric(http, "studio_jobs_total", model="sdxl-base", outcome="cancelled") == cancelled_before + 3
    assert metric(http, "studio_jobs_total", model="sdxl-turbo", outcome="rejected") >= 2
    ok = http.post("/v1/images/generations", json={"model": "sdxl-turbo", "prompt": "after", "size": "64x64"})
    assert ok.status_code == 200, ok.text


def test_sdk_retries_that_honour_retry_after_are_all_served(server, http):
    """Six callers at once against two slots, a queue of one and a waiting room of one: two are
    refused at once and told when a place frees; the SDK's own retries, waiting as told, are all served."""
    wait_until(lambda: slots_idle(http), 60, "idle slots before the test")
    rejected_before = metric(http, "studio_jobs_total", model="sdxl-base", outcome="rejected")
    retrying = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=8, timeout=120)

    def generate(seed: int):
        return retrying.images.generate(model="sdxl-base", prompt=f"a lighthouse {seed}", size="256x256",
                                        extra_body={"steps": 8, "seed": seed})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(generate, range(6)))
    assert all(result.data and result.data[0].b64_json for result in results)
    assert metric(http, "studio_jobs_total", model="sdxl-base", outcome="rejected") - rejected_before >= 2


def test_job_past_the_timeout_is_504(http, settings, monkeypatch):
    wait_until(lambda: slots_idle(http), 60, "idle slots before the test")
    monkeypatch.setattr(settings, "job_timeout_s", SHORT_TIMEOUT_S)
    started = time.monotonic()
    response = http.post("/v1/images/generations", json=LONG_JOB)
    assert_openai_error(response, 504, code="timeout")
    assert time.monotonic() - started < SHORT_TIMEOUT_S + 15
    wait_until(lambda: slots_idle(http), 15, "the slot to go idle after the timeout")


def test_worker_death_is_503_and_the_slot_restarts(server, http):
    wait_until(lambda: slots_idle(http), 60, "idle slots before the test")
    connection = open_request(server, LONG_JOB)
    try:
        (slot,) = wait_until(lambda: busy_slots(http), 30, "the long job to start")
        os.kill(slot["pid"], signal.SIGKILL)  # a worker of this test's own server
        response = connection.getresponse()
        error = json.loads(response.read())["error"]
    finally:
        connection.close()
    assert response.status == 503 and error["code"] == "worker_failed", error
    assert "Traceback" not in error["message"]
    wait_until(lambda: all(s["alive"] for s in http.get("/health").json()["slots"]), 120, "the slot to restart")
    assert http.get("/health").json()["status"] == "ok"


def test_metrics_count_jobs_and_read_slots(http):
    ok_before = metric(http, "studio_jobs_total", model="sdxl-turbo", outcome="ok")
    response = http.post("/v1/images/generations", json={"model": "sdxl-turbo", "prompt": "count me", "size": "64x64"})
    assert response.status_code == 200, response.text
    scrape = http.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    assert metric(http, "studio_jobs_total", model="sdxl-turbo", outcome="ok") == ok_before + 1
    assert metric(http, "studio_job_duration_seconds_count", model="sdxl-turbo") >= 1
    assert metric(http, "studio_jobs_total", model="sdxl-base", outcome="timeout") >= 1
    assert metric(http, "studio_jobs_total", model="sdxl-base", outcome="worker_failed") >= 1
    assert metric(http, "studio_queue_depth") == 0
    for slot in ("0", "1"):
        assert metric(http, "studio_slot_busy", slot=slot, device="cpu") == 0
        assert metric(http, "studio_slot_alive", slot=slot, device="cpu") == 1
    assert sum(metric(http, "studio_model_loads_total", slot=slot) for slot in ("0", "1")) >= 2


# ---------------------------------------------------------------- the entry point


def test_app_py_serves_ui_rest_and_docs_and_exits_cleanly(models_dir, tmp_path):
    """``python app.py`` as users and Spaces run it: flags and STUDIO_* variables, one port for everything."""
    env = {"STUDIO_API_KEY": "env-key", "STUDIO_OUTPUTS_DIR": str(tmp_path / "outputs")}
    with run_app(["--devices", "cpu", "--models-dir", str(models_dir), "--max-queue", "4"], env=env) as app:
        models = httpx.get(f"{app.base_url}/v1/models", headers={"Authorization": "Bearer env-key"}, timeout=30)
        assert models.status_code == 200 and len(models.json()["data"]) == 15
        assert httpx.get(f"{app.base_url}/v1/models", timeout=30).status_code == 401
        health = httpx.get(f"{app.base_url}/health", timeout=30).json()
        assert [slot["device"] for slot in health["slots"]] == ["cpu"] and health["max_queue"] == 4
        assert httpx.get(f"{app.base_url}/docs", timeout=30).status_code == 200
        assert "gradio" in httpx.get(f"{app.base_url}/", timeout=30).text.lower()
        # An open browser tab: its session's heartbeat stream stays open until the server stops.
        connected = threading.Event()

        def keep_tab_open() -> str:
            with httpx.stream("GET", f"{app.base_url}/gradio_api/heartbeat/tab-1", timeout=60) as stream:
                received = ""
                for chunk in stream.iter_text():
                    received += chunk
                    connected.set()
                return received

        tab = ThreadPoolExecutor(1)
        heartbeat = tab.submit(keep_tab_open)
        assert connected.wait(30), "the heartbeat stream did not open"
    assert app.process.returncode == 0, app.output()[-3000:]
    assert "Traceback" not in app.output()
    # The tab did not hold the stop for uvicorn's whole grace period: its stream ended at once.
    assert "graceful shutdown exceeded" not in app.output() and "ALIVE" in heartbeat.result(30)
    tab.shutdown()


def test_the_server_process_never_imports_torch(tmp_path):
    """Building the whole app (REST, metrics, UI) leaves torch to the workers: CUDA must not start in the parent."""
    code = (
        "import sys\n"
        "from studio.config import Settings\n"
        "from studio.server import create_app\n"
        f"create_app(Settings(devices=['cpu'], outputs_dir={str(tmp_path)!r}))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'studio.engine') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
