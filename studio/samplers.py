"""Samplers by A1111's names, and the diffusers scheduler each one is on every model family.

A sampler is A1111's name ("Euler a", "DPM++ 2M"), with " Karras" appended for its Karras-sigma
variant where A1111 offers one ("DPM++ 2M Karras", A1111's own combined name before 1.9; its API
takes the two as ``sampler_name`` + ``scheduler``: ``from_a1111`` and ``to_a1111`` convert). Each
family takes the samplers its models can run: the noise-prediction families (SDXL, PixArt-Sigma,
HunyuanDiT) take A1111's list; the flow-matching families (FLUX, Chroma, Sana, Lumina-Next) only the
flow-matching schedulers diffusers has for them (FLUX and Chroma pass their own sigmas, which only
flow-matching Euler accepts); a model whose catalog entry fixes its scheduler (Playground v2.5's EDM)
takes that scheduler's own family of samplers; Stable Cascade only its own.

Every scheduler is made from the loaded pipeline's scheduler config (``from_config``), so the
model's training schedule (betas, shift, prediction type) is kept and only the solver changes.
Unset, a request runs the scheduler the model ships; ``name_of`` names it for the metadata.

Torch-free: the parent reads this table to check requests, list each model's samplers and answer
A1111's ``GET /sdapi/v1/samplers`` (a model's, ``a1111_samplers``) and ``schedulers`` (``SCHEDULE_TYPES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.errors import InvalidRequest, echo

KARRAS = " Karras"
# A1111's `scheduler` values this table honours (name -> label, as its GET schedulers lists them).
# "Uniform" and "Normal" are diffusers' own evenly spaced timesteps: the plain sampler.
SCHEDULE_TYPES = {"automatic": "Automatic", "uniform": "Uniform", "normal": "Normal", "karras": "Karras"}
# What A1111's "Automatic" schedule is for the samplers where it is not the plain one (its sampler
# options); "Exponential" has no sampler here, so "Automatic" runs those plain.
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential"}


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111's name
    scheduler: str  # the diffusers class
    config: dict = field(default_factory=dict)  # over the model's scheduler config
    karras: bool = False  # a " Karras" variant exists (the class takes use_karras_sigmas)
    shift_from: str | None = None  # a config key whose value becomes the flow shift (Sana's flow_shift)
    aliases: tuple[str, ...] = ()  # A1111's aliases, which its API takes as sampler_name too

    def names(self) -> tuple[str, ...]:
        return (self.name, self.name + KARRAS) if self.karras else (self.name,)


@dataclass(frozen=True)
class A1111Sampler:
    """One entry of A1111's ``GET /sdapi/v1/samplers``: a name, its aliases, the schedule types it takes."""

    name: str
    aliases: tuple[str, ...]
    schedules: tuple[str, ...]  # SCHEDULE_TYPES labels


NO_CLIPPING = {"clip_sample": False, "set_alpha_to_one": False}  # DDIM's defaults suit pixel-space models
DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
NOISE_PREDICTION = (
    Sampler("Euler", "EulerDiscreteScheduler", karras=True, aliases=("k_euler",)),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral")),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", DPMPP_2M, karras=True, aliases=("k_dpmpp_2m",)),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", DPMPP_2M_SDE, karras=True, aliases=("k_dpmpp_2m_sde",)),
    Sampler("DPM++ SDE", "DPMSolverSDEScheduler", karras=True, aliases=("k_dpmpp_sde",)),
    Sampler("DDIM", "DDIMScheduler", NO_CLIPPING, aliases=("ddim",)),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc",)),
    Sampler("Heun", "HeunDiscreteScheduler", karras=True, aliases=("k_heun",)),
    Sampler("LMS", "LMSDiscreteScheduler", karras=True, aliases=("k_lms",)),
)
FLOW_EULER = Sampler("Euler", "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": False}, karras=True,
                     aliases=("k_euler",))
FLOW_EULER_A = Sampler("Euler a", "FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True},
                       aliases=("k_euler_a", "k_euler_ancestral"))
FLOW_HEUN = Sampler("Heun", "FlowMatchHeunDiscreteScheduler", aliases=("k_heun",))
# Sana ships a flow-prediction DPM++ config: the multistep solvers keep its flow sigmas.
SANA = (
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", DPMPP_2M, aliases=("k_dpmpp_2m",)),
    Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler", DPMPP_2M_SDE, aliases=("k_dpmpp_2m_sde",)),
    Sampler("UniPC", "UniPCMultistepScheduler", aliases=("unipc",)),
    *(Sampler(s.name, s.scheduler, s.config, s.karras, "flow_shift", s.aliases) for s in (FLOW_EULER, FLOW_EULER_A)),
    Sampler("Heun", FLOW_HEUN.scheduler, shift_from="flow_shift", aliases=FLOW_HEUN.aliases),
)
EDM = (Sampler("DPM++ 2M Karras", "EDMDPMSolverMultistepScheduler"), Sampler("Euler Karras", "EDMEulerScheduler"))

FAMILY_SAMPLERS: dict[str, tuple[Sampler, ...]] = {
    "sdxl": NOISE_PREDICTION,
    "pixart": NOISE_PREDICTION,
    "hunyuan": (Sampler("DDPM", "DDPMScheduler"), *NOISE_PREDICTION),  # its repo's own scheduler first
    "flux": (FLOW_EULER, FLOW_EULER_A),
    "chroma": (FLOW_EULER, FLOW_EULER_A),
    "lumina": (FLOW_EULER, FLOW_EULER_A, FLOW_HEUN),
    "sana": SANA,
    "cascade": (Sampler("DDPM", "DDPMWuerstchenScheduler"),),
}
# A catalog `scheduler` the model must keep: its samplers are that scheduler's kind.
FIXED_SCHEDULERS = {"EDMDPMSolverMultistepScheduler": EDM}


