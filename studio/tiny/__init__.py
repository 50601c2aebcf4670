"""Tiny random-weight pipelines of every catalog model, built offline.

``python -m studio.tiny DIR [ID ...]`` saves ``DIR/<model-id>/`` with
``save_pretrained`` plus a ``studio.toml`` that shrinks the model's defaults
and limits, so ``--models-dir DIR`` runs the real loading code in seconds on CPU.

Each family has a builder module here (its record's ``tiny``) exposing
``build(spec, out_dir: Path) -> dict``: it saves the pipeline (right class,
right components, tokenizers from ``studio.tiny.tokenizers``) and returns the
overrides specific to that family (merged over ``TINY_OVERRIDES``).
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from studio import families
from studio.catalog import OVERRIDE_FILE, load_catalog

# Defaults small enough for a CPU test in about a second. The limits take the real models' sizes up to
# 1024x1024, so a request written for the real model (README's examples) runs here as written; the
# real models' bigger sizes would take minutes on a CPU even with tiny weights (PixArt's 4096x4096:
# over 8 min on 2 cores). Each family may tighten or replace these.
TINY_MAX_SIDE = 1024
TINY_OVERRIDES = {
    "build": "a tiny random-weight test build",  # what the UI's cards say the limits and defaults come from
    "defaults": {"steps": 2, "width": 64, "height": 64},
    "limits": {"min_side": 32, "max_side": TINY_MAX_SIDE, "max_pixels": TINY_MAX_SIDE * TINY_MAX_SIDE},
}


def _merge(base: dict, extra: dict) -> dict:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in extra.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


def _toml(overrides: dict) -> str:
    """Write the two-level override tables as TOML (only ints, floats, strings and lists of strings)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for key, table in overrides.items():
        if not isinstance(table, dict):
            lines.insert(0, f"{key} = {value(table)}")
    for key, table in overrides.items():
        if isinstance(table, dict):
            lines.append(f"\n[{key}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def build(models_dir: str | Path, ids: list[str] | None = None) -> list[Path]:
    """Build the tiny model of each id (all 15 by default) under ``models_dir``; returns their folders."""
    import torch  # only here: the catalog part of this package stays torch-free

    catalog = load_catalog()
    specs = [catalog.get(model_id) for model_id in ids] if ids else list(catalog)
    built = []
    for spec in specs:
        out_dir = Path(models_dir) / spec.id
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        torch.manual_seed(0)  # the same tiny weights on every machine
        builder = importlib.import_module(families.FAMILIES[spec.family].tiny)
        overrides = _merge(TINY_OVERRIDES, builder.build(spec, out_dir) or {})
        (out_dir / OVERRIDE_FILE).write_text(_toml(overrides))
        built.append(out_dir)
    return built
