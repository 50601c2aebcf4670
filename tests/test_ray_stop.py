"""``python app.py --backend ray`` stops as the local backend does: SIGTERM (a service manager, ``docker
stop``) ends it after the graceful shutdown with exit 0, without Ray's "SIGTERM received" stack dump and
its SIGABRT (exit -6) three seconds later.

Its own process and its own Ray (not test_ray.py's), since the signal goes to the whole app.
"""

from __future__ import annotations

import signal

import httpx
import pytest

pytest.importorskip("ray.serve", reason="the Ray tests need ray[serve] (tests/requirements.txt)")

from tests.live import run_app, wait_until  # noqa: E402

pytestmark = pytest.mark.ray
START_S = 240  # Ray, Serve and a replica importing torch on a shared, busy machine


def test_sigterm_stops_the_ray_backend_with_exit_0(tiny_models, tmp_path):
    args = ["--backend", "ray", "--replicas", "1", "--models-dir", str(tiny_models("sdxl-turbo")),
            "--outputs-dir", str(tmp_path / "outputs")]
    with run_app(args, startup_timeout_s=START_S, stop=signal.SIGTERM) as app:
        wait_until(lambda: httpx.get(f"{app.base_url}/health", timeout=30).json()["slots"], START_S,
                   "the replica to report")  # Ray fully up: its handlers are in place
    output = app.output()
    assert app.process.returncode == 0, output[-3000:]
    assert "SIGTERM received" not in output and "Traceback" not in output, output[-3000:]
    assert "Application shutdown complete" in output  # the backend's own shutdown ran to its end
