"""Sana 1.5: Gemma-2 text encoder, linear-attention DiT, 32x DC-AE, classifier-free guidance.

Sizes are honoured exactly (``use_resolution_binning=False``; the catalog already
validated them, in multiples of 32). The pipeline's default "complex human
instruction" (a prompt-enhancing preamble for Gemma) stays on, as Sana was trained
with it. Large images decode in tiles, as for PixArt-Sigma.
"""

from __future__ import annotations

from diffusers import SanaPipeline

from studio import speed
from studio.catalog import ModelSpec
from studio.families import base
from studio.families.pixart import pixart_arguments
from studio.schemas import GenerationRequest


def generate(pipe: SanaPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    speed.prepare(pipe, request)  # tiled VAE decoding above 2048 px
    return pipe(**pixart_arguments(spec, request, on_step)).images
