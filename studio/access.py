"""Who may do what on the Gradio face when the UI has logins (``--ui-auth``).

``GradioAccess`` is one ASGI middleware in front of the whole app. Gradio checks the login on
some of its routes and not on others (``/cancel`` and ``/heartbeat`` take no login at all), and
which ones changes between versions, so the studio does not rely on it:

- every request that reaches the mounted Gradio app needs a login, except the few the login page
  itself needs; the login page loses the API description Gradio embeds in it;
- a session (``session_hash``) and a job (``event_id``) belong to the login that first used them:
  no other login may listen to, cancel or close them;
- a file under the outputs folder is served only to its owner (``history.owner_dir``) or an
  admin (``--ui-admin``). Gradio's own cache and upload files stay served to any login: their
  names carry a SHA-256 of a server secret and the file's content, so only a session that was
  handed a file can name it.

The REST routes and every other FastAPI route of the app pass untouched (``--api-key`` guards
``/v1``); a login they carry is only noted, for ``/health`` and the access log. Without ``--ui-auth`` the middleware does nothing: there is nobody to tell apart.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection
from starlette.routing import Match, Mount

from studio.history import owner_dir
from studio.owners import note_owner

log = logging.getLogger(__name__)

# What the login page loads before anyone has signed in (seen with a browser on Gradio 6).
PUBLIC_PATHS = {"/", "/login", "/login/", "/logout", "/theme.css", "/gradio_api/theme.css", "/favicon.ico",
                "/manifest.json", "/robots.txt", "/gradio_api/login_check", "/gradio_api/login_check/"}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
MAX_JSON_BODY = 16 * 2**20  # Gradio's JSON calls carry prompts and settings; files go through /upload
MAX_OWNED = 100_000  # sessions and jobs remembered per kind; the oldest are forgotten first
API_INFO = re.compile(rb"(window\.gradio_api_info\s*=\s*).*?(;?\s*</script>)", re.DOTALL)
NO_API = b'{"named_endpoints": {}, "unnamed_endpoints": {}}'  # empty, not null: null makes the page ask /info
FILE_ROUTE = re.compile(r"^/gradio_api/file[=/](?P<path>.+)$")
SESSION_IN_PATH = re.compile(r"^/gradio_api/(?:heartbeat/(?P<beat>[^/]+)/?|stream/(?P<stream>[^/]+)/[^/]+/[^/]+/.+)$")
EVENT_IN_PATH = re.compile(r"^/gradio_api/(?:call(?:/v2)?/[^/]+|stream)/(?P<id>[^/]+)(?:/close)?$")
LOGIN_KEY = "login"  # where the login of a request is noted in its scope's state (request.state.login)
RECORDS_EVENT = re.compile(r"^/gradio_api/(?:queue/join|call(?:/v2)?/[^/]+)/?$")


class Owners:
    """Which login first used each id; a bounded memory, oldest forgotten first."""

    def __init__(self, limit: int = MAX_OWNED):
        self.limit = limit
        self._owner: OrderedDict[str, str] = OrderedDict()

    def claim(self, key: str, user: str) -> bool:
        """True when ``key`` is ``user``'s (now or from before); False when another login holds it."""
        owner = self._owner.get(key)
        if owner is None:
            self._owner[key] = user
            if len(self._owner) > self.limit:
                self._owner.popitem(last=False)
            return True
        return owner == user

    def owner(self, key: str) -> str | None:
        return self._owner.get(key)


