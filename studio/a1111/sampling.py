"""A1111's ``sampler_name`` + ``scheduler`` as the studio's request data, and the lists of GET samplers/schedulers.

The one place the A1111 face knows about samplers. Until ``studio.samplers`` lands (issue 20, item 3),
a name from A1111's own list is accepted and the model's own scheduler runs; a name that is no A1111
sampler is refused, naming the list.
"""

from __future__ import annotations

from studio.errors import InvalidRequest, echo

KARRAS = " Karras"
# A1111 1.10's samplers, in its order (GET /sdapi/v1/samplers there).
A1111_SAMPLERS = (
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
)
SCHEDULES = {"automatic": "Automatic", "karras": "Karras"}


def sampler_fields(sampler_name: str | None, scheduler: str | None) -> dict:
    """The ``GenerationRequest`` data for A1111's sampler choice; ``{}``: the model's own scheduler."""
    if not sampler_name:
        return {}
    base = sampler_name.strip().removesuffix(KARRAS).lower()
    if base not in {name.lower() for name in A1111_SAMPLERS}:
        raise InvalidRequest(
            f"sampler_name: unknown sampler '{echo(sampler_name)}'; samplers: {', '.join(A1111_SAMPLERS)}",
            field="sampler_name",
        )
    return {}


def sampler_names(catalog) -> list[str]:
    """GET samplers: every sampler name some model of ``catalog`` takes, without the schedule part."""
    return list(A1111_SAMPLERS)


def schedule_names() -> dict[str, str]:
    """GET schedulers: A1111's ``scheduler`` values honoured here, name -> label."""
    return dict(SCHEDULES)
