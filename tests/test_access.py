"""Who may do what with logins on (``--ui-auth``), through real HTTP against the mounted app.

One server for the module: one CPU slot, three logins (``root`` is an admin), a named REST key.
Each test plays an attacker the way the hostile battery did: anonymous, or logged in as
another user, calling Gradio's routes by hand with someone else's session or job.
"""

from __future__ import annotations

import base64
import shutil
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from studio import pngmeta
from studio.config import Settings
from studio.history import owner_dir
from tests.live import serve, wait_until
from tests.test_rest import toml_text

GRADIO_WAIT_S = 120.0

ANN, BOB, ROOT = ("ann", "pw-ann"), ("bob", "pw-bob"), ("root", "pw-root")
API_KEY = "key-of-ci"
LONG_SIDE = 256
LONG_JOB = dict(prompt="a long job", model="sdxl-base", width=LONG_SIDE, height=LONG_SIDE, steps=150, num_images=4)


@pytest.fixture(scope="module")
def models_dir(tiny_models, tmp_path_factory):
    """Tiny sdxl-base allowed up to LONG_SIDE, so that LONG_JOB runs long enough to be cancelled."""
    target = tmp_path_factory.mktemp("access-models")
    shutil.copytree(tiny_models("sdxl-base") / "sdxl-base", target / "sdxl-base")
    override = target / "sdxl-base" / "studio.toml"
    tables = tomllib.loads(override.read_text())
    tables["limits"].update(max_side=LONG_SIDE, max_pixels=LONG_SIDE * LONG_SIDE)
    override.write_text(toml_text(tables))
    return target


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    outputs = tmp_path_factory.mktemp("outputs")
    settings = Settings(
        host="127.0.0.1", devices=["cpu"], models_dir=models_dir, outputs_dir=outputs,
        ui_auth=[ANN, BOB, ROOT], ui_admins=["root"], api_key=f"ci:{API_KEY}",
    )
    with serve(settings) as base_url:
        yield base_url, outputs


@contextmanager
def login(base_url: str, user: tuple[str, str]) -> Iterator[httpx.Client]:
    """An HTTP client that signed in as ``user`` (Gradio's token cookie)."""
    with httpx.Client(base_url=base_url, timeout=60) as client:
        response = client.post("/login", data={"username": user[0], "password": user[1]})
        assert response.status_code == 200, response.text
        yield client


def gradio_client(base_url: str, user: tuple[str, str]):
    from gradio_client import Client

    return Client(base_url + "/", auth=user, verbose=False)


def test_the_login_page_shows_no_api_description(server):
    base_url, _ = server
    page = httpx.get(base_url + "/", headers={"Accept-Encoding": "gzip, br"}, timeout=30)
    assert page.status_code == 200 and "auth_required" in page.text
    assert 'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}}' in page.text
    assert "/generate" not in page.text and "num_images" not in page.text
    with login(base_url, ANN) as ann:  # the same page after the login still carries it
        assert "named_endpoints" in ann.get("/").text


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/gradio_api/cancel", {"session_hash": "s", "fn_index": 0, "event_id": "x"}),
        ("GET", "/gradio_api/heartbeat/some-session", None),
        ("POST", "/gradio_api/queue/join", {"session_hash": "s", "fn_index": 0, "data": []}),
        ("GET", "/gradio_api/queue/data?session_hash=s", None),
        ("POST", "/gradio_api/upload", None),
        ("GET", "/gradio_api/file=README.md", None),
        ("POST", "/gradio_api/reset", {"event_id": "x"}),
        ("GET", "/gradio_api/info", None),
        ("GET", "/config", None),
    ],
)
def test_every_session_or_job_route_needs_the_login(server, method, path, body):
    base_url, _ = server
    response = httpx.request(method, base_url + path, json=body, timeout=30)
    assert response.status_code == 401, (path, response.status_code, response.text[:200])


