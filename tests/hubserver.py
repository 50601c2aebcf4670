"""A small Hugging Face hub for tests: serves local folders under real repo ids on 127.0.0.1.

It speaks the part of the hub protocol that huggingface_hub 2.x and diffusers use to download:
model info (``/api/models/REPO[/revision/REV]``), the recursive tree listing
(``/api/models/REPO/tree/REV``), and HEAD and (ranged) GET of ``/REPO/resolve/REV/PATH`` with
the headers huggingface_hub checks (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Content-Length``, ``Content-Range``). Point ``HF_ENDPOINT`` at ``url``.

Faults, set on the running server: ``throttle_bps`` (bytes per second of every file body),
``drop_after[path] = n`` (the next GET of that file ends after n bytes, once), ``gated`` and
``missing`` (repo ids answered 401 ``GatedRepo`` / 404 ``RepoNotFound``). ``requests`` records
every request as ``(method, repo, path, range)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

WEIGHT_NAME = re.compile(r"^(diffusion_pytorch_model|model)((-\d{5}-of-\d{5})?)\.safetensors$")
CHUNK = 64 * 1024


@dataclass
class HubFile:
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:  # what git calls the blob: sha1 of "blob <size>\0<data>"
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str = ""

    def __post_init__(self):
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + self.files[path].git_oid.encode())
        self.commit = digest.hexdigest()


def repo_from_folder(folder: Path, variant: str | None = None, extra: dict[str, bytes] | None = None) -> HubRepo:
    """A folder saved by ``save_pretrained`` as a hub repo; ``variant`` renames the weights as a
    variant upload names them (``model.safetensors`` -> ``model.fp16.safetensors``)."""
    files = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if variant:
            head, _, base = name.rpartition("/")
            match = WEIGHT_NAME.match(base)
            if match:
                base = f"{match.group(1)}.{variant}{match.group(2)}.safetensors"
            elif base.endswith(".safetensors.index.json"):
                base = base.replace(".safetensors.index.json", f".safetensors.index.{variant}.json")
                text = path.read_text()
                files[f"{head}/{base}" if head else base] = HubFile(_variant_index(text, variant).encode(), False)
                continue
            name = f"{head}/{base}" if head else base
        files[name] = HubFile(path.read_bytes(), lfs=name.endswith(".safetensors"))
    for name, data in (extra or {}).items():
        files[name] = HubFile(data, lfs=name.endswith((".safetensors", ".bin")))
    return HubRepo(files)


def _variant_index(text: str, variant: str) -> str:
    index = json.loads(text)
    index["weight_map"] = {
        key: re.sub(r"(-\d{5}-of-\d{5})\.safetensors$", rf".{variant}\1.safetensors", value)
        for key, value in index["weight_map"].items()
    }
    return json.dumps(index)


@dataclass
class HubServer:
    repos: dict[str, HubRepo]
    url: str = ""
    throttle_bps: float | None = None
    drop_after: dict[str, int] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    def downloads(self, repo: str | None = None) -> list[str]:
        """Paths whose bodies were requested (GET of resolve URLs), in order."""
        return [path for method, r, path, _ in self.requests if method == "GET-file" and repo in (None, r)]


def _split_repo(parts: list[str], repos: dict) -> tuple[str, list[str]]:
    """``["org", "name", "tree", ...]`` -> ``("org/name", ["tree", ...])`` (repo ids have one slash)."""
    return "/".join(parts[:2]), parts[2:]


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the tests read hub.requests instead
            pass

        def do_HEAD(self):
            self._route(body=False)

        def do_GET(self):
            self._route(body=True)

        def _route(self, body: bool):
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["api", "models"]:
                repo_id, rest = _split_repo(parts[2:], hub.repos)
                self._api(repo_id, rest, body)
            else:
                repo_id, rest = _split_repo(parts, hub.repos)
                if len(rest) >= 3 and rest[0] == "resolve":
                    self._file(repo_id, rest[1], "/".join(rest[2:]), body)
                else:
                    self._error(404, "EntryNotFound", "no such route")

        def _repo(self, repo_id: str, revision: str | None) -> HubRepo | None:
            if repo_id in hub.gated:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it.")
                return None
            repo = hub.repos.get(repo_id)
            if repo is None or repo_id in hub.missing:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if revision not in (None, "main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo

        def _api(self, repo_id: str, rest: list[str], body: bool):
            hub.requests.append(("API", repo_id, "/".join(rest), None))
            if rest[:1] == ["tree"]:
                repo = self._repo(repo_id, rest[1] if len(rest) > 1 else None)
                if repo is not None:
                    prefix = "/".join(rest[2:])
                    entries = [_tree_entry(path, f) for path, f in repo.files.items() if path.startswith(prefix)]
                    self._json(entries, body)
                return
            revision = rest[1] if rest[:1] == ["revision"] and len(rest) > 1 else None
            repo = self._repo(repo_id, revision)
            if repo is not None:
                info = {
                    "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False, "gated": False,
                    "disabled": False, "downloads": 0, "likes": 0, "tags": ["diffusers"],
                    "siblings": [{"rfilename": path} for path in repo.files],
                }
                self._json(info, body)

        def _file(self, repo_id: str, revision: str, path: str, body: bool):
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            hub_file = repo.files.get(path)
            if hub_file is None:
                self._error(404, "EntryNotFound", f"{path} does not exist", commit=repo.commit)
                return
            data, start = hub_file.data, 0
            range_header = self.headers.get("Range")
            hub.requests.append(("GET-file" if body else "HEAD", repo_id, path, range_header))
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            status = 200
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                status = 206
                data = data[start:end + 1]
            self.send_response(status)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{hub_file.etag}"')
            if hub_file.lfs:
                self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
                self.send_header("X-Linked-Size", str(len(hub_file.data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{len(hub_file.data)}")
            self.end_headers()
            if body:
                self._send_body(path, data)

        def _send_body(self, path: str, data: bytes):
            limit = hub.drop_after.pop(path, None)
            sent = 0
            while sent < len(data):
                chunk = data[sent:sent + CHUNK]
                if limit is not None and sent + len(chunk) > limit:
                    self.wfile.write(chunk[: max(0, limit - sent)])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # a dropped connection, mid-file
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                if hub.throttle_bps:
                    time.sleep(len(chunk) / hub.throttle_bps)

        def _json(self, payload, body: bool):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, commit: str | None = None):
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def _tree_entry(path: str, hub_file: HubFile) -> dict:
    entry = {"type": "file", "oid": hub_file.git_oid, "size": len(hub_file.data), "path": path}
    if hub_file.lfs:
        entry["lfs"] = {"oid": hub_file.sha256, "size": len(hub_file.data), "pointerSize": 134}
    return entry


# What a real repo holds besides the diffusers folders: a single-file checkpoint and pickled weights.
EXTRA = {"sd_xl_turbo_1.0_fp16.safetensors": b"x" * 5000, "unet/diffusion_pytorch_model.bin": b"y" * 3000}


def hub_repos(models_dir: Path, ids) -> dict[str, HubRepo]:
    """The tiny models of ``ids`` (built in ``models_dir``) as repos under the catalog's real repo ids and variants."""
    from studio.catalog import load_catalog

    catalog, repos = load_catalog(), {}
    for model_id in ids:
        spec = catalog.get(model_id)
        if spec.family == "cascade":  # the two stages are two repos on the hub
            repos[spec.prior_repo] = repo_from_folder(models_dir / model_id / "prior", spec.variant)
            repos[spec.repo] = repo_from_folder(models_dir / model_id / "decoder", spec.variant)
        else:
            repos[spec.repo] = repo_from_folder(models_dir / model_id, spec.variant, EXTRA)
    return repos


def use_hub(monkeypatch, hub: HubServer, hf_home: Path, environment: bool = True) -> None:
    """Point huggingface_hub at ``hub`` with the cache in ``hf_home``: in this process (its settings
    are read at import, and conftest made tests offline) and, with ``environment``, in the
    processes started from here (workers, the CLI)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(hf_home) / "hub"))
    if environment:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(hf_home))


@contextmanager
def serve_hub(repos: dict[str, HubRepo]):
    """Run a ``HubServer`` for the block; yields it (``hub.url`` is the ``HF_ENDPOINT``)."""
    hub = HubServer(repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="hubserver", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
