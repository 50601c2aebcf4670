"""Each model's weight bytes per component (denoiser, text encoders, VAE), from its own files.

Torch-free. In order of trust: the safetensors headers on disk (a models folder, or the hub cache after
a download: parameter counts x 2 bytes, the CUDA dtype), the hub's file listing before a download
(file sizes; fp32 files halved), and last the catalog's ``weights_gb`` figures ("catalog estimate").
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from studio.catalog import ModelSpec
from studio.memory import Weights

log = logging.getLogger(__name__)

HALF_BYTES = 2  # the CUDA dtypes of the catalog (bfloat16, float16)
WEIGHT_SUFFIX = ".safetensors"
HEADER_LIMIT = 100 * 2**20  # a safetensors header above this is a broken file, not a model
SKIPPED = ("image_encoder", "safety_checker")  # in some repos' folders, never loaded by the studio
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I8": 1,
               "U8": 1, "BOOL": 1}


def parameters(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone (the first bytes of the file)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > HEADER_LIMIT:
            raise ValueError(f"{path.name}: a {length}-byte header is not a safetensors header")
        header = json.loads(handle.read(length))
    count = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        start, end = tensor["data_offsets"]
        count += (end - start) // DTYPE_BYTES.get(tensor["dtype"], 2)
    return count


def from_paths(paths: list[Path], root: Path) -> Weights | None:
    """Components named by the folder holding their files; a name seen twice (Stable Cascade's two stages
    each keep a copy of the same text encoder) counts once, the largest."""
    folders: dict[Path, int] = {}
    for path in paths:
        if path.parent == root or path.parent.name in SKIPPED:
            continue
        folders[path.parent] = folders.get(path.parent, 0) + parameters(path) * HALF_BYTES
    components: dict[str, int] = {}
    for folder, size in folders.items():
        components[folder.name] = max(components.get(folder.name, 0), size)
    return Weights(tuple(sorted(components.items())), "files on disk") if components else None


def on_disk(folder: Path) -> Weights | None:
    """A local model folder's weights (every safetensors file under it)."""
    return from_paths(sorted(Path(folder).rglob("*" + WEIGHT_SUFFIX)), Path(folder))


def from_listing(plan, catalog: Weights) -> Weights | None:
    """The hub's file sizes of a download plan (``hub.ModelPlan``), per component folder. File sizes are the
    stored dtype's: a component twice the catalog's half-precision figure is stored in fp32, and halved."""
    stored: dict[str, int] = {}
    for repo in plan.repos:
        for path, size in repo.files.items():
            parts = path.split("/")
            if len(parts) == 2 and path.endswith(WEIGHT_SUFFIX) and parts[0] not in SKIPPED:
                stored[parts[0]] = stored.get(parts[0], 0) + size
    expected = dict(catalog.components)
    components = {
        name: size // 2 if expected.get(name) and size > 1.5 * expected[name] else size for name, size in stored.items()
    }
    return Weights(tuple(sorted(components.items())), "hub file sizes") if components else None


def measure(spec: ModelSpec, plan=None) -> Weights:
    """The best sizes known for ``spec`` without a download: its files on disk, the hub's listing (``plan``, or
    the listing cached by an earlier download), else the catalog's figures."""
    from studio import hub

    catalog = spec.catalog_weights()
    try:
        if spec.local_dir is not None:
            return on_disk(spec.local_dir) or catalog
        if plan is None:
            plan = hub.plan_model(spec, online=False)
        if plan.missing() == 0:
            return from_paths(hub.snapshot_paths(plan), hub.cache_dir()) or catalog
        return from_listing(plan, catalog) or catalog
    except Exception as exc:  # no listing cached, an unreadable file: the catalog's figures stand
        log.debug("%s: sizes from the catalog (%s: %s)", spec.id, type(exc).__name__, exc)
        return catalog
