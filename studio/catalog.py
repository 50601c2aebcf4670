"""The model catalog: ``presets/models.toml`` read into frozen ``ModelSpec``s.

A local models folder (``--models-dir``) may hold ``<model-id>/``; the engine
then loads that folder instead of the hub repo, through the same
``from_pretrained`` call, and a ``studio.toml`` inside it may override the
model's defaults and limits (the tiny test models use this to stay tiny).
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from studio import families, hublora, memory, samplers
from studio.errors import InvalidRequest, UnknownModel, echo
from studio.listings import MemoryListing, ModelListing
from studio.loras import LoraError, LoraFile, LoraLibrary, LoraListing
from studio.schemas import DEFAULT_STRENGTH, MAX_SEED, GenerationRequest, LoraUse, parse_request, parse_size

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
LORA_DIR = Path("loras")  # --lora-dir's default
OVERRIDE_FILE = "studio.toml"
BOUNDED_FIELDS = ("width", "height", "steps", "guidance")  # the request fields each model bounds itself


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance: float
    width: int
    height: int
    negative_prompt: str | None = None  # what an empty negative prompt becomes (HunyuanDiT's reference one)

    def as_dict(self) -> dict:
        """For the APIs' model listings: the negative prompt only where the model has one."""
        data = dict(steps=self.steps, guidance=self.guidance, width=self.width, height=self.height)
        return data | ({"negative_prompt": self.negative_prompt} if self.negative_prompt else {})


@dataclass(frozen=True)
class Limits:
    size_multiple: int
    min_side: int
    max_side: int
    max_pixels: int
    max_steps: int
    min_guidance: float
    max_guidance: float
    allowed_sizes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Card:
    """The studio's published ranking of a model, and what its "Use" button loads."""

    rank: int  # 1 is the best
    stars: float  # of 5
    group: str  # one of the catalog's groups
    strengths: str
    best_for: str
    recommended: str  # the published settings in words; empty: the authors' defaults are the recommendation
    steps: int | None = None  # the recommended steps (the middle of a published range); None: the default
    guidance: float | None = None
    memory_gb: float | None = None  # the published memory need, where one is published


