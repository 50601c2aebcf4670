"""Lumina-Next 2B (SFT): a flow-based DiT conditioned on Gemma-2B, with classifier-free guidance.

The family rules:

* ``LuminaPipeline`` (diffusers 0.42 dropped the old ``LuminaText2ImgPipeline`` name).
* The prompt reaches Gemma as written, only lower-cased and stripped (the pipeline always
  does that much). Its default ``clean_caption=True`` would also strip URLs, HTML and some
  punctuation, but only where ``bs4`` and ``ftfy`` happen to be installed; the same request
  must give the same image everywhere, so cleaning is off.
* Guidance above 1 runs both the prompt and the negative prompt (empty when not given).
  The pipeline pads the negative to the prompt's token length and truncates both at its
  fixed 256 Gemma tokens (the catalog's ``token_limit``; its ``max_sequence_length``
  argument is not used for tokenizing, so it is not passed).
* Sizes away from the native 1024 px use Lumina-Next's time-aware scaled rotary embeddings
  and proportional attention, the pipeline's defaults (``scaling_watershed=1.0``,
  ``proportional_attn=True``); the catalog allows multiples of 16 up to 2048.
"""

from __future__ import annotations

from diffusers import LuminaPipeline

from studio.catalog import ModelSpec
from studio.families import base
from studio.schemas import GenerationRequest


def generate(pipe: LuminaPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    result = pipe(
        **base.call_arguments(spec, request, on_step),
        clean_caption=False,
        output_type="pil",
    )
    return result.images
