"""The request and result shapes shared by every face of the studio.

``GenerationRequest`` carries only the limits that hold for every model; the
model-specific ones live in the catalog (``ModelSpec.check``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Iterator, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from studio.errors import InvalidRequest, echo

MAX_SEED = 2**32 - 1  # what A1111-style tools and most UIs accept
MAX_IMAGES = 4
MAX_PREVIEWS = 8  # partial images per job: enough to watch it form, few enough to cost nothing
TASKS = ("text-to-image", "image-to-image", "inpainting")
# Every face's default edit strength, by task. Image-to-image keeps a quarter of the input's structure
# (A1111's default denoising strength); inpainting repaints the masked area whole (the mask already keeps
# the rest), as OpenAI's edits do.
DEFAULT_STRENGTH = {"image-to-image": 0.75, "inpainting": 1.0}
SIZE_PATTERN = re.compile(r"[0-9]{1,5}x[0-9]{1,5}")  # ASCII digits only: "٦٤x٦٤" is no size
SIZE_SHAPE = "'WIDTHxHEIGHT' (e.g. '1024x1024', no spaces)"
MAX_LORAS = 8
# A1111's prompt syntax for a LoRA, which SwarmUI and LocalAI read too: <lora:NAME> or <lora:NAME:WEIGHT>.
LORA_TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)

# The REST routes whose request models carry a field as an Image Studio extra (studio.openai_api).
ALL_ROUTES = ("generations", "edits", "variations")
EDIT_ROUTES = ("edits", "variations")


@dataclass(frozen=True)
class Faces:
    """How the faces show one ``GenerationRequest`` field, next to its type, bounds and description.

    Each face reads this by field name, so a new field is declared once: the REST request models add it
    to their extras (``routes``), the CLI makes its flag, the images' A1111 text writes it, the UI labels it.
    """

    label: str  # the UI's label
    routes: tuple[str, ...] = ALL_ROUTES  # REST routes with it as an extra; () where OpenAI names it (prompt, model)
    flag: str | None = None  # its flag of `python -m studio generate`
    a1111: str | None = None  # its key in the images' A1111 parameters text; None: not written there


class LoraUse(BaseModel):
    """One LoRA of a request: its name in the library (``GET /v1/loras``) and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=300, description="A LoRA of GET /v1/loras (or a hub `owner/repo`).")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="Its weight; 0 leaves the image as without it.")
    # Set when the catalog resolves the request (never from input): the file and its A1111 hash.
    _path: str | None = PrivateAttr(None)
    _hash: str | None = PrivateAttr(None)

    @classmethod
    def parse(cls, text: str, field: str = "loras", shown: str | None = None) -> "LoraUse":
        """``"NAME"`` or ``"NAME:SCALE"`` (the CLI's ``--lora``, a form value, a prompt tag's inside)."""
        name, colon, scale = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
        try:
            return cls(name=name.strip(), scale=float(scale) if colon else 1.0)
        except ValueError:  # a weight that is no number, or a bound: say it with the text as given
            low, high = field_bounds("scale", cls)
            raise InvalidRequest(f"{field}: '{echo(shown or text)}' must be NAME or NAME:SCALE with SCALE a number in "
                                 f"{low:g}..{high:g}", field=field) from None

    def tag(self) -> str:
        """How A1111 writes it in a prompt."""
        return f"<lora:{self.name}:{self.scale:g}>"


