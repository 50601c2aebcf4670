"""Run the real app on a free localhost port for a test: ``with serve(settings) as base_url: ...``.

uvicorn runs in a background thread of the test process, on a socket bound before it starts (no
port race); the app's lifespan starts the real slot manager and its worker processes. Leaving
the block shuts everything down. ``serve_app(app)`` does the same for an app already built, for
tests that want to reach into ``app.state`` (the manager, the metrics).
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import uvicorn

STARTUP_TIMEOUT_S = 240.0  # workers import torch and diffusers; two cores shared with other jobs are slow
SHUTDOWN_TIMEOUT_S = 60.0


@contextmanager
def serve(settings, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """Build the app from ``settings`` (``studio.config.Settings``) and serve it; yields the base URL."""
    from studio.server import create_app

    with serve_app(create_app(settings), startup_timeout_s=startup_timeout_s) as base_url:
        yield base_url


@contextmanager
def serve_app(app, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread until the block ends; yields ``http://127.0.0.1:<port>``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the app failed to start; its error is in the log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not start within {startup_timeout_s:g} s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
        sock.close()
