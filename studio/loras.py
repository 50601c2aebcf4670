"""The LoRA library: ``.safetensors`` files in ``--lora-dir``, what each fits, and a request's names.

Runs in the parent (never imports torch): a file is read as safetensors' own layout (an 8-byte
header length, a JSON header, the tensor bytes), which is enough to check it whole, to tell which
family its keys fit, to find its trigger words and to hash it as A1111 does. Pickles (``.ckpt``,
``.pt``, ``.bin``) are never loaded: unpickling runs whatever code the file holds.

Key formats read: kohya/A1111 (``lora_unet_...lora_down.weight``, what Civitai serves; FLUX ones
with Black Forest Labs' block names) and diffusers/PEFT (``unet.``/``transformer.`` +
``lora_A``/``lora_B``), plus ComfyUI's ``diffusion_model.`` prefix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from studio.errors import InvalidRequest, echo

SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
FIELD = "loras"
TRIGGERS_SHOWN = 5

# Which families a LoRA's keys fit; the first named is the family it is "for".
FLUX_FITS = ("flux", "chroma")  # Chroma is FLUX.1 [schnell]'s transformer, loaded by the same loader
SDXL_FITS = ("sdxl",)
SANA_FITS = ("sana",)


class LoraError(InvalidRequest):
    """A LoRA name or file a request cannot use: always names the ``loras`` field."""

    def __init__(self, message: str, field: str | None = FIELD):
        super().__init__(message, field)


class LoraListing(TypedDict):
    """One LoRA as the listings give it (GET /v1/loras, the Gradio API's /loras, the UI's picker)."""

    name: str  # what a request's `loras` names
    family: str  # the family it is for, read from its keys
    fits: list[str]  # the families that take it
    models: list[str]  # the catalog's models that take it
    size_bytes: int
    trigger_words: list[str]
    hash: str  # A1111's short hash


@dataclass(frozen=True)
class LoraFile:
    """One LoRA on disk, as the library lists it."""

    name: str  # its path under the library folder, without ``.safetensors``
    path: Path
    family: str  # the family it is for ("sdxl", "flux", "sana"; "sd1" and "unknown" fit no model here)
    fits: tuple[str, ...]  # the catalog families that take it
    size_bytes: int
    triggers: tuple[str, ...]
    short_hash: str  # A1111's "Lora hashes" entry: sha256 of the tensor bytes, first 12 hex digits

    def listing(self, models: list[str]) -> LoraListing:
        """For the listings; ``models``: the catalog's models that take it."""
        return {"name": self.name, "family": self.family, "fits": list(self.fits), "models": models,
                "size_bytes": self.size_bytes, "trigger_words": list(self.triggers), "hash": self.short_hash}


