"""Chroma1-HD: a FLUX.1 [schnell] derivative with T5 only and real classifier-free guidance.

Unlike FLUX, Chroma was trained without guidance distillation, so it runs true CFG:
two transformer passes per step (prompt and negative prompt) whenever guidance > 1,
and the negative prompt matters.
"""

from __future__ import annotations

from diffusers import ChromaPipeline

from studio.catalog import ModelSpec
from studio.families import base
from studio.families.flux import flow_call_kwargs
from studio.schemas import GenerationRequest


def fix_task_pipeline(pipe, task: str) -> None:
    """``ChromaInpaintPipeline`` (diffusers 0.42) reads ``transformer.config.guidance_embeds``, which
    Chroma's transformer config does not have (Chroma has no guidance embedding): say so explicitly."""
    if "guidance_embeds" not in pipe.transformer.config:
        pipe.transformer.register_to_config(guidance_embeds=False)


def generate(pipe: ChromaPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep) -> list:
    # Without a negative prompt the unconditional pass encodes "" (the pipeline's own default).
    return pipe(**flow_call_kwargs(spec, request, on_step), negative_prompt=request.negative_prompt).images