def test_only_the_login_that_started_a_job_can_cancel_it(server):
    base_url, _ = server
    ann = gradio_client(base_url, ANN)
    job = ann.submit(**LONG_JOB, api_name="/generate")
    event_id = wait_until(lambda: job.communicator and job.communicator.event_id, GRADIO_WAIT_S, "ann's event id")
    wait_until(lambda: ann.predict(api_name="/status")["slots"][0].get("busy"), GRADIO_WAIT_S, "ann's job running")
    fn_index = next(dep["id"] for dep in ann.config["dependencies"] if dep.get("api_name") == "generate")
    attack = {"session_hash": ann.session_hash, "fn_index": fn_index, "event_id": event_id}

    anonymous = httpx.post(base_url + "/gradio_api/cancel", json=attack, timeout=30)
    assert anonymous.status_code == 401
    with login(base_url, BOB) as bob:
        assert bob.post("/gradio_api/cancel", json=attack).status_code == 403
        # bob's own session with ann's job: still not his job
        own_session = {**attack, "session_hash": "bobs-own-session"}
        assert bob.post("/gradio_api/cancel", json=own_session).status_code == 403
        # closing ann's session through its heartbeat would end her job too
        assert bob.get(f"/gradio_api/heartbeat/{ann.session_hash}").status_code == 403
        assert bob.get("/gradio_api/queue/data", params={"session_hash": ann.session_hash}).status_code == 403

    time.sleep(1.0)  # a cancel that got through would have ended the job by now
    assert not job.done() and ann.predict(api_name="/status")["slots"][0].get("busy")
    assert job.cancel()  # ann herself may
    wait_until(lambda: not ann.predict(api_name="/status")["slots"][0].get("busy"), GRADIO_WAIT_S, "the slot to free")
    ann.close()


def test_each_job_has_an_owner_shown_to_keys_and_admins_only(server):
    """ann's job is ann's in /health (for the API key and the admin login, not for anonymous or bob),
    in /metrics, in the Gradio /status of the admin, and in the access log of her requests."""
    import logging

    from studio.owners import AccessLogOwner

    base_url, _ = server
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    access_log, owner_filter = logging.getLogger("uvicorn.access"), AccessLogOwner()
    level = access_log.level
    access_log.setLevel(logging.INFO)  # the test server logs warnings only
    access_log.addHandler(handler)
    access_log.addFilter(owner_filter)
    ann, root, bob = gradio_client(base_url, ANN), gradio_client(base_url, ROOT), gradio_client(base_url, BOB)
    try:
        job = ann.submit(**LONG_JOB, api_name="/generate")
        wait_until(lambda: ann.predict(api_name="/status")["slots"][0].get("busy"), GRADIO_WAIT_S, "ann's job running")
        with httpx.Client(base_url=base_url, timeout=30) as anonymous:
            assert "owners" not in anonymous.get("/health").json()
            keyed = anonymous.get("/health", headers={"Authorization": f"Bearer {API_KEY}"}).json()
            wrong = anonymous.get("/health", headers={"Authorization": "Bearer not-a-key"}).json()
            metrics = anonymous.get("/metrics").text
        assert keyed["owners"] == [{"owner": "ann", "queued": 0, "running": 1, "downloading": 0}]
        assert "owners" not in wrong
        assert 'studio_owner_jobs{owner="ann",state="running"} 1.0' in metrics
        with login(base_url, ROOT) as admin, login(base_url, BOB) as other:
            assert admin.get("/health").json()["owners"][0]["owner"] == "ann"
            assert "owners" not in other.get("/health").json()
        assert root.predict(api_name="/status")["owners"][0]["owner"] == "ann"
        assert "owners" not in bob.predict(api_name="/status")
        assert job.cancel()
        wait_until(lambda: not ann.predict(api_name="/status")["slots"][0].get("busy"), GRADIO_WAIT_S, "the slot to free")
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as ci:
            assert ci.get("/v1/models").status_code == 200
            assert ci.get("/health").json()["owners"] == []  # nobody has jobs any more
    finally:
        access_log.removeHandler(handler)
        access_log.removeFilter(owner_filter)
        access_log.setLevel(level)
        for client in (ann, root, bob):
            client.close()
    assert any('(ci) - "GET /v1/models' in line for line in lines), lines[-5:]
    assert any('(ann) - "POST /gradio_api/' in line for line in lines), lines[-5:]
    assert any('(root) - "GET /health' in line for line in lines), lines[-5:]
    assert any('"GET /health' in line and "(" not in line.split(" - ")[0] for line in lines)  # anonymous: no name


