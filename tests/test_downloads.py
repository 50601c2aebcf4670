"""The server's download phase, end to end: a studio with an empty cache and a local hub.

One server (two CPU slots, a 2 s job timeout) and one hub serving tiny SDXL Turbo and PixArt-Sigma
under their real repo ids; the workers load them from the Hugging Face cache that the server's
own download phase fills, never from a models folder.
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest
from gradio_client import Client
from hubserver import hub_repos, serve_hub, use_hub
from live import serve_app

from studio.config import Settings

SERVED = ("sdxl-turbo", "pixart-sigma")
TURBO_REPO, PIXART_REPO = "stabilityai/sdxl-turbo", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
JOB_TIMEOUT_S = 4.0  # generous for a tiny job on a loaded machine; the download takes 2.5 times as long
TURBO = {"model": "sdxl-turbo", "prompt": "a red fox", "size": "512x512", "response_format": "b64_json"}
PIXART = {"model": "pixart-sigma", "prompt": "a red fox", "size": "256x256", "steps": 1, "response_format": "b64_json"}


@pytest.fixture(scope="module")
def studio(tiny_models, tmp_path_factory):
    """``(base_url, hub, app)``: the studio, and the hub it downloads from."""
    from studio.server import create_app

    repos = hub_repos(tiny_models(*SERVED), SERVED)
    with serve_hub(repos) as hub, pytest.MonkeyPatch.context() as monkeypatch:
        use_hub(monkeypatch, hub, tmp_path_factory.mktemp("hf"))
        settings = Settings(host="127.0.0.1", devices=["cpu", "cpu"], job_timeout_s=JOB_TIMEOUT_S,
                            outputs_dir=tmp_path_factory.mktemp("outputs"))
        app = create_app(settings)
        with serve_app(app) as base_url:
            yield base_url, hub, app


@pytest.fixture
def http(studio):
    with httpx.Client(base_url=studio[0], timeout=180) as session:
        yield session


def generate(http, body: dict) -> httpx.Response:
    return http.post("/v1/images/generations", json=body)


def test_first_requests_wait_for_one_download_longer_than_the_job_timeout(studio, http):
    base_url, hub, _ = studio
    size = sum(len(f.data) for f in hub.repos[PIXART_REPO].files.values())
    hub.throttle_bps = size / 10  # about 10 s: 2.5 times the job timeout
    answers, seen, ui_progress, metrics = [], [], [], []

    def rest(stream: bool):
        answers.append(generate(http, {**PIXART, "stream": stream}))

    def ui():
        client = Client(base_url + "/", verbose=False)
        job = client.submit("a red fox", "pixart-sigma", None, 256, 256, 1, api_name="/generate")
        while not job.done():
            update = job.status().progress_data
            if update:
                ui_progress.extend(unit.desc for unit in update if unit.desc)
            time.sleep(0.1)
        answers.append(job.result())

    threads = [threading.Thread(target=rest, args=(stream,)) for stream in (False, True)]
    threads.append(threading.Thread(target=ui))
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        downloads = http.get("/health").json()["downloads"]
        seen += [d["bytes_done"] for d in downloads if d["model"] == "pixart-sigma"]
        if downloads and not metrics:
            metrics.append(http.get("/metrics").text)
        time.sleep(0.3)

    rest_answers = [a for a in answers if isinstance(a, httpx.Response)]
    assert [a.status_code for a in rest_answers] == [200, 200], [a.text[:300] for a in rest_answers]
    streamed = next(a.text for a in rest_answers if a.headers["content-type"].startswith("text/event-stream"))
    assert "event: image_generation.completed" in streamed and "error" not in streamed
    files, params = next(a for a in answers if isinstance(a, tuple))
    assert len(files) == 1 and params["model"] == "pixart-sigma"
    # one download for three jobs on two slots: each file body left the hub once
    fetched = hub.downloads(PIXART_REPO)
    assert fetched and len(fetched) == len(set(fetched))
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > seen[0]  # growing bytes in /health
    assert any(text.startswith("Downloading PixArt-Sigma: ") and " of 447.8 kB" in text for text in ui_progress)
    assert 'studio_download_bytes_done{model="pixart-sigma"}' in metrics[0]
    assert not http.get("/health").json()["downloads"]


def test_models_say_what_is_on_disk_and_what_downloads(studio, http):
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert models["pixart-sigma"]["on_disk"] is True and models["pixart-sigma"]["download_bytes"] == 0
    turbo_size = sum(len(f.data) for f in studio[1].repos[TURBO_REPO].files.values())
    assert models["sdxl-turbo"]["on_disk"] is False
    assert 1_000_000 < models["sdxl-turbo"]["download_bytes"] < turbo_size
    assert models["flux-schnell"]["on_disk"] is False and models["flux-schnell"]["download_bytes"] is None
    assert studio[2].state.backend.models_on_disk() == [m for m in models if models[m]["on_disk"]]  # the banner's
    # Memory from the files' own sizes: on disk, the hub's listing before a download, else the catalog's estimate.
    memory = {model_id: m["memory_gb"] for model_id, m in models.items()}
    assert memory["pixart-sigma"]["source"] == "files on disk" and memory["pixart-sigma"]["weights"] < 0.1
    assert memory["sdxl-turbo"]["source"] == "hub file sizes" and memory["sdxl-turbo"]["weights"] < 0.1
    assert memory["flux-schnell"]["source"] == "catalog estimate" and memory["flux-schnell"]["weights"] == 33.7
    assert memory["flux-schnell"]["smallest"] < memory["flux-schnell"]["plans"]["fp8"] < memory["flux-schnell"]["studio"]
    listing = Client(studio[0] + "/", verbose=False).predict(api_name="/models")  # the Gradio API says the same
    assert {m["id"]: (m["on_disk"], m["download_bytes"]) for m in listing} == {
        model_id: (m["on_disk"], m["download_bytes"]) for model_id, m in models.items()
    }


def test_gated_and_missing_repos_fail_plainly_while_other_models_work(studio, http):
    hub = studio[1]
    hub.throttle_bps = None
    hub.gated.add(TURBO_REPO)
    try:
        gated = generate(http, TURBO)
    finally:
        hub.gated.discard(TURBO_REPO)
    assert gated.status_code == 503, gated.text
    message = gated.json()["error"]["message"]
    assert f"open https://huggingface.co/{TURBO_REPO}" in message and "accept its license" in message
    assert "HF_TOKEN" in message and "Traceback" not in message

    missing = generate(http, {**PIXART, "model": "flux-schnell"})
    assert missing.status_code == 503
    assert "black-forest-labs/FLUX.1-schnell does not exist on the hub" in missing.json()["error"]["message"]

    assert generate(http, PIXART).status_code == 200  # the other model goes on working
    health = http.get("/health").json()
    assert health["status"] == "degraded"
    errors = {entry["model"]: entry["error"] for entry in health["model_errors"]}
    assert "gated model" in errors["sdxl-turbo"] and "does not exist" in errors["flux-schnell"]


def test_a_client_that_leaves_cancels_its_job_not_the_download(studio, http):
    hub = studio[1]
    size = sum(len(f.data) for f in hub.repos[TURBO_REPO].files.values())
    hub.throttle_bps = size / 4
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(studio[0] + "/v1/images/generations", json=TURBO, timeout=1.0)
    downloads = http.get("/health").json()["downloads"]
    assert [d["model"] for d in downloads] == ["sdxl-turbo"]
    deadline = time.monotonic() + 60
    while http.get("/health").json()["downloads"] and time.monotonic() < deadline:
        time.sleep(0.2)
    hub.throttle_bps = None
    fetched = len(hub.downloads(TURBO_REPO))
    assert generate(http, TURBO).status_code == 200
    assert len(hub.downloads(TURBO_REPO)) == fetched  # the finished download served this job
    assert "sdxl-turbo" not in {e["model"] for e in http.get("/health").json()["model_errors"]}


def test_offline_refuses_a_model_not_on_disk_with_the_pull_command(studio, http, monkeypatch):
    monkeypatch.setattr(studio[2].state.backend, "offline", True)
    refused = generate(http, {**TURBO, "model": "sdxl-base"})
    assert refused.status_code == 503
    message = refused.json()["error"]["message"]
    assert "is not on disk and the studio is offline" in message and "python -m studio pull sdxl-base" in message
    assert generate(http, PIXART).status_code == 200  # on disk: offline is no obstacle


def test_past_the_queue_limit_no_more_jobs_wait_for_downloads(tiny_models, tmp_path, monkeypatch):
    """Waiting for a download is waiting in the queue: --max-queue bounds it, and the refusal's
    Retry-After is the download's time left."""
    from studio.catalog import load_catalog
    from studio.downloads import DownloadGate
    from studio.errors import QueueFull
    from studio.schemas import GenerationRequest
    from studio.slots import SlotManager

    with serve_hub(hub_repos(tiny_models("sdxl-turbo"), ["sdxl-turbo"])) as hub:
        use_hub(monkeypatch, hub, tmp_path / "hf", environment=False)
        hub.throttle_bps = sum(len(f.data) for f in hub.repos[TURBO_REPO].files.values()) / 60  # outlasts the test
        catalog = load_catalog()
        gate = DownloadGate(SlotManager(Settings(devices=["cpu"]), catalog), catalog, offline=False, max_waiting=2)
        spec, request = catalog.resolve(GenerationRequest(model="sdxl-turbo", prompt="a red fox"))
        try:
            waiting = [gate.submit(spec, request) for _ in range(2)]
            with pytest.raises(QueueFull, match=r"2 jobs are waiting for model downloads \(limit 2\)") as caught:
                gate.submit(spec, request)
            assert caught.value.status == 429 and 1 <= caught.value.retry_after_s <= 300
            assert [d.jobs_waiting for d in gate.status().downloads] == [2]
            waiting[0].cancel()
            gate.submit(spec, request)  # a place freed
        finally:
            gate.shutdown()


