"""The only code that knows diffusers: one adapter module per model family.

Every adapter module exposes the same two functions:

    load(spec: ModelSpec, device: str) -> pipeline
    generate(pipe, spec: ModelSpec, request: GenerationRequest, on_step) -> list[PIL.Image]

``request`` is already resolved by ``ModelSpec.check`` (no field is None).
``on_step(step, total, preview)`` is called after each denoising step; it raises
``JobCancelled`` to stop the job, which propagates out of ``generate``. ``preview`` is a
function that makes a cheap preview image of the current latents (``studio.families.preview``),
called only for the steps that get one.

Edits: ``EDIT_PIPELINES`` is the task table. For a family listed there, the engine turns the
loaded text-to-image pipeline into the task's pipeline with diffusers' ``from_pipe`` (the same
components, no second load), and the adapter's ``generate`` passes the request's image, mask and
strength (``base.edit_arguments``). Pipeline classes are named as strings, so this table is
also what the torch-free parent reads to say which model can do what.
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

TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
INPAINTING = "inpainting"

# The diffusers pipelines of each edit task, per family (diffusers 0.42 has none for PixArt,
# Sana 1.5, HunyuanDiT, Lumina-Next or Stable Cascade).
EDIT_PIPELINES: dict[str, dict[str, str]] = {
    "sdxl": {IMAGE_TO_IMAGE: "StableDiffusionXLImg2ImgPipeline", INPAINTING: "StableDiffusionXLInpaintPipeline"},
    "flux": {IMAGE_TO_IMAGE: "FluxImg2ImgPipeline", INPAINTING: "FluxInpaintPipeline"},
    "chroma": {IMAGE_TO_IMAGE: "ChromaImg2ImgPipeline", INPAINTING: "ChromaInpaintPipeline"},
}


def tasks(family: str) -> tuple[str, ...]:
    """The tasks a family's models can run, text-to-image first."""
    return (TEXT_TO_IMAGE, *EDIT_PIPELINES.get(family, {}))


def task_pipeline(pipe, family: str, task: str):
    """The pipeline for ``task`` over the components of the loaded text-to-image ``pipe``."""
    if task == TEXT_TO_IMAGE:
        return pipe
    import diffusers  # worker-side only

    pipeline_class = getattr(diffusers, EDIT_PIPELINES[family][task])
    derived = pipeline_class.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    fix = getattr(adapter(family), "fix_task_pipeline", None)  # a family's workaround for its edit pipelines
    if fix is not None:
        fix(derived, task)
    return derived


def adapter(family: str) -> ModuleType:
    return importlib.import_module(FAMILIES[family])


def load_pipeline(spec, device: str):
    return adapter(spec.family).load(spec, device)


def generate(pipe, spec, request, on_step):
    return adapter(spec.family).generate(pipe, spec, request, on_step)
