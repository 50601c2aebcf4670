"""A job's sampler on the resident pipeline: the scheduler made for one job, the model's own put back.

Worker-side (torch and diffusers); the table of which sampler is which scheduler is ``studio.samplers``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import diffusers
import torch

from studio import samplers
from studio.schemas import MAX_SEED, GenerationRequest

# Step noise is drawn from seed + STEP_NOISE: past MAX_SEED, so never any image's initial noise.
STEP_NOISE = MAX_SEED + 1


@contextmanager
def sampler(pipe, spec, request: GenerationRequest) -> Iterator[str]:
    """Run the block with ``request.sampler`` on ``pipe``, made from the pipeline's own scheduler config
    (the model's schedule kept, no reload), and put the model's scheduler back after it, so the next job
    runs as on a fresh worker; yields the name of the sampler that runs (the model's own, named, when the
    request leaves it unset)."""
    original = pipe.scheduler
    own = samplers.name_of(type(original).__name__, dict(original.config), spec.family, spec.scheduler)
    name = request.sampler
    if name is None or name == own:
        yield own
        return
    class_name, overrides = samplers.scheduler_of(name, spec.family, spec.scheduler)
    shift_key = samplers.shift_key(name, spec.family, spec.scheduler)
    if shift_key and shift_key in original.config:
        overrides["shift"] = original.config[shift_key]
    scheduler_class = getattr(diffusers, class_name)
    if "noise_sampler_seed" in inspect.signature(scheduler_class.__init__).parameters:
        overrides["noise_sampler_seed"] = request.seeds  # DPM++ SDE's Brownian noise: one tree per image's seed
    pipe.scheduler = seeded_steps(scheduler_class.from_config(original.config, **overrides), request)
    try:
        yield name
    finally:
        pipe.scheduler = original


def seeded_steps(scheduler, request: GenerationRequest):
    """``scheduler`` whose ``step`` draws its noise (ancestral and SDE samplers) from generators seeded by the
    images' seeds when the pipeline passes none: FLUX, Chroma and Lumina call ``step`` without a generator, so
    "Euler a" would draw from torch's global generator and the same seed would not give the same image.
    A pipeline that passes its own generators (SDXL, PixArt) still uses those."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        noise = [torch.Generator("cpu").manual_seed(seed + STEP_NOISE) for seed in request.seeds]
        scheduler.step = functools.partial(scheduler.step, generator=noise)
    return scheduler
