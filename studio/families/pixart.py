"""PixArt-Sigma: T5-XXL + a DiT with classifier-free guidance, up to 4096x4096.

Sizes are honoured exactly (``use_resolution_binning=False``; the catalog already
validated them) and above 2048 px on a side the VAE decodes in tiles, where a
one-piece decode of a 4K image would need tens of GB. The pipeline predates
``callback_on_step_end``: progress and cancellation go through its per-step ``callback``.
"""

from __future__ import annotations

from diffusers import PixArtSigmaPipeline

from studio import speed
from studio.catalog import ModelSpec
from studio.families import base
from studio.schemas import GenerationRequest


def generate(pipe: PixArtSigmaPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    speed.prepare(pipe, request)  # tiled VAE decoding for its 4096 px images
    arguments = pixart_arguments(spec, request, on_step)
    report = arguments.pop("callback_on_step_end")  # PixArt's pipeline still takes the older callback
    return pipe(
        **arguments,
        clean_caption=False,  # the caption cleaner needs bs4 and ftfy, and lower-cases the prompt
        callback=lambda step, timestep, latents: report(pipe, step, timestep, {"latents": latents}),
        callback_steps=1,
    ).images


def pixart_arguments(spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> dict:
    """The call PixArt-Sigma and Sana share (Sana grew out of PixArt): T5-style prompt length, the exact
    size the catalog allowed, and an empty string, not None, for no negative prompt."""
    return base.call_arguments(spec, request, on_step) | dict(
        negative_prompt=request.negative_prompt or "",
        max_sequence_length=spec.token_limit,
        use_resolution_binning=False,
    )