@dataclass(frozen=True)
class ModelSpec:
    id: str
    label: str
    family: str
    repo: str
    pipeline: str
    dtype: str
    text_encoder: str
    token_limit: int
    negative_prompt: bool
    cfg: bool
    compel: bool
    weights_gb: tuple[tuple[str, float], ...]  # the catalog's GB per component; the files' own sizes replace it
    defaults: Defaults
    limits: Limits
    card: Card
    aliases: tuple[str, ...] = ()
    variant: str | None = None
    revision: str | None = None
    scheduler: str | None = None
    prior_repo: str | None = None
    decoder_steps: int | None = None
    local_dir: Path | None = None  # set when the models folder holds this model
    # What the local folder is when its studio.toml changed the defaults or limits ("a tiny test build"):
    # the cards then say that the limits come from it, not from the published model.
    build: str | None = None
    memory_plan: str | None = None  # a plan this model always uses (studio/memory.py); None: --memory-plan

    @property
    def source(self) -> str:
        """What ``from_pretrained`` gets: the local folder when there is one, else the hub repo."""
        return str(self.local_dir) if self.local_dir else self.repo

    @property
    def samplers(self) -> list[str]:
        """The sampler names this model takes (``studio.samplers``), its family's, in A1111's order."""
        return samplers.choices(self.family, self.scheduler)

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this model can do: "text-to-image", and "image-to-image" / "inpainting" where its family can."""
        return families.tasks(self.family)

    def fit_size(self, width: int, height: int) -> tuple[int, int]:
        """An input image's size made valid for this model: the same aspect ratio scaled into the side and
        pixel limits, rounded down to the size multiple (the nearest allowed size for fixed-size models)."""
        lim = self.limits
        if lim.allowed_sizes:
            return min(lim.allowed_sizes, key=lambda size: abs(math.log((size[0] / size[1]) / (width / height))))
        scale = min(1.0, lim.max_side / max(width, height), (lim.max_pixels / (width * height)) ** 0.5)
        scale = max(scale, lim.min_side / min(width, height))
        multiple = lim.size_multiple

        def side(value: float) -> int:
            return max(lim.min_side, min(lim.max_side, int(value // multiple) * multiple))

        return side(width * scale), side(height * scale)

    def size_presets(self) -> list[tuple[int, int]]:
        """Valid (width, height) choices for the UI: the allowed list, or common aspect ratios that fit."""
        if self.limits.allowed_sizes:
            return list(self.limits.allowed_sizes)
        # The default first, then common aspect ratios of the same pixel count as the default.
        area = self.defaults.width * self.defaults.height
        sizes = [(self.defaults.width, self.defaults.height)]
        for ratio_w, ratio_h in ((1, 1), (3, 4), (4, 3), (2, 3), (3, 2), (9, 16), (16, 9)):
            scale = (area / (ratio_w * ratio_h)) ** 0.5
            width, height = self._fit(ratio_w * scale), self._fit(ratio_h * scale)
            if (width, height) not in sizes and width * height <= self.limits.max_pixels:
                sizes.append((width, height))
        for side in (2048, 4096):  # the big squares, for models that reach them (PixArt-Sigma, Sana)
            if side * side > area and side <= self.limits.max_side and side * side <= self.limits.max_pixels:
                sizes.append((side, side))
        return sizes

    def recommended(self) -> dict:
        """The settings "Use" loads: the published recommendation, the authors' defaults where there is none."""
        card, d = self.card, self.defaults
        return dict(steps=card.steps or d.steps, guidance=d.guidance if card.guidance is None else card.guidance)

    def catalog_weights(self) -> memory.Weights:
        """The catalog's component sizes, until the files' own are known (``studio.weights.measure``)."""
        return memory.Weights(tuple((name, int(size * memory.GB)) for name, size in self.weights_gb), "catalog estimate")

    def memory(self, weights: memory.Weights | None = None) -> MemoryListing:
        """The memory need in GB: the weights per component and each plan's device need at the default size."""
        weights = weights or self.catalog_weights()
        d = self.defaults

        def gb(size: int) -> float:
            return round(size / memory.GB, 1)

        plans = {plan.value: gb(memory.need(plan, weights, d.width, d.height).device) for plan in memory.PLANS}
        smallest = memory.PLANS[-1].value
        return dict(
            published=self.card.memory_gb, studio=plans[memory.Plan.FULL], weights=gb(weights.total),
            components={name: gb(size) for name, size in weights.components}, source=weights.source,
            plans=plans, smallest_plan=smallest, smallest=plans[smallest], plan=self.memory_plan,
        )

    def listing(self, weights: memory.Weights | None = None) -> ModelListing:
        """What both APIs' model listings say about this model (``/v1/models`` and the Gradio ``/models``);
        ``weights``: the files' own sizes where known (else the catalog's)."""
        lim, card = self.limits, self.card
        return dict(
            id=self.id, label=self.label, family=self.family, repo=self.repo, aliases=list(self.aliases),
            rank=card.rank, stars=card.stars, group=card.group, strengths=card.strengths, best_for=card.best_for,
            recommended=dict(text=card.recommended, **self.recommended()),
            memory_gb=self.memory(weights),
            negative_prompt=self.negative_prompt, cfg=self.cfg, tasks=list(self.tasks), samplers=self.samplers,
            defaults=self.defaults.as_dict(),
            limits=dict(
                size_multiple=lim.size_multiple, min_side=lim.min_side, max_side=lim.max_side,
                max_pixels=lim.max_pixels, max_steps=lim.max_steps, min_guidance=lim.min_guidance,
                max_guidance=lim.max_guidance, allowed_sizes=[f"{w}x{h}" for w, h in lim.allowed_sizes],
                max_seed=MAX_SEED,
            ),
            sizes=[f"{w}x{h}" for w, h in self.size_presets()],
        )

    def bounds(self, name: str) -> tuple[float, float]:
        """The allowed range of a request field for this model: the one source of the UI's hints and the errors."""
        lim = self.limits
        return {
            "width": (lim.min_side, lim.max_side),
            "height": (lim.min_side, lim.max_side),
            "steps": (1, lim.max_steps),
            "guidance": (lim.min_guidance, lim.max_guidance),
        }[name]

    def allowed(self, name: str) -> str:
        """``bounds`` in words: ``"32..256"``, ``"0"`` for a fixed value."""
        low, high = self.bounds(name)
        return f"{low:g}" if low == high else f"{low:g}..{high:g}"

    def out_of_range(self, name: str, value: float) -> InvalidRequest:
        """The error for ``value`` outside ``bounds(name)``."""
        if name == "guidance" and not self.cfg:
            reason = f"{self.id} is guidance-distilled; guidance must be {self.allowed(name)}"
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            reason = f"{shown} is out of range for {self.id}; allowed {self.allowed(name)}"
        return InvalidRequest(f"{name}: {reason}", field=name)

    def _fit(self, value: float) -> int:
        multiple = self.limits.size_multiple
        side = max(self.limits.min_side, min(self.limits.max_side, round(value / multiple) * multiple))
        return side

    def check(self, request: GenerationRequest) -> GenerationRequest:
        """Validate against this model's limits and fill every unset field; draws the seed.

        Returns the resolved request (``model`` is this spec's id). Raises ``InvalidRequest``
        naming the field and the allowed values.
        """
        d, lim = self.defaults, self.limits
        if not request.prompt and request.task != families.IMAGE_TO_IMAGE:
            # Image-to-image can vary the input alone (a variation); every other task needs words to follow.
            raise InvalidRequest(
                "prompt: must have at least 1 character (only image-to-image, a variation of the input image, "
                "may go without one)", field="prompt",
            )
        width = request.width if request.width is not None else d.width
        height = request.height if request.height is not None else d.height
        strength = self._check_strength(request)
        steps = request.steps if request.steps is not None else d.steps
        if strength is not None and request.steps is None:
            # An edit runs steps x strength of the schedule: the default must still run at least one.
            steps = min(lim.max_steps, max(steps, math.ceil(1 / strength)))
        guidance = request.guidance if request.guidance is not None else d.guidance

        if lim.allowed_sizes:
            if (width, height) not in lim.allowed_sizes:
                allowed = ", ".join(f"{w}x{h}" for w, h in lim.allowed_sizes)
                raise InvalidRequest(
                    f"size: {width}x{height} is not supported by {self.id}; allowed sizes: {allowed}", field="size"
                )
        else:
            for name, value in (("width", width), ("height", height)):
                if value % lim.size_multiple:
                    raise InvalidRequest(
                        f"{name}: {value} must be a multiple of {lim.size_multiple} for {self.id}", field=name
                    )
                if not lim.min_side <= value <= lim.max_side:
                    raise self.out_of_range(name, value)
            if width * height > lim.max_pixels:
                raise InvalidRequest(
                    f"size: {width}x{height} is {width * height} pixels, over {self.id}'s budget of {lim.max_pixels}",
                    field="size",
                )
        if not 1 <= steps <= lim.max_steps:
            raise self.out_of_range("steps", steps)
        if strength is not None and steps * strength < 1:
            raise InvalidRequest(
                f"strength: {strength:g} of {steps} steps runs no denoising step; "
                f"raise strength or steps (steps x strength must be at least 1)",
                field="strength",
            )
        if not lim.min_guidance <= guidance <= lim.max_guidance:
            raise self.out_of_range("guidance", guidance)
        negative = request.negative_prompt or None
        if negative and not self.negative_prompt:
            raise InvalidRequest(f"negative_prompt: {self.id} does not support a negative prompt", field="negative_prompt")
        # The model's default negative is filled in here, not in the adapter, so the PNG metadata
        # and the API's answer record the prompt that really guided the image.
        negative = negative or d.negative_prompt
        seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED)
        return request.model_copy(
            update=dict(
                model=self.id, width=width, height=height, steps=steps, guidance=guidance,
                negative_prompt=negative, seed=seed, strength=strength, sampler=self._check_sampler(request.sampler),
            )
        )

    def _check_sampler(self, name: str | None) -> str | None:
        """The sampler as the table spells it; None (the model's own) stays None."""
        if name is None:
            return None
        known = samplers.canonical(name, self.family, self.scheduler)
        if known is None:
            raise InvalidRequest(
                f"sampler: {self.id} cannot run '{echo(name)}'; its samplers: {', '.join(self.samplers)}",
                field="sampler",
            )
        return known

    def _check_strength(self, request: GenerationRequest) -> float | None:
        """The edit's strength (its task's default when unset); None for text-to-image, which has none."""
        if request.mask is not None and request.image is None:
            raise InvalidRequest("mask: a mask needs an image to apply to", field="mask")
        if request.task not in self.tasks:
            raise InvalidRequest(f"image: {self.id} cannot do {request.task}", field="image")
        if request.task == families.TEXT_TO_IMAGE:
            if request.strength is not None:
                raise InvalidRequest("strength: only edits (an input image) have a strength", field="strength")
            return None
        strength = request.strength if request.strength is not None else DEFAULT_STRENGTH[request.task]
        if strength <= 0:
            raise InvalidRequest("strength: must be above 0 (allowed 0..1; 0 would return the input)", field="strength")
        return strength