def test_a_login_reads_only_its_own_images_an_admin_all(server):
    base_url, outputs = server
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    paths = {}
    for user in ("ann", "bob"):
        folder = owner_dir(outputs, user)
        folder.mkdir(parents=True, exist_ok=True)
        paths[user] = folder / f"{user}.png"
        paths[user].write_bytes(png)
    shared = outputs / "before-logins.png"
    shared.write_bytes(png)

    def status(client: httpx.Client, path) -> int:
        return client.get(f"/gradio_api/file={path}").status_code

    with login(base_url, ANN) as ann, login(base_url, BOB) as bob, login(base_url, ROOT) as root:
        assert status(ann, paths["ann"]) == 200 and status(bob, paths["bob"]) == 200
        assert status(bob, paths["ann"]) == 403 and status(ann, paths["bob"]) == 403
        assert status(bob, owner_dir(outputs, "bob") / ".." / "ann" / "ann.png") == 403  # no way around by ".."
        assert status(bob, shared) == 403
        assert bob.get(f"/gradio_api/file/{paths['ann']}").status_code == 403  # the older route too
        assert all(status(root, path) == 200 for path in (*paths.values(), shared))


def test_a_named_api_key_keeps_its_images_in_its_own_folder(server):
    """Whichever route and however delivered (one JSON body, or a stream), as the UI keeps its own."""
    base_url, outputs = server
    body = {"model": "sdxl-base", "prompt": "a red fox", "size": "64x64", "steps": 2, "seed": 7}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as ci:
        generated = ci.post("/v1/images/generations", json=body)
        assert generated.status_code == 200, generated.text[:300]
        streamed = ci.post("/v1/images/generations", json={**body, "seed": 8, "stream": True})
        assert streamed.status_code == 200 and "image_generation.completed" in streamed.text, streamed.text[:300]
        edit = {"model": "sdxl-base", "prompt": "in snow", "steps": "2", "strength": "0.5", "seed": "9"}
        upload = {"image": ("in.png", generated_png(generated), "image/png")}
        edited = ci.post("/v1/images/edits", data=edit, files=upload)
        assert edited.status_code == 200, edited.text[:300]
    saved = sorted(owner_dir(outputs, "ci", kind="api").glob("*.png"))
    assert len(saved) == 3 and all(path.read_bytes()[:4] == b"\x89PNG" for path in saved)
    assert sorted(pngmeta.read(path.read_bytes())["seed"] for path in saved) == [7, 8, 9]


def generated_png(response: httpx.Response) -> bytes:
    return base64.b64decode(response.json()["data"][0]["b64_json"])


def test_stopping_with_a_client_still_listening_logs_no_traceback(models_dir, tmp_path):
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    server_log = logging.getLogger("uvicorn.error")
    settings = Settings(host="127.0.0.1", devices=["cpu"], models_dir=models_dir, outputs_dir=tmp_path)
    try:
        with serve(settings) as base_url:
            from gradio_client import Client

            server_log.addHandler(handler)  # after uvicorn set up its logging, which drops earlier handlers
            client = Client(base_url + "/", verbose=False)
            client.submit(**LONG_JOB, api_name="/generate")  # its event stream stays open at shutdown
            wait_until(lambda: client.predict(api_name="/status")["slots"][0].get("busy"), GRADIO_WAIT_S,
                       "the job running")
    finally:
        server_log.removeHandler(handler)
    tracebacks = [record.getMessage() for record in records if record.exc_info]
    assert tracebacks == []
