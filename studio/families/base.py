"""What every family adapter shares: dtype choice, load arguments, seeded generators, progress."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

import diffusers
import torch

from studio import families, speed, uploads
from studio.catalog import ModelSpec
from studio.errors import ModelLoadFailed
from studio.families import preview
from studio.families.batch import BatchedRequest, images_per_prompt
from studio.schemas import GenerationRequest

OnStep = Callable[[int, int], None]

# Set while a memory plan reads a pipeline into host RAM for another device (studio.placement):
# the weights then take that device's dtype, not the CPU's float32.
_dtype_device: contextvars.ContextVar[str | None] = contextvars.ContextVar("dtype_device", default=None)


@contextlib.contextmanager
def weights_dtype_of(device: str):
    """Within it, pipelines loaded for the CPU take ``device``'s dtype."""
    token = _dtype_device.set(device)
    try:
        yield
    finally:
        _dtype_device.reset(token)


def torch_dtype(spec: ModelSpec, device: str) -> torch.dtype:
    """The catalog's half-precision dtype on accelerators; float32 on CPU, where half is slow or missing."""
    device = _dtype_device.get() or device
    if torch.device(device).type == "cpu":
        return torch.float32
    return getattr(torch, spec.dtype)


def load_kwargs(spec: ModelSpec, device: str) -> dict:
    """Keyword arguments for ``from_pretrained``; variants and revisions apply to hub repos only."""
    kwargs = {"dtype": torch_dtype(spec, device), "use_safetensors": True, **speed.load_kwargs(device)}
    if spec.local_dir is None:
        if spec.variant:
            kwargs["variant"] = spec.variant
        if spec.revision:
            kwargs["revision"] = spec.revision
    return kwargs


def pipeline_class(spec: ModelSpec) -> type:
    """The family record's pipeline class, if the catalog names it; a mismatch is a catalog mistake,
    reported before any weights are read."""
    name = families.FAMILIES[spec.family].pipeline
    if spec.pipeline != name:
        raise ModelLoadFailed(
            f"pipeline: {spec.id} names {spec.pipeline}, but the {spec.family} adapter runs {name}", field="model"
        )
    return getattr(diffusers, name)


def from_pretrained(spec: ModelSpec, device: str):
    """``from_pretrained`` of the family's pipeline class from the spec's source, on ``device``, progress
    bars off: the whole load of most families (``families.load_pipeline``)."""
    pipe = pipeline_class(spec).from_pretrained(spec.source, **load_kwargs(spec, device))
    pipe.set_progress_bar_config(disable=True)  # progress goes through on_step, not tqdm on stderr
    return pipe.to(device)


def generators(request: GenerationRequest) -> list[torch.Generator]:
    """One CPU generator per image (seed, seed+1, ...): image i equals an n=1 run with seed + i,
    on any device, because diffusers draws the initial noise on the generator's device."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]


def step_callback(on_step: OnStep, request: GenerationRequest, spec: ModelSpec):
    """A ``callback_on_step_end`` that reports progress; ``on_step`` may raise to cancel.

    When ``on_step`` also has ``wants_preview(step, total)``, the indices in the batch of the images
    that get a preview now, and ``preview(index, image)`` (the engine's ``StepReporter``), those images
    get a preview of their latents.
    """
    wants_preview = getattr(on_step, "wants_preview", None)

    def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        # Edits run steps x strength of the schedule; the pipeline knows how many that is.
        total = getattr(pipe, "_num_timesteps", None) or request.steps
        on_step(step + 1, total)
        latents = callback_kwargs.get("latents")
        for index in wants_preview(step + 1, total) if wants_preview is not None and latents is not None else ():
            image = preview.latents_to_image(pipe, spec.family, latents[index:index + 1], request)
            if image is not None:
                on_step.preview(index, image)
        return {}

    return callback


def image_arguments(request: GenerationRequest, negative: bool = True) -> dict:
    """What every pipeline call names alike: the prompt (and the negative one, where the family takes it),
    the size, n images in one batched call and their seeds (a ``BatchedRequest``: a prompt and a seed per image)."""
    arguments = dict(
        prompt=request.prompt, width=request.width, height=request.height,
        num_images_per_prompt=images_per_prompt(request), generator=generators(request),
    )
    if negative:
        arguments["negative_prompt"] = request.negative_prompt
    return arguments


def call_arguments(spec: ModelSpec, request: GenerationRequest, on_step: OnStep, negative: bool = True) -> dict:
    """What the one-stage text-to-image pipeline calls share: ``image_arguments``, steps, guidance, progress."""
    return image_arguments(request, negative) | dict(
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        callback_on_step_end=step_callback(on_step, request, spec),
    )


def edit_arguments(request: GenerationRequest, size: bool = True) -> dict:
    """The pipeline arguments of an edit: the input image (and mask) at the request's size, the strength.
    ``size=False`` for pipelines that take the size from the image (SDXL image-to-image)."""
    if request.image is None:
        return {}
    width_height = (request.width, request.height)
    arguments = {"image": uploads.load_rgb(request.image, width_height), "strength": request.strength}
    if request.mask is not None:
        arguments["mask_image"] = uploads.repaint_mask(request.mask, width_height)
    if not size:
        return arguments
    return arguments | {"width": request.width, "height": request.height}


def per_image(rows: dict[str, torch.Tensor], batch: BatchedRequest) -> dict[str, torch.Tensor]:
    """Text embeddings (or masks) made one row per member, repeated for each of its images, as a call of
    its own repeats them for ``num_images_per_prompt``."""
    counts = torch.tensor(batch.counts)
    return {name: tensor.repeat_interleave(counts.to(tensor.device), dim=0) for name, tensor in rows.items()}
