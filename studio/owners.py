"""Owners: whose job it is, for fair share, per-owner limits, ``/health``, ``/metrics`` and the access log.

A job's owner is the name of the API key that sent it (``--api-key NAME:KEY``), else the UI login
(``--ui-auth``), else the client's address (an unnamed key, an open server). The faces work it out
(``rest_owner``, the UI's ``Studio.job_owner``) and hand it to ``Backend.submit``; a job submitted
with none (embedding code, tests) belongs to ``ANONYMOUS``.

- ``tally`` counts each owner's jobs queued, running and waiting for a download, for the backends' status.
- ``labelled``: ``/metrics`` labels the top ``METRIC_OWNERS`` owners by name and sums the rest as ``other``,
  so a server with thousands of clients keeps a bounded number of series.
- ``OwnerInAccessLog`` (an ASGI middleware) and ``AccessLogOwner`` (a logging filter) put the owner of a
  request, when it has a name, next to the client's address in uvicorn's access log.

Torch-free: the server process imports it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable

from studio.backend import OwnerStatus
from studio.jobs import ANONYMOUS, Job

METRIC_OWNERS = 10  # owners with their own label in /metrics; the others are summed as OTHER
OTHER = "other"
STATE_KEY = "owner"  # where a face notes a request's owner in the ASGI scope's state (request.state.owner)

_logged_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("studio_logged_owner", default=None)


def address_owner(client) -> str:
    """The owner of a request with no key name and no login: its client's address (no port: each
    connection has its own), else ``ANONYMOUS``."""
    host = getattr(client, "host", None) if client is not None else None
    return host or ANONYMOUS


def rest_owner(request) -> str:
    """A REST request's owner: the name of its API key (``openai_api.require_api_key`` notes it), else its address."""
    return getattr(request.state, "api_owner", None) or address_owner(request.client)


def note_owner(scope, owner: str | None) -> None:
    """Note a request's named owner (a key's name, a login) in its scope, for the access log."""
    if owner:
        scope.setdefault("state", {})[STATE_KEY] = owner


# ---------------------------------------------------------------- counting


def tally(queued: Iterable[Job] = (), running: Iterable[Job] = (), downloading: Iterable[Job] = (),
          also: Iterable[OwnerStatus] = ()) -> tuple[OwnerStatus, ...]:
    """Each owner's jobs among the given ones, added to ``also`` (a backend's own tally), by owner."""
    counts: dict[str, dict[str, int]] = {}
    for status in also:
        counts[status.owner] = {"queued": status.queued, "running": status.running, "downloading": status.downloading}
    for kind, jobs in (("queued", queued), ("running", running), ("downloading", downloading)):
        for job in jobs:
            counts.setdefault(job.owner, {"queued": 0, "running": 0, "downloading": 0})[kind] += 1
    return tuple(OwnerStatus(owner, **counts[owner]) for owner in sorted(counts))


def may_see_owners(settings, api_key_sent: bool, login: str | None) -> bool:
    """Who is using the studio is shown to API keys and ``--ui-admin`` logins only; on a server
    with neither keys nor logins everybody has the same rights, and sees it."""
    if not settings.api_key and not settings.ui_auth:
        return True
    return api_key_sent or (login is not None and login in settings.ui_admins)


def labelled(values: dict[str, float], top: int = METRIC_OWNERS) -> dict[str, float]:
    """``values`` per owner with at most ``top`` owners by name (the largest values) and the rest summed
    as ``other``: a metric label with a bounded number of values."""
    ranked = sorted(values, key=lambda owner: (-values[owner], owner))
    shown = {owner: values[owner] for owner in ranked[:top]}
    rest = ranked[top:]
    if rest:
        shown[OTHER] = shown.get(OTHER, 0.0) + sum(values[owner] for owner in rest)
    return shown


# ---------------------------------------------------------------- the access log


class OwnerInAccessLog:
    """Outermost ASGI middleware: as the answer starts (when uvicorn writes its access line), the
    request's named owner, noted in its scope by the face that knew it, is handed to ``AccessLogOwner``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                _logged_owner.set((scope.get("state") or {}).get(STATE_KEY))
            await send(message)

        await self.app(scope, receive, sending)


class AccessLogOwner(logging.Filter):
    """Writes the owner after the client's address in uvicorn's access lines: ``127.0.0.1:5312 (ann) - "POST ..."``."""

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _logged_owner.get()
        if owner and isinstance(record.args, tuple) and len(record.args) == 5:
            client, *rest = record.args
            record.args = (f"{client} ({owner})", *rest)
        return True