def test_the_queue_per_user_counts_jobs_waiting_for_downloads(tiny_models, tmp_path, monkeypatch):
    """--max-queue-per-user holds for the download phase too: the owner's own count in the 429, and
    other owners pass."""
    from studio.catalog import load_catalog
    from studio.downloads import DownloadGate
    from studio.errors import QueueFull
    from studio.schemas import GenerationRequest
    from studio.slots import SlotManager

    with serve_hub(hub_repos(tiny_models("sdxl-turbo"), ["sdxl-turbo"])) as hub:
        use_hub(monkeypatch, hub, tmp_path / "hf", environment=False)
        hub.throttle_bps = sum(len(f.data) for f in hub.repos[TURBO_REPO].files.values()) / 60  # outlasts the test
        catalog = load_catalog()
        gate = DownloadGate(SlotManager(Settings(devices=["cpu"]), catalog), catalog, offline=False, max_waiting=5,
                            max_waiting_per_owner=1)
        spec, request = catalog.resolve(GenerationRequest(model="sdxl-turbo", prompt="a red fox"))
        try:
            waiting = [gate.submit(spec, request, "ann")]
            with pytest.raises(QueueFull, match=r"ann has 1 job waiting for model downloads "
                                                r"\(--max-queue-per-user 1\)") as caught:
                gate.submit(spec, request, "ann")
            assert caught.value.status == 429 and 1 <= caught.value.retry_after_s <= 300
            waiting.append(gate.submit(spec, request, "bob"))  # not held back by ann's limit
            assert [(o.owner, o.downloading) for o in gate.status().owners] == [("ann", 1), ("bob", 1)]
        finally:
            gate.shutdown()


def test_the_offline_flag_reaches_the_download_phase_and_the_workers(monkeypatch):
    from studio.catalog import load_catalog
    from studio.server import make_backend

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test; make_backend sets it for the workers
    gate = make_backend(Settings.from_args(["--offline"]), load_catalog())
    assert gate.offline and os.environ["HF_HUB_OFFLINE"] == "1"
