"""FLUX.1 [schnell] and [dev]: CLIP-L pooled prompt + T5-XXL sequence prompt, flow matching.

Neither model takes a negative prompt (the catalog rejects one) and neither runs
classifier-free guidance: [schnell] is timestep-distilled (guidance 0, no guidance
embedding in its transformer), [dev] is guidance-distilled (the pipeline feeds
``guidance_scale`` to the transformer's guidance embedding; one forward per step).
The T5 prompt length is the catalog's ``token_limit``: 256 for [schnell], 512 for [dev].

Chroma, a FLUX.1 [schnell] derivative, shares ``load_as`` and ``flow_call_kwargs``.
"""

from __future__ import annotations

from diffusers import FluxPipeline

from studio.catalog import ModelSpec
from studio.errors import ModelLoadFailed
from studio.families import base
from studio.schemas import GenerationRequest


def load(spec: ModelSpec, device: str) -> FluxPipeline:
    return load_as(FluxPipeline, spec, device)


def generate(pipe: FluxPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    return pipe(**flow_call_kwargs(spec, request, on_step)).images


def load_as(pipeline_class, spec: ModelSpec, device: str):
    """``pipeline_class.from_pretrained`` of the spec's source, on ``device``, progress bars off.

    The catalog names the pipeline class; a name this adapter does not run is a catalog
    mistake, reported before any weights are read.
    """
    if spec.pipeline != pipeline_class.__name__:
        raise ModelLoadFailed(
            f"pipeline: {spec.id} names {spec.pipeline}, but the {spec.family} adapter runs {pipeline_class.__name__}",
            field="model",
        )
    pipe = pipeline_class.from_pretrained(spec.source, **base.load_kwargs(spec, device))
    pipe.set_progress_bar_config(disable=True)  # progress goes through on_step, not tqdm on stderr
    return pipe.to(device)


def flow_call_kwargs(spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> dict:
    """The pipeline arguments FLUX and Chroma share: size, steps, guidance, seeds, T5 length, progress."""
    return dict(
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        num_images_per_prompt=request.num_images,  # n images are one batched call
        generator=base.generators(request),
        max_sequence_length=spec.token_limit,
        callback_on_step_end=base.step_callback(on_step, request.steps),
    )
