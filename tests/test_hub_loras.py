"""Hub LoRAs (``owner/repo`` or ``owner/repo/file.safetensors``) through the download phase: a local hub
serves the tiny SDXL LoRA; the studio (one CPU slot, the tiny SDXL from a models folder) fetches each file
once into its empty Hugging Face cache, however many jobs name it, and then applies it like a local one."""

from __future__ import annotations

import base64
import io
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hubserver import HubFile, HubRepo, serve_hub, use_hub
from live import serve_app
from PIL import Image

from studio.config import Settings

INK, STYLES, GATED = "tester/ink-lora", "tester/styles", "tester/gated-lora"
BODY = {"model": "sdxl-base", "prompt": "a red fox", "size": "64x64", "steps": 2, "response_format": "b64_json"}


@pytest.fixture(scope="module")
def studio(lora_models, tmp_path_factory):
    """``(base_url, hub)``; the LoRA folder holds the same file as ``ink`` (to compare against)."""
    from studio.server import create_app

    lora = (lora_models / "loras" / "tiny-sdxl-kohya.safetensors").read_bytes()
    other = (lora_models / "loras" / "tiny-sdxl-diffusers.safetensors").read_bytes()
    repos = {INK: HubRepo({"pytorch_lora_weights.safetensors": HubFile(lora, lfs=True), "README.md": HubFile(b"#", False)}),
             STYLES: HubRepo({"a.safetensors": HubFile(other, lfs=True), "b/b.safetensors": HubFile(lora, lfs=True)}),
             GATED: HubRepo({"pytorch_lora_weights.safetensors": HubFile(lora, lfs=True)})}
    lora_dir = tmp_path_factory.mktemp("loras")
    shutil.copy(lora_models / "loras" / "tiny-sdxl-kohya.safetensors", lora_dir / "ink.safetensors")
    with serve_hub(repos) as hub, pytest.MonkeyPatch.context() as monkeypatch:
        hub.gated.add(GATED)
        use_hub(monkeypatch, hub, tmp_path_factory.mktemp("hf"))
        settings = Settings(host="127.0.0.1", devices=["cpu"], models_dir=lora_models, lora_dir=lora_dir,
                            outputs_dir=tmp_path_factory.mktemp("outputs"))
        with serve_app(create_app(settings)) as base_url:
            yield base_url, hub


@pytest.fixture
def http(studio):
    with httpx.Client(base_url=studio[0], timeout=180) as session:
        yield session


def pixels(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text[:300]
    with Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))) as image:
        return image.convert("RGB").tobytes()


def test_a_hub_lora_downloads_once_for_every_job_and_applies_like_a_local_one(studio, http):
    _, hub = studio
    local = pixels(http.post("/v1/images/generations", json=BODY | {"seed": 1, "loras": ["ink:0.7"]}))
    with ThreadPoolExecutor(3) as pool:  # three jobs at once name the file the cache does not have
        answers = list(pool.map(lambda seed: http.post("/v1/images/generations", json=BODY | {
            "seed": seed, "loras": [{"name": INK, "scale": 0.7}]}), (1, 2, 3)))
    assert pixels(answers[0]) == local
    assert len({pixels(answer) for answer in answers}) == 3
    assert hub.downloads(INK) == ["pytorch_lora_weights.safetensors"]  # one download for the three
    # Cached now: a named file of a repo too, and the prompt tag.
    tagged = http.post("/v1/images/generations", json=BODY | {"seed": 1, "prompt": f"a red fox <lora:{STYLES}/b/b.safetensors:0.7>"})
    assert pixels(tagged) == local
    assert http.post("/v1/images/generations", json=BODY | {"seed": 1, "loras": [f"{INK}:0.7"]}).status_code == 200
    assert hub.downloads(INK) == ["pytorch_lora_weights.safetensors"]


@pytest.mark.parametrize("name, status, says", [
    (STYLES, 400, "holds several LoRA files; name one: tester/styles/a.safetensors, tester/styles/b/b.safetensors"),
    ("tester/nothing-here", 400, "tester/nothing-here is not on the hub"),
    (GATED, 503, "is gated on the hub"),
])
def test_hub_lora_failures_name_loras(http, name, status, says):
    response = http.post("/v1/images/generations", json=BODY | {"loras": [name]})
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == "loras" and says in error["message"], error


def test_the_cli_downloads_a_hub_lora_first(studio, lora_models, tmp_path):
    from studio import cli, pngmeta

    _, hub = studio
    out = tmp_path / "fox.png"
    assert cli.main(["generate", "--models-dir", str(lora_models), "--lora-dir", str(tmp_path), "--model", "sdxl-base",
                     "--prompt", "a red fox", "--size", "64x64", "--steps", "2", "--seed", "1",
                     "--lora", f"{STYLES}/a.safetensors:0.5", "-o", str(out)]) == 0
    assert hub.downloads(STYLES).count("a.safetensors") == 1
    assert pngmeta.read(out)["loras"] == [{"name": f"{STYLES}/a.safetensors", "scale": 0.5}]


def test_a_job_waiting_for_its_hub_lora_counts_toward_its_owner_s_queue_limit(lora_models, tmp_path, monkeypatch):
    """Waiting for a hub LoRA is waiting in the download phase: --max-queue-per-user counts it (the 429 names
    the owner's count), and another owner passes."""
    from studio.catalog import load_catalog
    from studio.downloads import DownloadGate
    from studio.errors import QueueFull
    from studio.schemas import GenerationRequest
    from studio.slots import SlotManager

    lora = (lora_models / "loras" / "tiny-sdxl-kohya.safetensors").read_bytes()
    with serve_hub({INK: HubRepo({"pytorch_lora_weights.safetensors": HubFile(lora, lfs=True)})}) as hub:
        use_hub(monkeypatch, hub, tmp_path / "hf", environment=False)
        hub.throttle_bps = len(lora) / 60  # outlasts the test
        catalog = load_catalog(lora_models, lora_dir=tmp_path)
        gate = DownloadGate(SlotManager(Settings(devices=["cpu"]), catalog), catalog, offline=False, max_waiting=5,
                            max_waiting_per_owner=1)
        spec, request = catalog.resolve(GenerationRequest(model="sdxl-base", prompt="a red fox", loras=[INK]))
        try:
            gate.submit(spec, request, "ann")
            with pytest.raises(QueueFull, match=r"ann has 1 job waiting for model downloads "
                                                r"\(--max-queue-per-user 1\)") as caught:
                gate.submit(spec, request, "ann")
            assert caught.value.status == 429
            gate.submit(spec, request, "bob")
            assert [(o.owner, o.downloading) for o in gate.status().owners] == [("ann", 1), ("bob", 1)]
        finally:
            gate.shutdown()