def table(family: str, fixed_scheduler: str | None = None) -> tuple[Sampler, ...]:
    return FIXED_SCHEDULERS.get(fixed_scheduler or "", None) or FAMILY_SAMPLERS[family]


def choices(family: str, fixed_scheduler: str | None = None) -> list[str]:
    """Every sampler name a model of ``family`` takes, in A1111's order, Karras variants after their base."""
    return [name for sampler in table(family, fixed_scheduler) for name in sampler.names()]


def canonical(name: str, family: str, fixed_scheduler: str | None = None) -> str | None:
    """``name`` as this table spells it (any case, spaces trimmed, A1111's aliases such as ``k_euler_a``),
    or None when the family has no such sampler."""
    wanted = " ".join(name.split()).lower()
    for sampler in table(family, fixed_scheduler):
        if wanted in (alias.lower() for alias in sampler.aliases):
            return sampler.name
        known = next((known for known in sampler.names() if known.lower() == wanted), None)
        if known:
            return known
    return None


def from_a1111(sampler_name: str, scheduler: str | None = None, offered: list[str] | None = None) -> str:
    """A1111's ``sampler_name`` + ``scheduler`` as our ``sampler`` value: ("DPM++ 2M", "karras") ->
    "DPM++ 2M Karras"; "Uniform"/"Normal" give the plain sampler; "Automatic" (or none) is what A1111
    makes of it: the Karras variant where A1111's default is Karras (DPM++ 2M, DPM++ SDE) and the model's
    ``offered`` samplers have it, else the plain one. A name that already ends in Karras (A1111's old
    combined names) stays. The model's check (``ModelSpec.check``) then refuses a sampler it cannot take;
    a schedule type not in ``SCHEDULE_TYPES`` is an ``InvalidRequest`` on ``scheduler`` here."""
    name = " ".join(sampler_name.split())
    key = (scheduler or "automatic").strip().lower()
    labels = {label.lower(): label for label in SCHEDULE_TYPES.values()}
    if key not in SCHEDULE_TYPES and key not in labels:
        raise InvalidRequest(
            f"scheduler: '{echo(scheduler)}' is not offered; schedule types: {', '.join(SCHEDULE_TYPES.values())}",
            field="scheduler",
        )
    label = SCHEDULE_TYPES.get(key) or labels[key]
    if name.lower().endswith(KARRAS.lower()):
        return name
    if label == "Automatic":
        automatic = A1111_AUTOMATIC.get(name) == "Karras" and name + KARRAS in (offered or [])
        label = "Karras" if automatic else "Uniform"
    return name + KARRAS if label == "Karras" else name


def to_a1111(name: str) -> tuple[str, str]:
    """Our ``sampler`` value as A1111's ``sampler_name`` and ``Schedule type`` label: "DPM++ 2M Karras" ->
    ("DPM++ 2M", "Karras"); a plain sampler whose A1111 "Automatic" is another schedule -> "Uniform", so that
    A1111 reads its infotext back as what ran; any other plain one -> "Automatic"."""
    if name.endswith(KARRAS):
        return name[: -len(KARRAS)], "Karras"
    return name, "Uniform" if name in A1111_AUTOMATIC else "Automatic"


def a1111_samplers(family: str, fixed_scheduler: str | None = None) -> list[A1111Sampler]:
    """A model's samplers as A1111's ``GET /sdapi/v1/samplers`` lists what the webui can run: each
    ``sampler_name`` once, in A1111's order, with its aliases and the schedule types on which it is one of
    the model's samplers (EDM's "DPM++ 2M Karras" is A1111's DPM++ 2M on Karras)."""
    offered = choices(family, fixed_scheduler)
    aliases: dict[str, tuple[str, ...]] = {}
    for sampler in table(family, fixed_scheduler):
        name = to_a1111(sampler.name)[0]
        aliases[name] = tuple(dict.fromkeys(aliases.get(name, ()) + sampler.aliases))

    def runs(name: str, schedule: str) -> bool:
        return canonical(from_a1111(name, schedule, offered), family, fixed_scheduler) is not None

    return [A1111Sampler(name, names, tuple(label for label in SCHEDULE_TYPES.values() if runs(name, label)))
            for name, names in aliases.items()]


def scheduler_of(name: str, family: str, fixed_scheduler: str | None = None) -> tuple[str, dict]:
    """The diffusers class name and the ``from_config`` overrides of sampler ``name`` (as ``canonical`` spells it)."""
    for sampler in table(family, fixed_scheduler):
        if name in sampler.names():
            overrides = dict(sampler.config)
            if sampler.karras:
                overrides["use_karras_sigmas"] = name.endswith(KARRAS)
            return sampler.scheduler, overrides
    raise KeyError(f"{name!r} is no sampler of the {family} family")


def shift_key(name: str, family: str, fixed_scheduler: str | None = None) -> str | None:
    """The model config key that holds the flow shift this sampler's scheduler calls ``shift``, if any."""
    return next((s.shift_from for s in table(family, fixed_scheduler) if name in s.names()), None)


def name_of(scheduler_class: str, config: dict, family: str, fixed_scheduler: str | None = None) -> str:
    """The sampler name of a scheduler (class name and config), for the metadata of a request that left
    it unset: the table's entry whose overrides the config matches, else the class name."""
    for sampler in table(family, fixed_scheduler):
        if sampler.scheduler != scheduler_class:
            continue
        if all(config.get(key, value) == value for key, value in sampler.config.items()):
            return sampler.name + (KARRAS if sampler.karras and config.get("use_karras_sigmas") else "")
    return scheduler_class.removesuffix("Scheduler")
