"""FLUX.1 [schnell] and [dev]: CLIP-L pooled prompt + T5-XXL sequence prompt, flow matching.

Neither model takes a negative prompt (the catalog rejects one) and neither runs
classifier-free guidance: [schnell] is timestep-distilled (guidance 0, no guidance
embedding in its transformer), [dev] is guidance-distilled (the pipeline feeds
``guidance_scale`` to the transformer's guidance embedding; one forward per step).
The T5 prompt length is the catalog's ``token_limit``: 256 for [schnell], 512 for [dev].

Chroma, a FLUX.1 [schnell] derivative, shares ``flow_call_kwargs``, edits included: the
image-to-image and inpainting pipelines of both take the same arguments plus image, mask, strength.
"""

from __future__ import annotations

from diffusers import FluxPipeline

from studio.catalog import ModelSpec
from studio.families import base
from studio.schemas import GenerationRequest


def generate(pipe: FluxPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    return pipe(**flow_call_kwargs(spec, request, on_step)).images


def flow_call_kwargs(spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> dict:
    """The pipeline arguments FLUX and Chroma share: size, edit inputs, steps, guidance, seeds, T5 length,
    progress."""
    return base.call_arguments(spec, request, on_step, negative=False) | dict(
        **base.edit_arguments(request, size=False),  # the size is in the call; the image is resized to it
        max_sequence_length=spec.token_limit,
    )
