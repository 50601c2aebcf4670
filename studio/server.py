"""``create_app(settings) -> FastAPI``: the one app behind every face of the studio.

Catalog -> the ``Backend`` (started and stopped by the app's lifespan; ``make_backend`` is the one
place that picks it) -> the OpenAI-compatible
``/v1`` router, ``/health`` and ``/metrics`` -> the Gradio UI mounted at ``/``. FastAPI's own
routes (``/docs``, ``/openapi.json``, ``/v1/...``) are registered before the mount, so they win
over the UI's catch-all.

Runs in the parent process: never imports torch (only the spawned workers do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route

from studio import edits, openai_api
from studio.a1111 import errors as a1111_errors
from studio.a1111 import routes as a1111
from studio.a1111.callers import Callers
from studio.access import LOGIN_KEY, GradioAccess
from studio.catalog import load_catalog
from studio.config import Settings, api_keys
from studio.downloads import DownloadGate
from studio.errors import StudioError, echo
from studio.metrics import StudioMetrics
from studio.owners import OwnerInAccessLog, may_see_owners
from studio.backend import Backend
from studio.catalog import Catalog

log = logging.getLogger(__name__)

DESCRIPTION = """\
Text-to-image with diffusers models: a Gradio UI at `/`, the Gradio API for `gradio_client`,
an OpenAI-compatible Images API at `/v1/images/generations`, and the AUTOMATIC1111 API at `/sdapi/v1`.

