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
* A batch of jobs (``studio.families.batch``) cannot pass its prompts as a list: the pipeline would pad
  every prompt to the longest and cut each negative at that length, not at its own prompt's. Each
  member is encoded as its own call encodes it, then padded to the longest with masked-out tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import LuminaPipeline

from studio.catalog import ModelSpec
from studio.families import base
from studio.families.batch import BatchedRequest
from studio.schemas import GenerationRequest


def generate(pipe: LuminaPipeline, spec: ModelSpec, request: GenerationRequest | BatchedRequest,
             on_step: base.OnStep) -> list:
    arguments = base.call_arguments(spec, request, on_step)
    if isinstance(request, BatchedRequest):
        arguments |= dict(prompt=None, negative_prompt=None, **base.per_image(_encoded(pipe, request), request))
    result = pipe(
        **arguments,
        clean_caption=False,
        output_type="pil",
    )
    return result.images


NAMES = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")


@torch.no_grad()
def _encoded(pipe: LuminaPipeline, batch: BatchedRequest) -> dict:
    """Each member's embeddings and masks as its own call makes them, one row each, padded to the longest
    with masked-out (zero) tokens."""
    encoded = [
        pipe.encode_prompt(member.prompt, batch.guidance > 1, negative_prompt=member.negative_prompt or "",
                           device=pipe._execution_device, clean_caption=False)
        for member in batch.requests
    ]
    length = max(part.shape[1] for parts in encoded for part in parts if part is not None)
    rows = {}
    for index, name in enumerate(NAMES):
        parts = [parts[index] for parts in encoded]
        if parts[0] is not None:  # no negative without guidance
            pads = [(0, 0) * (part.ndim - 2) + (0, length - part.shape[1]) for part in parts]
            rows[name] = torch.cat([F.pad(part, pad) for part, pad in zip(parts, pads)])
    return rows
