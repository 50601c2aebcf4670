"""The image history: PNGs in the outputs folder, newest first.

The PNG files are the only record: each carries its generation parameters
(``studio.pngmeta``), so the history survives a restart, a copied folder or a
hand-deleted file without an index that could drift out of step. File names
start with a sortable UTC timestamp, so newest-first is a sort by name.
"""

from __future__ import annotations

import itertools
import os
import tempfile
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


CAPTION_PROMPT = 80  # characters of the prompt a gallery caption shows


@dataclass(frozen=True)
class Entry:
    path: Path
    params: dict

    @property
    def created(self) -> datetime:
        """When the image was saved: from our file name, else the file's modification time."""
        try:
            return datetime.strptime(self.path.name[:22], "%Y%m%d-%H%M%S-%f").replace(tzinfo=UTC)
        except ValueError:
            return datetime.fromtimestamp(self.path.stat().st_mtime, UTC)

    @property
    def caption(self) -> str:
        """One line for a gallery tile: the prompt, then model, size, seed and the date."""
        p = self.params
        if not p:
            return self.path.name
        prompt = " ".join(str(p.get("prompt") or "").split())
        if len(prompt) > CAPTION_PROMPT:
            prompt = prompt[: CAPTION_PROMPT - 1] + "…"
        parts = [p.get("model") or "?"]
        if p.get("width") and p.get("height"):
            parts.append(f"{p['width']}×{p['height']}")
        if p.get("seed") is not None:
            parts.append(f"seed {p['seed']}")
        parts.append(self.created.strftime("%Y-%m-%d %H:%M UTC"))
        return (f"{prompt} — " if prompt else "") + " · ".join(parts)

    def matches(self, query: str) -> bool:
        """Every word of ``query`` is in the prompt, negative prompt, model, seed or date (any case)."""
        p = self.params
        text = " ".join(
            str(value) for value in (p.get("prompt"), p.get("negative_prompt"), p.get("model"), p.get("seed"),
                                     self.created.strftime("%Y-%m-%d"), self.path.name) if value is not None
        ).lower()
        return all(word in text for word in query.lower().split())


class History:
    """Saves PNG bytes into ``folder`` and lists them back, newest first.

    ``everything``: the listing also takes the folders below ``folder`` (an admin's view of
    ``outputs/``: every login's and API key's images).
    """

    def __init__(self, folder: str | Path, limit: int = DEFAULT_LIMIT, everything: bool = False):
        self.folder = Path(folder)
        self.limit = limit
        self.everything = everything
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def save(self, png: bytes, params: dict | None = None) -> Path:
        """Write one PNG (metadata already inside) and return its path.

        ``params`` only names the file (model, seed); the metadata in ``png`` is the record.
        """
        params = params if params is not None else pngmeta.read(png)
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self._stem(params)
        # Written whole under a hidden name first, then linked in: a reader (the History tab, another
        # session, a client polling the folder) never sees half a PNG.
        with tempfile.NamedTemporaryFile(dir=self.folder, prefix=f".{stem}.", suffix=".part", delete=False) as part:
            part.write(png)
        try:
            for attempt in itertools.count():
                path = self.folder / (f"{stem}.png" if attempt == 0 else f"{stem}-{attempt}.png")
                try:
                    os.link(part.name, path)  # exclusive, like open(..., "x"): two saves never share a name
                    return path
                except FileExistsError:
                    continue
        finally:
            os.unlink(part.name)
        raise AssertionError("unreachable")

    def entries(self, limit: int | None = None, query: str = "") -> list[Entry]:
        """The newest images first, at most ``limit`` (default: this history's limit), matching ``query``."""
        limit = self.limit if limit is None else limit
        entries = []
        for path in self._paths():
            if len(entries) >= limit:
                break
            try:
                params = pngmeta.read(path)
            except (OSError, ValueError, SyntaxError):  # a half-written or foreign file: skip it
                continue
            entry = Entry(path=path, params=params)
            if not query.strip() or entry.matches(query):
                entries.append(entry)
        return entries

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` is an image of this history (so its owner may see, reuse or delete it)."""
        target = Path(path).resolve()
        return target.suffix == ".png" and any(target.parent == folder.resolve() for folder in self._folders())

    def delete(self, path: str | Path) -> None:
        """Delete one image of this history: that file, nothing else."""
        if not self.holds(path):
            raise PermissionError(f"{Path(path).name} is not an image of this history")
        Path(path).unlink(missing_ok=True)

    def prune(self, keep_days: float | None = None, keep_images: int | None = None) -> int:
        """Delete the images older than ``keep_days`` and those past the newest ``keep_images``.

        Each folder keeps its own count (one login's images never push out another's). Returns how
        many files went. ``None`` or 0 keeps everything.
        """
        if not keep_days and not keep_images:
            return 0
        cutoff = datetime.now(UTC).timestamp() - keep_days * 86400 if keep_days else None
        removed = 0
        for folder in self._folders():
            for rank, path in enumerate(sorted(folder.glob("*.png"), key=_sort_key, reverse=True)):
                try:
                    old = cutoff is not None and path.stat().st_mtime < cutoff
                    if old or (keep_images and rank >= keep_images):
                        path.unlink()
                        removed += 1
                except OSError:  # gone already (another pruner, a hand delete)
                    continue
        return removed

    def _folders(self) -> list[Path]:
        """This history's folder; for ``everything``, also the owner folders ``owner_dir`` makes below it
        (and no other folder, so retention never touches images a user keeps elsewhere in there)."""
        if not self.folder.is_dir():
            return []
        if not self.everything:
            return [self.folder]
        folders = [self.folder]
        for kind in OWNER_KINDS:
            shared = self.folder / kind
            if shared.is_dir():
                folders += [shared, *sorted(path for path in shared.iterdir() if path.is_dir())]
        return folders

    def _paths(self) -> list[Path]:
        paths = [path for folder in self._folders() for path in folder.glob("*.png")]
        return sorted(paths, key=_sort_key, reverse=True)

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