class GenerationRequest(BaseModel):
    """One text-to-image job. ``None`` means "the model's default".

    Every request field is declared here once: its type, bounds and description, and in ``Faces`` how the
    faces show it. A new field is declared here and used in the family adapters; the rest follows.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    prompt: Annotated[str, Faces("Prompt", routes=(), flag="--prompt")] = Field(
        max_length=10000, description="What to draw; empty only for image-to-image (a variation of the input)."
    )
    negative_prompt: Annotated[str | None, Faces("Negative prompt", flag="--negative-prompt")] = Field(
        None, max_length=10000, description="What to avoid; only for models whose `negative_prompt` capability is true."
    )
    model: Annotated[str | None, Faces("Model", routes=(), flag="--model")] = Field(
        None, description="Model id or alias; the catalog's default when unset."
    )
    steps: Annotated[int | None, Faces("Steps", flag="--steps", a1111="Steps")] = Field(
        None, ge=1, le=150,
        description="Denoising steps; the model's default when unset. An edit runs steps x strength of them.",
    )
    sampler: Annotated[str | None, Faces("Sampler", flag="--sampler", a1111="Sampler")] = Field(
        None, max_length=64,
        description="A1111's sampler name, e.g. 'Euler a' or 'DPM++ 2M Karras' (GET /v1/models lists each model's "
        "`samplers`); the scheduler the model ships when unset.",
    )
    guidance: Annotated[float | None, Faces("Guidance", flag="--guidance", a1111="CFG scale")] = Field(
        None, ge=0.0, le=30.0, description="Classifier-free guidance scale; the model's default when unset."
    )
    seed: Annotated[int | None, Faces("Seed", flag="--seed", a1111="Seed")] = Field(
        None, ge=0, le=MAX_SEED, description="Seed of the first image; image i uses seed + i. Random when unset."
    )
    # The size and the count: REST's OpenAI fields are `size` and `n`, the CLI's `--size` and `--n`.
    width: Annotated[int | None, Faces("Width", routes=("generations",), a1111="Size")] = Field(
        None, ge=16, le=4096, description="Image width in pixels; an alternative to `size`."
    )
    height: Annotated[int | None, Faces("Height", routes=("generations",))] = Field(
        None, ge=16, le=4096, description="Image height in pixels; an alternative to `size`."
    )
    num_images: Annotated[int, Faces("Images", routes=("generations",), flag="--n")] = Field(
        1, ge=1, le=MAX_IMAGES, description="Images generated in one batched call; an alias of `n`."
    )
    loras: Annotated[tuple[LoraUse, ...], Faces("LoRAs", flag="--lora", a1111="Lora hashes")] = Field(
        (), max_length=MAX_LORAS,
        description=f"LoRAs applied to the model, at most {MAX_LORAS}: [{{\"name\", \"scale\"}}] (scale -4..4, "
        "default 1), or \"NAME:SCALE\" strings; <lora:NAME:SCALE> tags in the prompt add to them.",
    )
    # -- edits: an input image makes it image-to-image, a mask too makes it inpainting
    strength: Annotated[float | None, Faces("Strength", routes=EDIT_ROUTES, a1111="Denoising strength")] = Field(
        None, ge=0.0, le=1.0,
        description="How much of the input image is repainted (edits only; 1 = all of it); unset: "
        f"{DEFAULT_STRENGTH['image-to-image']:g} without a mask, {DEFAULT_STRENGTH['inpainting']:g} with one.",
    )
    image: bytes | None = Field(None, exclude=True, repr=False, description="The input image file (edits only).")
    mask: bytes | None = Field(
        None, exclude=True, repr=False, description="The mask file (inpainting): alpha 0, or white where opaque, is repainted."
    )
    # -- delivery, not a parameter of the image (so not in its metadata)
    previews: int = Field(0, ge=0, le=MAX_PREVIEWS, exclude=True, description="Preview images sent during the run.")

    @property
    def denoising_steps(self) -> float:
        """The steps that really run: an edit runs ``steps x strength`` of the schedule (about; pipelines round)."""
        return self.steps * (self.strength if self.image is not None and self.strength else 1.0)

    @property
    def task(self) -> str:
        """ "text-to-image", "image-to-image" (an input image) or "inpainting" (an image and a mask)."""
        if self.image is None:
            return "text-to-image"
        return "inpainting" if self.mask is not None else "image-to-image"

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        # Prompts end up in PNG text chunks, where NUL is forbidden; no other control character means anything.
        for index, char in enumerate(value or ""):
            if unicodedata.category(char) == "Cc" and char not in "\t\n\r":
                raise PydanticCustomError(
                    "control_character",
                    "contains the control character U+{code} at position {index}; only tab and line breaks are allowed",
                    {"code": f"{ord(char):04X}", "index": index},
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _lora_tags(cls, data):
        """``<lora:NAME:SCALE>`` in the prompt is taken out of its text and acts as a ``loras`` entry."""
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str) or "<lora:" not in prompt.lower():
            return data
        tagged = [LoraUse.parse(inside, field="prompt", shown=f"<lora:{inside}>") for inside in LORA_TAG.findall(prompt)]
        text = re.sub(r"[ \t]{2,}", " ", LORA_TAG.sub("", prompt)).strip().strip(",").strip()
        return {**data, "prompt": text, "loras": [*_lora_items(data.get("loras")), *tagged]}

    @field_validator("loras", mode="before")
    @classmethod
    def _lora_items(cls, value):
        return _lora_items(value)

    @field_validator("loras")
    @classmethod
    def _one_each(cls, value: tuple[LoraUse, ...]) -> tuple[LoraUse, ...]:
        names = [lora.name.removesuffix(".safetensors") for lora in value]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise PydanticCustomError("duplicate_lora", "names {names} twice; give each LoRA once, with one scale",
                                       {"names": ", ".join(twice)})
        return value

    @property
    def seeds(self) -> list[int]:
        """One seed per image, so any image can be reproduced alone with n=1."""
        if self.seed is None:
            raise ValueError("seeds of an unresolved request")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.num_images)]


def _lora_items(value):
    """``loras`` as given: a list of ``{name, scale}``, of ``"NAME:SCALE"`` strings, one such string (commas
    between LoRAs), or a JSON list in a string (a form field); None is none."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return _lora_items(json.loads(text))
            except ValueError:
                raise InvalidRequest("loras: not valid JSON; send [{\"name\": ..., \"scale\": ...}]",
                                     field="loras") from None
        value = [part for part in text.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return [LoraUse.parse(item) if isinstance(item, str) else item for item in value]
    return value


def parse_size(text: str, field: str = "size") -> tuple[int, int]:
    """``'1024x768'`` (any case) as ``(1024, 768)``: the one reader of sizes, for every face and the catalog;
    anything else is an ``InvalidRequest`` naming ``field``."""
    value = text.strip().lower() if isinstance(text, str) else ""
    if not SIZE_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{field}: '{echo(text)}' must be {SIZE_SHAPE}", field=field)
    width, height = value.split("x")
    return int(width), int(height)


def parse_request(data: dict) -> GenerationRequest:
    """Build a request from plain data; pydantic errors become one ``InvalidRequest`` naming the field."""
    try:
        return GenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc) from None


