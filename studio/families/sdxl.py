"""SDXL and its fine-tunes (Turbo, Playground v2.5, Animagine, DreamShaper, Juggernaut, RealVis).

All run ``StableDiffusionXLPipeline`` with the scheduler their repo ships. The family rules:
guidance-distilled SDXL Turbo runs at guidance 0, so no classifier-free guidance and no
negative (the catalog enforces both); a catalog ``scheduler`` (Playground v2.5's EDM DPM++)
is the one the model must run with; prompts go through compel (``studio.prompts``) when the
catalog says so, for weights, ``AND`` and prompts longer than 77 tokens. Edits run the same
call on ``StableDiffusionXLImg2ImgPipeline`` / ``StableDiffusionXLInpaintPipeline`` made from the
loaded pipeline (``studio.families.task_pipeline``).

A batch of jobs (``studio.families.batch``) runs on text embeddings: each member's prompt and negative
encoded as its own call would encode them, one row per image. Compel rows of different lengths are padded
to the longest as compel pads them, and the UNet's cross-attention masks each row's padding past its
own call's length, so every member's image stays its own.
"""

from __future__ import annotations

from contextlib import contextmanager

import diffusers
import torch
from diffusers import StableDiffusionXLPipeline

from studio import families, prompts
from studio.catalog import ModelSpec
from studio.families import base
from studio.families.batch import BatchedRequest, images_per_prompt, members
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


def generate(pipe, spec: ModelSpec, request: GenerationRequest | BatchedRequest, on_step: base.OnStep) -> list:
    # The pipeline's own rule for classifier-free guidance; below it the negative is never used.
    guided = request.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
    own_tokens = None  # compel rows padded past a member's own length: how many tokens each row really has
    if spec.compel:
        pairs = [(member.prompt, member.negative_prompt) for member in members(request)]
        text, own_tokens = prompts.sdxl_batch_embeddings(pipe, pairs, guided)
    elif isinstance(request, BatchedRequest):
        text = _encoded(pipe, request.requests, guided)
    else:
        text = {"prompt": request.prompt, "negative_prompt": request.negative_prompt if guided else None}
    if isinstance(request, BatchedRequest):
        text = base.per_image(text, request)
    # Image-to-image takes its size from the (resized) input image; the others are told it.
    size = {} if request.task == families.IMAGE_TO_IMAGE else {"width": request.width, "height": request.height}
    with _attending(pipe.unet, own_tokens, request):
        result = pipe(
            **text,
            **size,
            **base.edit_arguments(request, size=False),
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            num_images_per_prompt=images_per_prompt(request),
            generator=base.generators(request),
            callback_on_step_end=base.step_callback(on_step, request, spec),
            output_type="pil",
        )
    return result.images


@contextmanager
def _attending(unet, own_tokens: list[int] | None, request):
    """Within it, the UNet's cross-attention sees only each row's own tokens (a batch's compel rows padded
    to the longest member's): the padding chunks are masked out, so a member's image is its own call's.
    Each member's prompt and negative rows have its one length ([negatives; prompts] under guidance)."""
    if own_tokens is None or len(set(own_tokens)) == 1:
        yield  # nothing padded past its own length: the call as it is
        return
    lengths = torch.tensor(own_tokens).repeat_interleave(torch.tensor(request.counts))
    mask = torch.arange(max(own_tokens))[None, :] < lengths[:, None]  # (images, tokens)

    def add_mask(module, args, kwargs):
        states = kwargs["encoder_hidden_states"]
        kwargs["encoder_attention_mask"] = mask.repeat(states.shape[0] // mask.shape[0], 1).to(states.device)
        return args, kwargs

    handle = unet.register_forward_pre_hook(add_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _encoded(pipe, requests, guided: bool) -> dict:
    """Each request's text embeddings as the pipeline encodes them for its own call, one row each."""
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    encoded = [
        pipe.encode_prompt(request.prompt, device=pipe._execution_device, do_classifier_free_guidance=guided,
                           negative_prompt=request.negative_prompt if guided else None)
        for request in requests
    ]
    rows = {name: [parts[index] for parts in encoded] for index, name in enumerate(names)}
    return {name: torch.cat(tensors) for name, tensors in rows.items() if tensors[0] is not None}
