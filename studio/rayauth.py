"""Joining a Ray cluster (or starting a private one): ``ray.init`` from a thread that outlives the caller's,
and token authentication (Ray 2.60+): whether this machine has a token at hand, and what to tell a user
whose connection failed. Imports Ray only inside ``join_ray``; never torch."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import studio

log = logging.getLogger(__name__)

AUTH_HINT = ("If the cluster uses token authentication (Ray 2.60+ turns it on for `ray start --head` when "
             "~/.ray/auth_token exists), give this machine its token: RAY_AUTH_TOKEN=<token>, or the token "
             "in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH); the studio then sets RAY_AUTH_MODE=token.")


def token_auth_for(address: str, environ) -> bool:
    """Whether joining the cluster at ``address`` should use token authentication: a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` does
    not say otherwise. Ray itself enables it only for a local cluster it finds, not an explicit address."""
    if environ.get("RAY_AUTH_MODE"):
        return environ["RAY_AUTH_MODE"].lower() == "token"
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    token_file = Path(environ.get("RAY_AUTH_TOKEN_PATH") or home / ".ray" / "auth_token")
    return token_file.is_file() and token_file.stat().st_size > 0


def join_ray(address: str | None, released: threading.Event) -> None:
    """``ray.init`` from a thread that lives until ``released`` is set (the backend's ``shutdown``). The
    kernel kills a local Ray's GCS and raylet (started with PR_SET_PDEATHSIG) when the *thread* that
    started them ends, and the backend's ``start`` may run on a server's pool thread that ends once idle:
    the cluster would vanish under the replicas, and the driver (this process) exit a minute later."""
    import ray

    ready: Future = Future()
    if address and token_auth_for(address, os.environ):
        os.environ["RAY_AUTH_MODE"] = "token"  # Ray turns it on by itself only for a cluster it finds
        log.info("ray backend: joining %s with token authentication (a token is set)", address)

    def own_ray() -> None:
        try:
            # The replicas run this same code, shipped with the job: other machines need only the
            # requirements (and the models, in their HF cache or a shared one).
            ray.init(address=address, runtime_env={"py_modules": [str(Path(studio.__file__).parent)]},
                     namespace="studio", log_to_driver=False, include_dashboard=False)
        except BaseException as exc:
            if address and isinstance(exc, (ConnectionError, RuntimeError)):
                exc = ConnectionError(f"{exc} {AUTH_HINT}")
            ready.set_exception(exc)
            return
        ready.set_result(None)
        released.wait()

    threading.Thread(target=own_ray, name="ray-owner", daemon=True).start()
    ready.result()
