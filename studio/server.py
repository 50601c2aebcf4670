"""``create_app(settings) -> FastAPI``: the one app behind every face of the studio.

Catalog -> the ``Backend`` (started and stopped by the app's lifespan; ``make_backend`` is the one
place that picks it) -> the OpenAI-compatible
``/v1`` router, ``/health`` and ``/metrics`` -> the Gradio UI mounted at ``/``. FastAPI's own
routes (``/docs``, ``/openapi.json``, ``/v1/...``) are registered before the mount, so they win
over the UI's catch-all.

Runs in the parent process: never imports torch (only the spawned workers do).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio import edits, openai_api
from studio.catalog import load_catalog
from studio.config import Settings
from studio.downloads import DownloadGate
from studio.errors import StudioError
from studio.metrics import StudioMetrics
from studio.backend import Backend
from studio.catalog import Catalog

log = logging.getLogger(__name__)

DESCRIPTION = """\
Text-to-image with diffusers models: a Gradio UI at `/`, the Gradio API for `gradio_client`,
and an OpenAI-compatible Images API at `/v1/images/generations`.

Errors use the OpenAI shape `{"error": {"message", "type", "param", "code"}}`. When the server
runs with `--api-key`, `/v1` routes need `Authorization: Bearer <key>`; `/health` and
`/metrics` stay open.
"""


def create_app(settings: Settings) -> FastAPI:
    catalog = load_catalog(settings.models_dir)
    backend = make_backend(settings, catalog)
    metrics = StudioMetrics(backend)
    backend.add_observer(metrics.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # start() blocks until every worker is READY (or raises): keep the event loop free meanwhile.
        await run_in_threadpool(backend.start)
        try:
            yield
        finally:
            await run_in_threadpool(backend.shutdown)

    app = FastAPI(title="Image Studio", description=DESCRIPTION, version="1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.backend = backend
    app.state.metrics = metrics
    app.state.started_at = int(time.time())

    install_error_handlers(app)
    app.include_router(edits.router)  # before the /v1 catch-all of openai_api.router
    app.include_router(openai_api.router)
    app.add_api_route("/health", health, methods=["GET"], tags=["operations"], summary="Liveness and slots")
    app.add_api_route(
        "/metrics", prometheus_metrics, methods=["GET"], tags=["operations"], summary="Prometheus metrics",
        response_class=Response, responses={200: {"content": {"text/plain": {}}}},
    )
    mount_ui(app, catalog, backend, settings)
    if settings.api_key and not settings.ui_auth:
        log.warning("--api-key guards /v1 only: the web UI and the Gradio API are open (--ui-auth closes them)")
    return app


def make_backend(settings: Settings, catalog: Catalog) -> Backend:
    """The backend that runs the jobs: local worker processes, one per device, or Ray Serve replicas;
    behind the download phase either way. Ray is imported only here, only when chosen."""
    if settings.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # the workers, spawned later, never reach for the hub either
    if settings.backend == "ray":
        try:
            from studio.ray_backend import RayBackend
        except ImportError as exc:
            raise SystemExit(f"--backend ray needs Ray Serve: pip install 'ray[serve]>=2.60,<3' ({exc})") from None
        backend = RayBackend(settings, catalog)
    else:
        from studio.slots import LocalBackend

        backend = LocalBackend(settings, catalog)
    # The download fills this machine's Hugging Face cache: Ray replicas on other nodes need it shared (HF_HOME).
    return DownloadGate(backend, catalog, offline=settings.offline or None, preload=settings.preload)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error object (``openai_api.error_response``), never a traceback."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return openai_api.error_response(exc)

    for kind in (StudioError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)


def mount_ui(app: FastAPI, catalog, backend: Backend, settings: Settings) -> None:
    """Mount the Gradio UI at ``/``, with the styling and file access the UI module asks for."""
    import gradio as gr

    from studio.ui import build_ui, mount_options

    gr.mount_gradio_app(
        app, build_ui(catalog, backend, settings), path="/",
        server_name=settings.host, server_port=settings.port, **mount_options(settings),
    )


async def health(request: Request) -> JSONResponse:
    """200 while at least one worker is alive (``degraded`` when some are down or a model fails to
    download or load: ``model_errors`` says which and why), else 503; with the slots and downloads."""
    backend: Backend = request.app.state.backend
    try:
        snapshot = await run_in_threadpool(backend.status)
    except Exception as exc:  # a backend that cannot even report is down
        return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
    slots, alive = snapshot.slots, snapshot.alive
    if slots and alive == len(slots) and not snapshot.model_errors:
        status, code = "ok", 200
    elif alive:
        status, code = "degraded", 200
    else:
        status, code = "unavailable", 503
    return JSONResponse({"status": status, **snapshot.as_dict()}, status_code=code)


async def prometheus_metrics(request: Request) -> Response:
    metrics: StudioMetrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=metrics.content_type)