def invalid_from_pydantic(exc: ValidationError) -> InvalidRequest:
    """The first pydantic error as ``"<field>: <reason>"`` (pydantic's reasons already state the bound)."""
    first = exc.errors()[0]
    field_name = echo(".".join(str(part) for part in first["loc"]) or "body")
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    if first["loc"][:1] == ("loras",):  # one LoRA's name or scale: its bounds are LoraUse's
        allowed, field = allowed_range(str(first["loc"][-1]), LoraUse), "loras"
    else:
        allowed, field = allowed_range(field_name), field_name
    if allowed:
        message = f"{message} (allowed {allowed})"
    return InvalidRequest(f"{field_name}: {message}", field=field)


def allowed_range(field_name: str, model: type[BaseModel] = GenerationRequest) -> str | None:
    """``"1..4"`` for a field of ``model`` bounded by ``ge``/``le``, else None."""
    bounds = field_bounds(field_name, model)
    if bounds is None:
        return None
    low, high = bounds
    return f"{low:g}..{high:g}" if isinstance(low, float) else f"{low}..{high}"


def field_bounds(field_name: str, model: type[BaseModel] = GenerationRequest) -> tuple[float, float] | None:
    """The ``ge``/``le`` bounds of a field of ``model``, when it has both (the one reader of bounds)."""
    info = model.model_fields.get(field_name)
    if info is None:
        return None
    low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    return None if low is None or high is None else (low, high)


def request_fields() -> Iterator[tuple[str, FieldInfo, Faces]]:
    """``(name, field, faces)`` of each ``GenerationRequest`` field a face shows, in declaration order."""
    for name, info in GenerationRequest.model_fields.items():
        faces = next((m for m in info.metadata if isinstance(m, Faces)), None)
        if faces is not None:
            yield name, info, faces


def faces(field_name: str) -> Faces:
    """How the faces show ``field_name`` (a ``KeyError`` for a field no face shows)."""
    return {name: found for name, _, found in request_fields()}[field_name]


def value_type(info: FieldInfo) -> type:
    """The plain type of a field: ``int`` for ``int | None``, ``tuple`` for a list of values."""
    if get_origin(info.annotation) in (tuple, list):
        return tuple
    kinds = [kind for kind in get_args(info.annotation) if kind is not type(None)] or [info.annotation]
    return kinds[0]


@dataclass
class JobResult:
    """What a worker returns: PNG bytes (metadata inside) plus the resolved parameters."""

    request: GenerationRequest
    images: list[bytes]
    slot: int = 0
    duration_s: float = 0.0
    loaded_model: bool = False  # this job paid for a model load

    @property
    def seeds(self) -> list[int]:
        return self.request.seeds


class JobStage(StrEnum):
    """What a job is doing, in the order it happens (a ``str``: JSON and logs show the plain word)."""

    DOWNLOADING = "downloading"  # its model's weights (the download phase, in front of the backend)
    QUEUED = "queued"
    LOADING = "loading"  # its slot loads its model
    GENERATING = "generating"  # the model is loaded: denoising starts
    STEP = "step"  # a denoising step is done
    PREVIEW = "preview"  # a preview image of the latents
    ENCODING = "encoding"  # decoded: the PNGs are being written


@dataclass
class Progress:
    """A progress event: ``step`` of ``total`` on ``slot``; ``stage`` names what is happening."""

    stage: JobStage
    step: int = 0
    total: int = 0
    slot: int | None = None
    queue_position: int | None = None  # QUEUED: 0 is next
    queue_length: int | None = None  # QUEUED: the jobs in line, every owner's
    wait_s: float | None = None  # QUEUED: when it should start, from the same estimates as Retry-After
    detail: str | None = None  # DOWNLOADING: the download in words
    bytes_done: int = 0  # DOWNLOADING
    bytes_total: int = 0
    preview_index: int | None = None  # PREVIEW: 0, 1, ... in the order they are made
    preview_png: bytes | None = None  # PREVIEW: at the latents' resolution
