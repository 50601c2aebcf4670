"""SDXL and its fine-tunes (Turbo, Playground v2.5, Animagine, DreamShaper, Juggernaut, RealVis).

All run ``StableDiffusionXLPipeline`` with the scheduler their repo ships. The family rules:
guidance-distilled SDXL Turbo runs at guidance 0, so no classifier-free guidance and no
negative (the catalog enforces both); a catalog ``scheduler`` (Playground v2.5's EDM DPM++)
is the one the model must run with; prompts go through compel (``studio.prompts``) when the
catalog says so, for weights, ``AND`` and prompts longer than 77 tokens. Edits run the same
call on ``StableDiffusionXLImg2ImgPipeline`` / ``StableDiffusionXLInpaintPipeline`` made from the
loaded pipeline (``studio.families.task_pipeline``).
"""

from __future__ import annotations

import diffusers
from diffusers import StableDiffusionXLPipeline

from studio import families, prompts
from studio.catalog import ModelSpec
from studio.families import base
from studio.schemas import GenerationRequest


def load(spec: ModelSpec, device: str) -> StableDiffusionXLPipeline:
    pipe = base.from_pretrained(spec, device)
    _ensure_scheduler(pipe, spec)
    return pipe


def _ensure_scheduler(pipe, spec: ModelSpec) -> None:
    """Swap in the catalog's scheduler when a copy of the repo lost it, keeping the repo's schedule settings."""
    if spec.scheduler and type(pipe.scheduler).__name__ != spec.scheduler:
        scheduler_class = getattr(diffusers, spec.scheduler)
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)


def generate(pipe, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    # The pipeline's own rule for classifier-free guidance; below it the negative is never used.
    guided = request.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
    if spec.compel:
        text = prompts.sdxl_embeddings(pipe, request.prompt, request.negative_prompt, guided)
    else:
        text = {"prompt": request.prompt, "negative_prompt": request.negative_prompt if guided else None}
    # Image-to-image takes its size from the (resized) input image; the others are told it.
    size = {} if request.task == families.IMAGE_TO_IMAGE else {"width": request.width, "height": request.height}
    result = pipe(
        **text,
        **size,
        **base.edit_arguments(request, size=False),
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        num_images_per_prompt=request.num_images,
        generator=base.generators(request),
        callback_on_step_end=base.step_callback(on_step, request, spec),
        output_type="pil",
    )
    return result.images
