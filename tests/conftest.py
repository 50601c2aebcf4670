"""Shared fixtures: tiny offline models, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``tiny_models(*ids) -> Path``: a models folder holding the tiny model of each id (built on demand)."""
    models_dir: Path = tmp_path_factory.mktemp("models")

    def ensure(*ids: str) -> Path:
        from studio.tiny import build

        missing = [model_id for model_id in ids if not (models_dir / model_id).is_dir()]
        if missing:
            build(models_dir, missing)
        return models_dir

    return ensure


@pytest.fixture(scope="session")
def tiny_catalog(tiny_models):
    """``tiny_catalog(*ids) -> Catalog`` whose specs load the tiny folders."""
    from studio.catalog import load_catalog

    def make(*ids: str):
        return load_catalog(tiny_models(*ids))

    return make


@pytest.fixture(scope="session")
def lora_models(tmp_path_factory) -> Path:
    """Its own tiny SDXL and FLUX with their tiny LoRAs in ``loras/`` (the shared models folder gains
    neither: other tests count its models)."""
    from studio.tiny import build
    from studio.tiny.lora import build_loras

    folder = tmp_path_factory.mktemp("lora-models")
    build(folder, ["sdxl-base", "flux-schnell"])
    build_loras(folder)
    return folder