@dataclass
class Catalog:
    models: dict[str, ModelSpec]  # in rank order
    default: str
    aliases: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()  # the ranking's groups, best first
    loras: LoraLibrary = field(default_factory=lambda: LoraLibrary(LORA_DIR))  # --lora-dir

    def grouped(self) -> list[tuple[str, list[ModelSpec]]]:
        """The models of each ranking group, groups and models in rank order."""
        return [(group, [spec for spec in self if spec.card.group == group]) for group in self.groups]

    def get(self, name: str | None) -> ModelSpec:
        """The spec for an id or alias (case-insensitive); ``None`` gives the default model."""
        key = (name or self.default).strip().lower()
        key = self.aliases.get(key, key)
        if key not in self.models:
            known = ", ".join(self.models)
            raise UnknownModel(f"model: unknown model '{echo(name)}'; available: {known}", field="model")
        return self.models[key]

    def parse(self, data: dict) -> tuple[ModelSpec, GenerationRequest]:
        """Plain data (a form, a JSON body) to a resolved request, with the limits of the model asked for.

        A number past the bounds every model shares (pydantic's) is refused with the requested
        model's own range, so width 5000 on a 256-px model says 32..256, not 16..4096.
        """
        spec = self.get(data.get("model"))
        try:
            request = parse_request(data)
        except InvalidRequest as exc:
            value = data.get(exc.field) if exc.field in BOUNDED_FIELDS else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                low, high = spec.bounds(exc.field)
                if not low <= value <= high:
                    raise spec.out_of_range(exc.field, value) from None
            raise
        return self.resolve(request)

    def resolve(self, request: GenerationRequest) -> tuple[ModelSpec, GenerationRequest]:
        """The one validation step of the data flow: find the model, check and fill the request."""
        spec = self.get(request.model)
        if request.task not in spec.tasks:
            able = ", ".join(self.able(request.task)) or "none"
            raise InvalidRequest(f"model: {spec.id} cannot do {request.task}; models that can: {able}", field="model")
        return spec, self.check_loras(spec, spec.check(request))

    def check_loras(self, spec: ModelSpec, request: GenerationRequest) -> GenerationRequest:
        """Each LoRA of the request found in the library (or a hub LoRA in the cache) and made for the model's
        family; the resolved request carries their files and hashes (for the worker and the images' metadata).
        A hub LoRA not in the cache stays without a file: the download phase fetches it, then calls this again."""
        if not request.loras:
            return request
        if not families.takes_loras(spec.family):
            able = ", ".join(self.lora_models()) or "none"
            raise LoraError(f"loras: {spec.id} cannot take LoRAs (diffusers has no LoRA loader for {spec.label}); "
                            f"models that take LoRAs: {able}")
        resolved = []
        for use in request.loras:
            found = self.find_lora(use.name)
            if found is None:
                resolved.append(use)  # on the hub, not in the cache yet
                continue
            if spec.family not in found.fits:
                fits = [other.id for other in self if other.family in found.fits]
                where = f"it fits {', '.join(fits)}" if fits else "no model here takes it"
                raise LoraError(f"loras: '{found.name}' is a LoRA for {found.family}, not for {spec.id} "
                                f"({spec.family}); {where}")
            use = LoraUse(name=found.name, scale=use.scale)
            use._path, use._hash = str(found.path), found.short_hash
            resolved.append(use)
        return request.model_copy(update={"loras": tuple(resolved)})

    def find_lora(self, name: str) -> LoraFile | None:
        """The library's LoRA called ``name``, else a hub LoRA of that name in the cache; None for a hub LoRA
        not downloaded yet; ``LoraError`` for anything else."""
        try:
            return self.loras.get(name)
        except LoraError:
            hub_name = hublora.parse(name)
            if hub_name is None:
                raise
        path = hublora.cached(*hub_name)
        return None if path is None else self.loras.read(path, name)

    def lora_listing(self) -> list[LoraListing]:
        """Each readable LoRA of the library, with the models it fits."""
        return [lora.listing([spec.id for spec in self if spec.family in lora.fits]) for lora in self.loras.all()]

    def lora_models(self) -> list[str]:
        """The ids of the models that take LoRAs."""
        return [spec.id for spec in self if families.takes_loras(spec.family)]

    def able(self, task: str) -> list[str]:
        """The ids of the models that can run ``task``."""
        return [spec.id for spec in self if task in spec.tasks]

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self):
        return len(self.models)