def read_header(path: Path) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file, checked whole: a truncated or corrupt file raises
    ``LoraError`` (its tensors must fill the file exactly as the header says)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise LoraError(f"{FIELD}: {path.name} is not a safetensors file (too short)")
        length = int.from_bytes(head, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise LoraError(f"{FIELD}: {path.name} is not a safetensors file, or is truncated (bad header length)")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError):
            raise LoraError(f"{FIELD}: {path.name} is corrupt (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise LoraError(f"{FIELD}: {path.name} is corrupt (its header is not a table)")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise LoraError(f"{FIELD}: {path.name} is corrupt (tensor {echo(name, 60)} has no valid offsets)")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise LoraError(f"{FIELD}: {path.name} is truncated or corrupt ({size} bytes; its header "
                        f"describes {8 + length + end})")
    if not header:
        raise LoraError(f"{FIELD}: {path.name} holds no tensors")
    return header, metadata if isinstance(metadata, dict) else {}


def family_of(keys) -> tuple[str, tuple[str, ...]]:
    """The family a LoRA's keys are for, and the catalog families that take it."""
    keys = list(keys)

    def has(pattern: str) -> bool:
        return any(re.search(pattern, key) for key in keys)

    if has(r"double_blocks|single_blocks|single_transformer_blocks|\.add_q_proj|context_embedder"):
        return "flux", FLUX_FITS
    if has(r"conv_inverted|caption_projection") or (has(r"^transformer\.") and has(r"\.attn2\.")):
        return "sana", SANA_FITS
    if has(r"^(lora_unet_|lora_te|unet\.|text_encoder)"):
        # SDXL has two text encoders and no attention in its first down block; SD 1.x/2.x the opposite.
        if has(r"^lora_te2_|^text_encoder_2\."):
            return "sdxl", SDXL_FITS
        if has(r"input_blocks_1_1_|down_blocks[._]0[._]attentions|^lora_te_"):
            return "sd1", ()
        return "sdxl", SDXL_FITS
    return "unknown", ()


def trigger_words(metadata: dict) -> tuple[str, ...]:
    """The words a LoRA was trained on: its modelspec trigger phrase, else kohya's most frequent tags."""
    phrase = metadata.get("modelspec.trigger_phrase")
    if isinstance(phrase, str) and phrase.strip():
        return tuple(word.strip() for word in phrase.split(",") if word.strip())[:TRIGGERS_SHOWN]
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except ValueError:
        return ()
    counts: dict[str, int] = {}
    for tags in frequency.values() if isinstance(frequency, dict) else ():
        for tag, count in (tags.items() if isinstance(tags, dict) else ()):
            counts[tag.strip()] = counts.get(tag.strip(), 0) + int(count)
    return tuple(sorted(counts, key=lambda tag: (-counts[tag], tag))[:TRIGGERS_SHOWN])


def short_hash(path: Path) -> str:
    """A1111's LoRA hash of a safetensors file: sha256 of what follows the header, first 12 hex digits."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        file.seek(8 + length)
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


class LoraLibrary:
    """The ``.safetensors`` files under one folder (subfolders too), read lazily and cached by mtime."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._read: dict[Path, tuple[float, LoraFile]] = {}

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.relative_to(self.folder).as_posix()[: -len(SUFFIX)]
                      for path in self.folder.rglob(f"*{SUFFIX}") if path.is_file())

    def all(self) -> list[LoraFile]:
        """Every readable LoRA (an unreadable file is left out of the list; using it names the fault)."""
        files = []
        for name in self.names():
            try:
                files.append(self.get(name))
            except LoraError:
                continue
        return files

    def get(self, name: str) -> LoraFile:
        """The LoRA called ``name`` (with or without ``.safetensors``), checked; ``LoraError`` naming
        what is wrong otherwise."""
        path = self.path_of(name)
        return self.read(path, path.relative_to(self.folder.resolve()).as_posix()[: -len(SUFFIX)])

    def read(self, path: Path, name: str) -> LoraFile:
        """The LoRA file at ``path`` (in the folder, or a hub LoRA in the cache) called ``name``, checked."""
        mtime = path.stat().st_mtime
        cached = self._read.get(path)
        if cached and cached[0] == mtime and cached[1].name == name:
            return cached[1]
        tensors, metadata = read_header(path)
        family, fits = family_of(tensors)
        lora = LoraFile(name=name, path=path, family=family, fits=fits, size_bytes=path.stat().st_size,
                        triggers=trigger_words(metadata), short_hash=short_hash(path))
        self._read[path] = (mtime, lora)
        return lora

    def path_of(self, name: str) -> Path:
        """Where ``name`` lives under the folder; refuses absolute paths, ``..``, pickles and unknowns."""
        shown = echo(name, 80)
        if not name or name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
            raise LoraError(f"{FIELD}: '{shown}' is not a LoRA name (use a name from GET /v1/loras)")
        if any(part in ("..", ".") for part in name.split("/")):
            raise LoraError(f"{FIELD}: '{shown}' climbs out of the LoRA folder")
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise LoraError(f"{FIELD}: '{shown}' is not a .safetensors file; pickled formats (.ckpt, .pt, .bin) "
                            "can run code when loaded and are never loaded")
        stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
        root = self.folder.resolve()
        path = (root / f"{stem}{SUFFIX}").resolve()
        if not path.is_relative_to(root):  # a link that leads outside
            raise LoraError(f"{FIELD}: '{shown}' climbs out of the LoRA folder")
        if not path.is_file():
            known = self.names()
            close = difflib.get_close_matches(stem, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; the library has {', '.join(known[:10])}" if known else f"; the LoRA folder {self.folder} is empty")
            raise LoraError(f"{FIELD}: unknown LoRA '{shown}'{hint}")
        return path
