"""The only code that knows diffusers: one adapter module per model family.

Every adapter module exposes the same two functions:

    load(spec: ModelSpec, device: str) -> pipeline
    generate(pipe, spec: ModelSpec, request: GenerationRequest, on_step) -> list[PIL.Image]

``request`` is already resolved by ``ModelSpec.check`` (no field is None).
``on_step(step, total)`` is called after each denoising step; it raises
``JobCancelled`` to stop the job, which propagates out of ``generate``.
Adapters are imported lazily so the parent process never imports torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILIES = {
    "sdxl": "studio.families.sdxl",
    "flux": "studio.families.flux",
    "chroma": "studio.families.chroma",
    "pixart": "studio.families.pixart",
    "sana": "studio.families.sana",
    "hunyuan": "studio.families.hunyuan",
    "lumina": "studio.families.lumina",
    "cascade": "studio.families.cascade",
}


def adapter(family: str) -> ModuleType:
    return importlib.import_module(FAMILIES[family])


def load_pipeline(spec, device: str):
    return adapter(spec.family).load(spec, device)


def generate(pipe, spec, request, on_step):
    return adapter(spec.family).generate(pipe, spec, request, on_step)
