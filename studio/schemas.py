"""The request and result shapes shared by every face of the studio.

``GenerationRequest`` carries only the limits that hold for every model; the
model-specific ones live in the catalog (``ModelSpec.check``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from studio.errors import InvalidRequest, echo

MAX_SEED = 2**32 - 1  # what A1111-style tools and most UIs accept
MAX_IMAGES = 4
MAX_PREVIEWS = 8  # partial images per job: enough to watch it form, few enough to cost nothing
TASKS = ("text-to-image", "image-to-image", "inpainting")
SIZE_PATTERN = re.compile(r"[0-9]{1,5}x[0-9]{1,5}")  # ASCII digits only: "٦٤x٦٤" is no size
SIZE_SHAPE = "'WIDTHxHEIGHT' (e.g. '1024x1024', no spaces)"


class GenerationRequest(BaseModel):
    """One text-to-image job. ``None`` means "the model's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    prompt: str = Field(
        max_length=10000, description="What to draw; empty only for image-to-image (a variation of the input)."
    )
    negative_prompt: str | None = Field(None, max_length=10000, description="What to avoid (models that support it).")
    model: str | None = Field(None, description="Model id or alias; the catalog's default when unset.")
    width: int | None = Field(None, ge=16, le=4096, description="Image width in pixels.")
    height: int | None = Field(None, ge=16, le=4096, description="Image height in pixels.")
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps.")
    guidance: float | None = Field(None, ge=0.0, le=30.0, description="Classifier-free guidance scale.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of the first image; image i uses seed + i.")
    num_images: int = Field(1, ge=1, le=MAX_IMAGES, description="Images generated in one batched call.")
    # -- edits: an input image makes it image-to-image, a mask too makes it inpainting
    strength: float | None = Field(
        None, ge=0.0, le=1.0, description="How much of the input image is repainted (edits only); 1 = all of it."
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

    @property
    def seeds(self) -> list[int]:
        """One seed per image, so any image can be reproduced alone with n=1."""
        if self.seed is None:
            raise ValueError("seeds of an unresolved request")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.num_images)]


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
    allowed = allowed_range(field_name)
    if allowed:
        message = f"{message} (allowed {allowed})"
    return InvalidRequest(f"{field_name}: {message}", field=field_name)


def allowed_range(field_name: str) -> str | None:
    """``"1..4"`` for a field bounded by ``ge``/``le`` in ``GenerationRequest``, else None."""
    info = GenerationRequest.model_fields.get(field_name)
    if info is None:
        return None
    low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    if low is None or high is None:
        return None
    return f"{low:g}..{high:g}" if isinstance(low, float) else f"{low}..{high}"


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
    wait_s: float | None = None  # QUEUED: when it should start, from the same estimates as Retry-After
    detail: str | None = None  # DOWNLOADING: the download in words
    bytes_done: int = 0  # DOWNLOADING
    bytes_total: int = 0
    preview_index: int | None = None  # PREVIEW: 0, 1, ... in the order they are made
    preview_png: bytes | None = None  # PREVIEW: at the latents' resolution
