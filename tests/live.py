"""Run the real app on a free localhost port for a test: ``with serve(settings) as base_url: ...``.

uvicorn runs in a background thread of the test process, on a socket bound before it starts (no
port race); the app's lifespan starts the real slot manager and its worker processes. Leaving
the block shuts everything down. ``serve_app(app)`` does the same for an app already built, for
tests that want to reach into ``app.state`` (the manager, the metrics). ``run_app(args)`` runs
``python app.py ARGS`` as its own process instead, the way users and Spaces start it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent

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
    # IPPROTO_TCP explicitly: with protocol 0 asyncio leaves Nagle on, and back-to-back requests wait ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = StoppingAsAppPy(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
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


class StoppingAsAppPy(uvicorn.Server):
    """uvicorn's server, stopping as app.py's does: open pages' session streams (Gradio heartbeats, a
    gradio_client's) end first, else each one holds the stop for the whole grace period."""

    async def shutdown(self, sockets=None) -> None:
        from studio.server import end_session_streams

        if hasattr(self.config.app, "state"):
            end_session_streams(self.config.app)
        await super().shutdown(sockets)


@dataclass
class AppProcess:
    base_url: str
    process: subprocess.Popen
    log: IO[str]
    captured: str | None = None  # the whole output, kept once the process has ended

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        if self.captured is not None:
            return self.captured
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


@contextmanager
def run_app(args: list[str], env: dict | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
            stop: signal.Signals = signal.SIGINT):
    """``python app.py --host 127.0.0.1 --port <free> ARGS`` until the block ends; yields an ``AppProcess``.

    Ready when ``/health`` answers 200. Leaving sends ``stop`` (SIGINT: what Ctrl+C does; SIGTERM: what a
    service manager or ``docker stop`` does) and waits for the exit, so ``app.process.returncode`` tells
    whether it shut down cleanly. Output goes to a temporary file, not a pipe: a chatty server must never
    block on a full pipe.
    """
    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
        app = AppProcess(f"http://127.0.0.1:{port}", process, log)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"app.py exited with {process.returncode}:\n{app.output()[-5000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app.py did not answer /health within {startup_timeout_s:g} s")
                try:
                    if httpx.get(f"{app.base_url}/health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            yield app
        finally:
            if process.poll() is None:
                process.send_signal(stop)
                try:
                    process.wait(SHUTDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            app.captured = app.output()


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.1):
    """Poll ``condition`` every ``every_s`` until it returns something true, and return that; fail naming
    ``what`` after ``timeout_s``. Generous timeouts, since the shared test machines are slow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def free_port() -> int:
    """A port that was free a moment ago (for a child process, which must bind it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric(http, name: str, **labels) -> float:
    """One sample of /metrics (0.0 when the series does not exist yet)."""
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0