class GradioAccess:
    """The ASGI middleware; ``gradio_app`` is the mounted Gradio ``App`` (it keeps the login tokens)."""

    def __init__(self, app, *, gradio_app, logins: Iterable[str], admins: Iterable[str], outputs_dir: Path):
        self.app = app
        self.gradio_app = gradio_app
        self.logins = set(logins)
        self.admins = set(admins)
        self.outputs_dir = Path(outputs_dir).resolve()
        self.sessions = Owners()
        self.events = Owners()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or not self.logins:
            return await self.app(scope, receive, send)
        user = self.login_of(scope)
        if user is not None:
            scope.setdefault("state", {})[LOGIN_KEY] = user  # /health shows owners to an admin's login
            note_owner(scope, user)  # the access log names the login
        if not served_by_gradio(scope):
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope.get("method", "GET")
        if user is None:
            if path == "/" and method in ("GET", "HEAD"):
                return await self.login_page(scope, receive, send)
            if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
                return await self.app(scope, receive, send)
            return await refuse(scope, send, 401, "Not authenticated: sign in first (the server has --ui-auth)")

        body, receive = await read_json_body(scope, receive)
        if body is TOO_LARGE:
            return await refuse(scope, send, 413, "request body too large")
        session = session_of(scope, body)
        if session is not None and not self.sessions.claim(session, user):
            log.warning("login %r refused: session %s belongs to another login (%s %s)", user, session, method, path)
            return await refuse(scope, send, 403, "this session belongs to another login")
        event = event_of(path, body)
        if event is not None and self.events.owner(event) != user:
            log.warning("login %r refused: job %s is not theirs (%s %s)", user, event, method, path)
            return await refuse(scope, send, 403, "this job belongs to another session or does not exist")
        if (match := FILE_ROUTE.match(path)) and not self.may_read(user, match["path"]):
            return await refuse(scope, send, 403, "this file belongs to another login")
        if method == "POST" and RECORDS_EVENT.match(path):
            send = self.recording_events(user, send)
        return await self.app(scope, receive, send)

    # ---------------------------------------------------------------- decisions

    def login_of(self, scope) -> str | None:
        """The login whose Gradio token cookie this request carries, else None."""
        gradio_app = self.gradio_app
        cookie_id = getattr(gradio_app, "cookie_id", None)
        tokens = getattr(gradio_app, "tokens", None)
        if cookie_id is None or tokens is None:  # a Gradio that keeps logins elsewhere: nobody gets in
            return None
        cookies = HTTPConnection(scope).cookies
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        user = tokens.get(token) if token else None
        return user if user in self.logins else None

    def may_read(self, user: str, requested: str) -> bool:
        """A file under the outputs folder only for its owner or an admin; anything else is Gradio's call."""
        if "://" in requested or user in self.admins:
            return True
        target = Path(os.path.abspath(requested)).resolve()
        if not target.is_relative_to(self.outputs_dir):
            return True  # Gradio serves only its cache, uploads and allowed paths, and checks that itself
        return target.is_relative_to(owner_dir(self.outputs_dir, user).resolve())

    # ---------------------------------------------------------------- wrappers

    def recording_events(self, user: str, send: Callable) -> Callable:
        """``send`` that notes the ``event_id`` of a job this login just started, before the client sees it."""
        chunks: list[bytes] = []

        async def wrapped(message):
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        event = json.loads(b"".join(chunks)).get("event_id")
                    except (ValueError, AttributeError):
                        event = None
                    if isinstance(event, str):
                        self.events.claim(event, user)
            await send(message)

        return wrapped

    async def login_page(self, scope, receive, send):
        """Gradio's login page without ``window.gradio_api_info`` (every endpoint and parameter)."""
        # Uncompressed, so the page can be edited: Gradio compresses when the client accepts it.
        headers = [(name, value) for name, value in scope["headers"] if name.lower() != b"accept-encoding"]
        scope = {**scope, "headers": headers}
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body, found = API_INFO.subn(rb"\1" + NO_API + rb"\2", b"".join(chunks))
        if found != 1 or body.count(b"\"named_endpoints\"") != 1:  # a page this code cannot clean: show nothing
            log.error("the login page still carries the API description; refusing to serve it")
            return await refuse(scope, send, 503, "login page unavailable")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length",)]
        if scope.get("method") != "HEAD":
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope.get("method") != "HEAD" else b""})


# ---------------------------------------------------------------- request parts

TOO_LARGE = object()


def served_by_gradio(scope) -> bool:
    """True when no route of the app itself (REST, health, docs) matches: the mounted UI answers it."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        if isinstance(route, Mount) and route.path in ("", "/"):
            continue
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return False
    return True


async def read_json_body(scope, receive):
    """The parsed JSON body of a POST (and a ``receive`` that replays it), else ``None``."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None, receive
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    if not content_type.startswith(b"application/json"):
        return None, receive
    raw = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, receive
        raw += message.get("body", b"")
        if len(raw) > MAX_JSON_BODY:
            return TOO_LARGE, receive
        more = message.get("more_body", False)
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": bytes(raw), "more_body": False}
        return await receive()

    try:
        body = json.loads(raw)
    except ValueError:
        body = None  # Gradio answers bad JSON itself
    return (body if isinstance(body, dict) else None), replay


def session_of(scope, body: dict | None) -> str | None:
    """The ``session_hash`` a request acts on: in its path, its query or its JSON body."""
    if match := SESSION_IN_PATH.match(scope["path"]):
        return match["beat"] or match["stream"]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("session_hash"):
        return query["session_hash"][0]
    value = (body or {}).get("session_hash")
    return value if isinstance(value, str) and value else None


def event_of(path: str, body: dict | None) -> str | None:
    """The ``event_id`` (a job) a request acts on, from its path or its JSON body."""
    if RECORDS_EVENT.match(path):
        return None  # this request starts the job; its id comes back in the answer
    if match := EVENT_IN_PATH.match(path):
        return match["id"]
    value = (body or {}).get("event_id")
    return value if isinstance(value, str) and value else None


async def refuse(scope, send, status: int, message: str):
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    payload = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