Errors use the OpenAI shape `{"error": {"message", "type", "param", "code"}}`. When the server
runs with `--api-key`, `/v1` routes need `Authorization: Bearer <key>`; `/sdapi` routes take it as
Bearer or as HTTP Basic's password (A1111's shapes, errors included: 422 with `detail`); `/health` and
`/metrics` stay open.
"""


def reclaim_stop_signals() -> None:
    """Give SIGTERM and SIGINT back to the server's own (Python) handlers, as uvicorn installed them.

    A backend's library may take them at the C level while it starts: Ray's core worker installs Abseil's
    failure signal handler, which on SIGTERM prints a "SIGTERM received" stack dump, passes the signal on,
    and aborts the process (SIGABRT, exit -6) a few seconds later, in the middle of the graceful shutdown.
    Python keeps its handler in its own table, so setting it again puts it back in front. Only the main
    thread may set handlers; a server in another thread (the tests' ``serve_app``) has none of its own."""
    if threading.current_thread() is not threading.main_thread():
        return
    for stop in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(stop)
        if handler is not None:  # None: set from C before Python knew, nothing of ours to put back
            signal.signal(stop, handler)


def create_app(settings: Settings) -> FastAPI:
    catalog = load_catalog(settings.models_dir, lora_dir=settings.lora_dir)
    backend = make_backend(settings, catalog)
    metrics = StudioMetrics(backend)
    backend.add_observer(metrics.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # start() blocks until every worker is READY (or raises): keep the event loop free meanwhile.
        await run_in_threadpool(backend.start)
        reclaim_stop_signals()
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
    app.state.a1111 = Callers()  # the A1111 face's per-caller checkpoints and jobs

    install_error_handlers(app)
    app.include_router(edits.router)  # before the /v1 catch-all of openai_api.router
    app.include_router(openai_api.router)
    app.include_router(a1111.router)
    app.include_router(a1111.outside)  # after a1111.router: its catch-all answers the other /sdapi paths
    app.add_api_route("/health", health, methods=["GET"], tags=["operations"], summary="Liveness and slots")
    app.add_api_route(
        "/metrics", prometheus_metrics, methods=["GET"], tags=["operations"], summary="Prometheus metrics",
        response_class=Response, responses={200: {"content": {"text/plain": {}}}},
    )
    gradio_app = mount_ui(app, catalog, backend, settings)
    app.state.gradio_app = gradio_app
    app.add_middleware(
        GradioAccess, gradio_app=gradio_app, logins=[user for user, _ in settings.ui_auth],
        admins=settings.ui_admins, outputs_dir=settings.outputs_dir,
    )
    app.add_middleware(WrongMethod)
    app.add_middleware(EndCancelledResponses)
    app.add_middleware(OwnerInAccessLog)  # outermost: it sees the answer start as uvicorn logs it
    if settings.api_key and not settings.ui_auth:
        log.warning("--api-key guards /v1 and /sdapi only: the web UI and the Gradio API are open (--ui-auth closes them)")
    if settings.ui_auth and not settings.api_key:
        log.warning("--ui-auth guards the web UI only: the REST API (/v1) is open to anyone (--api-key closes it)")
    return app


def end_session_streams(app: FastAPI) -> None:
    """Call when the server begins to stop: the streams that only keep an open page's session alive
    (Gradio's heartbeats) end now, so the shutdown grace waits for running jobs, not for browser tabs."""
    gradio_app = getattr(app.state, "gradio_app", None)
    if gradio_app is not None:
        gradio_app.stop_event.set()


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
    return DownloadGate(backend, catalog, offline=settings.offline or None, preload=settings.preload,
                        max_waiting=settings.max_queue, max_waiting_per_owner=settings.max_queue_per_user)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error object (``openai_api.error_response``), or on ``/sdapi`` in A1111's
    shape, never a traceback."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request.url.path, exc)

    for kind in (StudioError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)


def error_response(path: str, exc: BaseException) -> JSONResponse:
    """The error body of the face that ``path`` belongs to."""
    if path == a1111.PREFIX or path.startswith(f"{a1111.PREFIX}/"):
        return a1111_errors.error_response(exc)
    return openai_api.error_response(exc)


def mount_ui(app: FastAPI, catalog, backend: Backend, settings: Settings):
    """Mount the Gradio UI at ``/``, with the styling and file access the UI module asks for; the Gradio app."""
    import gradio as gr

    from studio.ui import build_ui, mount_options

    blocks = build_ui(catalog, backend, settings)
    gr.mount_gradio_app(
        app, blocks, path="/", server_name=settings.host, server_port=settings.port, **mount_options(settings),
    )
    return next(route.app for route in app.routes if isinstance(route, Mount) and route.path == "")


class EndCancelledResponses:
    """Requests still open when the server stops (a gradio_client's event stream, a browser's
    heartbeat) are cancelled by uvicorn after its grace period: end their answers cleanly instead
    of letting the cancel surface as an "Exception in ASGI application" traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = {"start": False, "end": False}

        async def tracking(message):
            if message["type"] == "http.response.start":
                sent["start"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                sent["end"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except asyncio.CancelledError:
            # Only uvicorn's shutdown cancels a request task (a client that leaves is told by a message).
            log.info("%s %s: still open at shutdown; closed", scope.get("method"), echo(scope.get("path")))
            try:
                if not sent["start"]:
                    await send({"type": "http.response.start", "status": 503, "headers": []})
                if not sent["end"]:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the connection is already gone: nothing left to end
                pass


class WrongMethod:
    """A route of the app asked with a method it does not take answers 405, not the UI's 404.

    The UI mounted at "/" matches every path, so Starlette never reaches its own 405 for them.
    The routes come from the app's OpenAPI schema (public, whatever FastAPI nests internally) and
    its plain routes (the docs), read at the first request, when every route is registered.
    """

    def __init__(self, app):
        self.app = app
        self.routes: list[tuple[re.Pattern, set[str]]] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if self.routes is None:
                self.routes = known_routes(scope["app"])
            path, method = scope["path"], scope["method"]
            allowed = set().union(*(methods for pattern, methods in self.routes if pattern.match(path)))
            if allowed and method not in allowed and not (method == "HEAD" and "GET" in allowed):
                allow = ", ".join(sorted(allowed))
                error = openai_api.http_error(405, f"{method} {echo(path)}: method not allowed; use {allow}")
                response = error_response(path, error)
                response.headers["Allow"] = allow
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def known_routes(app: FastAPI) -> list[tuple[re.Pattern, set[str]]]:
    """Each path of the app's own routes (not the UI) as a pattern, with the methods it takes."""
    routes = []
    try:
        paths = app.openapi().get("paths", {})
    except Exception:  # a schema that cannot be built must not take every request down with it
        log.exception("could not read the app's routes from its OpenAPI schema; no 405 answers")
        paths = {}
    for path, operations in paths.items():
        pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
        routes.append((pattern, {name.upper() for name in operations} & HTTP_METHODS))
    for route in app.router.routes:
        if isinstance(route, Route) and not isinstance(route, APIRoute):  # plain routes: /docs, /openapi.json
            routes.append((route.path_regex, set(route.methods or ())))
    return routes


async def health(request: Request) -> JSONResponse:
    """200 while at least one worker is alive (``degraded`` when some are down or a model fails to
    download or load: ``model_errors`` says which and why), else 503; with the slots and downloads,
    and each owner's jobs for an API key or a ``--ui-admin`` login (``owners.may_see_owners``)."""
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
    settings = request.app.state.settings
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    keyed = scheme.lower() == "bearer" and bool(token) and knows_key(api_keys(settings.api_key), token)
    shown = may_see_owners(settings, keyed, getattr(request.state, LOGIN_KEY, None))
    body = snapshot.as_dict() if shown else snapshot.without_owners()
    return JSONResponse({"status": status, **body}, status_code=code)


async def prometheus_metrics(request: Request) -> Response:
    metrics: StudioMetrics = request.app.state.metrics
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=metrics.content_type)


def knows_key(keys: dict[str, str | None], sent: str) -> bool:
    """Whether ``sent`` is one of the server's API keys."""
    try:
        openai_api.key_owner(keys, sent)
    except StudioError:
        return False
    return bool(keys)
