"""A1111's ``sampler_name`` + ``scheduler`` as the studio's ``sampler``, and the lists of GET samplers/schedulers:
the one place the A1111 face knows about samplers. The names, their diffusers schedulers and A1111's reading
of "Automatic" live in ``studio.samplers``; the model's check refuses a sampler it cannot run, naming its list.
"""

from __future__ import annotations

from studio import samplers
from studio.catalog import ModelSpec


def sampler_fields(sampler_name: str | None, scheduler: str | None, offered: list[str]) -> dict:
    """The ``GenerationRequest`` data for A1111's sampler choice on a model that takes ``offered``;
    ``{}`` (no sampler sent): the model's own scheduler."""
    if not sampler_name:
        return {}
    return {"sampler": samplers.from_a1111(sampler_name, scheduler, offered)}


def sampler_names(spec: ModelSpec) -> list[tuple[str, list[str]]]:
    """GET samplers: the samplers ``spec`` can run, without their schedule type, with A1111's aliases."""
    return [(sampler.name, list(sampler.aliases)) for sampler in samplers.a1111_samplers(spec.family, spec.scheduler)]


def schedule_names() -> dict[str, str]:
    """GET schedulers: A1111's ``scheduler`` values honoured here, name -> label."""
    return dict(samplers.SCHEDULE_TYPES)


def ran(sampler: str | None) -> tuple[str | None, str | None]:
    """The info's ``sampler_name`` and ``scheduler`` of the sampler that ran (None: the model's own, unnamed)."""
    return samplers.to_a1111(sampler) if sampler else (None, None)