def _spec_from_table(model_id: str, table: dict, local_dir: Path | None) -> ModelSpec:
    table = dict(table)
    limits = dict(table.pop("limits"))
    limits["allowed_sizes"] = tuple(parse_size(s, "allowed_sizes") for s in limits.get("allowed_sizes", ()))
    return ModelSpec(
        id=model_id,
        defaults=Defaults(**table.pop("defaults")),
        limits=Limits(**limits),
        card=Card(**table.pop("card")),
        aliases=tuple(table.pop("aliases", ())),
        weights_gb=tuple(table.pop("weights_gb").items()),
        local_dir=local_dir,
        **table,
    )


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_catalog(models_dir: str | Path | None = None, path: Path | None = None,
                 lora_dir: str | Path | None = None) -> Catalog:
    """Read the catalog; a models folder adds local sources and their ``studio.toml`` overrides; ``lora_dir``
    is the LoRA library (default ``loras/``)."""
    data = tomllib.loads((path or PRESETS_DIR / "models.toml").read_text())
    models, aliases = {}, {}
    for model_id, table in data["models"].items():
        local_dir = None
        if models_dir is not None:
            candidate = Path(models_dir) / model_id
            if candidate.is_dir():
                local_dir = candidate.resolve()
                override = candidate / OVERRIDE_FILE
                if override.is_file():
                    table = _merge(table, tomllib.loads(override.read_text()))
                    table.setdefault("build", f"a local build ({OVERRIDE_FILE} of {model_id}/)")
        spec = _spec_from_table(model_id, table, local_dir)
        models[model_id] = spec
        for alias in spec.aliases:
            aliases[alias.lower()] = model_id
    groups = tuple(data["groups"])
    for spec in models.values():
        if spec.memory_plan is not None and spec.memory_plan not in memory.CHOICES:
            raise ValueError(f"{spec.id}: memory_plan {spec.memory_plan!r} is not one of {memory.CHOICES}")
        if spec.card.group not in groups:
            raise ValueError(f"{spec.id}: group {spec.card.group!r} is not one of {groups}")
    ranked = dict(sorted(models.items(), key=lambda item: item[1].card.rank))
    return Catalog(models=ranked, default=data["default"], aliases=aliases, groups=groups,
                   loras=LoraLibrary(lora_dir or LORA_DIR))
