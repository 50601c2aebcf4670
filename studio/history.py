"""The image history: PNGs in the outputs folder, newest first.

The PNG files are the only record: each carries its generation parameters
(``studio.pngmeta``), so the history survives a restart, a copied folder or a
hand-deleted file without an index that could drift out of step. File names
start with a sortable UTC timestamp, so newest-first is a sort by name.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from studio import pngmeta

DEFAULT_LIMIT = 100  # what a listing returns at most; the folder itself is never pruned
OWNER_KINDS = ("users", "api")  # web UI logins, named REST API keys


def owner_dir(outputs_dir: str | Path, owner: str | None, kind: str = "users") -> Path:
    """The folder that holds one owner's images: the only place their history reads and writes.

    No owner (no logins, unnamed API key): ``outputs/`` itself for the UI, ``outputs/api/`` for REST.
    A login ``ann``: ``outputs/users/ann/``; an API key named ``ci``: ``outputs/api/ci/``. Names are
    encoded one-to-one into a file-name part (``safe_name``), so no login can reach another's folder.
    """
    if kind not in OWNER_KINDS:
        raise ValueError(f"owner kind must be one of {OWNER_KINDS}, not {kind!r}")
    root = Path(outputs_dir)
    if owner is None:
        return root / "api" if kind == "api" else root
    return root / kind / safe_name(owner)


def safe_name(name: str) -> str:
    """``name`` as one path part, one-to-one: ASCII letters, digits and ``-`` stay, anything else
    (``_`` included, so the escape itself is unambiguous) becomes ``_`` and two hex digits per UTF-8 byte.
    """
    if not name:
        raise ValueError("an owner name must not be empty")
    return "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch == "-" else "".join(f"_{b:02x}" for b in ch.encode())
        for ch in name
    )


@dataclass(frozen=True)
class Entry:
    path: Path
    params: dict

    @property
    def caption(self) -> str:
        """One line for a gallery tile: model, size, steps and seed."""
        p = self.params
        if not p:
            return self.path.name
        parts = [p.get("model") or "?"]
        if p.get("width") and p.get("height"):
            parts.append(f"{p['width']}×{p['height']}")
        if p.get("steps"):
            parts.append(f"{p['steps']} steps")
        if p.get("seed") is not None:
            parts.append(f"seed {p['seed']}")
        return " · ".join(parts)


class History:
    """Saves PNG bytes into ``folder`` and lists them back, newest first."""

    def __init__(self, folder: str | Path, limit: int = DEFAULT_LIMIT):
        self.folder = Path(folder)
        self.limit = limit
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def save(self, png: bytes, params: dict | None = None) -> Path:
        """Write one PNG (metadata already inside) and return its path.

        ``params`` only names the file (model, seed); the metadata in ``png`` is the record.
        """
        params = params if params is not None else pngmeta.read(png)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self._stem(params)
        for attempt in itertools.count():
            path = self.folder / (f"{stem}.png" if attempt == 0 else f"{stem}-{attempt}.png")
            try:
                with open(path, "xb") as handle:  # exclusive: two saves never share a name
                    handle.write(png)
                return path
            except FileExistsError:
                continue
        raise AssertionError("unreachable")

    def entries(self, limit: int | None = None) -> list[Entry]:
        """The newest images first, at most ``limit`` (default: this history's limit)."""
        limit = self.limit if limit is None else limit
        if not self.folder.is_dir():
            return []
        paths = sorted(self.folder.glob("*.png"), key=_sort_key, reverse=True)
        entries = []
        for path in paths:
            if len(entries) >= limit:
                break
            try:
                params = pngmeta.read(path)
            except (OSError, ValueError, SyntaxError):  # a half-written or foreign file: skip it
                continue
            entries.append(Entry(path=path, params=params))
        return entries

    def _stem(self, params: dict) -> str:
        # Microseconds plus a per-process counter keep names ordered even within one batch.
        with self._lock:
            sequence = next(self._counter) % 1000
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        model = _safe(str(params.get("model") or "image"))
        seed = params.get("seed")
        suffix = f"-{seed}" if seed is not None else ""
        return f"{stamp}{sequence:03d}-{model}{suffix}"


def _sort_key(path: Path) -> str:
    """Our names sort by their timestamp; a file put there by hand sorts by its modification time."""
    if path.name[:8].isdigit():
        return path.name
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return ""
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y%m%d-%H%M%S-%f") + "999-" + path.name


def _safe(text: str) -> str:
    """A model id as a file-name part: letters, digits, dot and dash only."""
    return "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in text)[:40]
