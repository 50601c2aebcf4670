"""``POST /v1/images/edits`` and ``/v1/images/variations``: image-to-image and inpainting through
the OpenAI Images API.

The request is ``multipart/form-data``, as the OpenAI SDK sends it: the ``image`` file (one;
of a list, ``image[]``, the first is used), an optional ``mask`` file, and the fields of
``ImageEditRequest`` as form values. Without a mask it is image-to-image; with one, inpainting,
and the mask follows OpenAI's convention: its fully transparent pixels (alpha 0) are the area
to repaint (a mask without alpha: white is repainted). ``size`` defaults to the input's size
fitted to the model's rules. The upload is checked once here (``studio.uploads``), the request
once by the catalog, then the job runs like a generation: a JSON answer, or with ``stream``
the server-sent events of ``studio.streaming``.

A variation is the same image-to-image job with an empty prompt: the image alone guides it, at a
strength that keeps its composition. Its form takes no ``prompt`` and no ``mask``, and it never
streams (OpenAI's variations do not).

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from studio import streaming, uploads
from studio.catalog import ModelSpec
from studio.errors import InvalidRequest
from studio.owners import rest_owner
from studio.openai_api import RESPONSE_FORMAT_DOC, answer, request_data, require_api_key, with_extras
from studio.responses import GENERATION_ERRORS, ImagesResponse
from studio.schemas import MAX_IMAGES, SIZE_PATTERN, SIZE_SHAPE, parse_size, request_fields, value_type

IMAGE_FIELDS = ("image", "image[]")
EDIT_FILES = ("image", "mask")  # the files each route takes, "image" standing for "image[]" too
VARIATION_FILES = ("image",)
MAX_FORM_FIELDS = 64
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")  # the latter can only lack the image
# Variations have no prompt to steer them, so the strength alone says how far they wander: at 0.6 the
# input's layout, colours and subject survive (the early, coarse steps are skipped) while textures and
# details are drawn anew. Above ~0.8 an empty prompt drifts toward an unrelated image; below ~0.4 the
# variations barely differ from the input or from each other.
VARIATION_STRENGTH = 0.6


# A list field in a form (loras): repeated `loras=NAME:SCALE` values, or the OpenAI SDK's `extra_body`
# flattened as `loras[][name]=...&loras[][scale]=...` (or `loras[0][name]`); one value may also be JSON.
FORM_LIST_ITEM = re.compile(r"(\w+)\[\d*\](?:\[(\w+)\])?")
LIST_FIELDS = tuple(name for name, info, _ in request_fields() if value_type(info) is tuple)


def add_list_item(fields: dict, name: str, key: str | None, value: str) -> None:
    """Add one form value to the list field ``name``: a whole item, or the ``key`` of the current item (a
    key the current item already has starts the next one)."""
    items = fields.get(name)
    items = fields[name] = items if isinstance(items, list) else ([items] if items is not None else [])
    if key is None:
        items.append(value)
    elif items and isinstance(items[-1], dict) and key not in items[-1]:
        items[-1][key] = value
    else:
        items.append({key: value})


def size_or_auto(value: str | None) -> str | None:
    """A form's ``size``: 'WIDTHxHEIGHT' lower-cased, or None for unset and 'auto' (the input's size)."""
    if value is None or value.strip().lower() == "auto":
        return None
    if not SIZE_PATTERN.fullmatch(value.strip().lower()):  # match() let '64x64x64' through to a 500
        raise ValueError(f"must be {SIZE_SHAPE} or 'auto'")
    return value.strip().lower()


@with_extras("edits")
class ImageEditRequest(BaseModel):
    """The form fields of ``POST /v1/images/edits`` (the files aside): OpenAI's first, then the extras."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # -- OpenAI Images API fields ------------------------------------------------------------
    prompt: str = Field(description="A text description of the desired image(s).")
    model: str | None = Field(None, description="A model that can edit (GET /v1/models: `tasks`); default model when unset.")
    n: int | None = Field(None, ge=1, le=MAX_IMAGES, description=f"Number of images, 1..{MAX_IMAGES} (one batch).")
    size: str | None = Field(
        None, description="'WIDTHxHEIGHT', or 'auto' (default): the input image's size fitted to the model's rules."
    )
    response_format: Literal["url", "b64_json"] | None = Field(None, description=RESPONSE_FORMAT_DOC)
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="'png' (default), 'jpeg' or 'webp'.")
    output_compression: int | None = Field(None, ge=0, le=100, description="Quality 0..100 of jpeg and webp output.")
    stream: bool | None = Field(None, description="true: answer with server-sent events (partial images, then the images).")
    partial_images: int | None = Field(
        None, ge=0, le=streaming.MAX_PARTIAL_IMAGES, description="Previews sent while streaming, 0..3 (default 0)."
    )
    quality: Literal["auto", "low", "medium", "high", "standard"] | None = Field(None, description="Accepted; no effect.")
    background: Literal["auto", "opaque"] | None = Field(None, description="Accepted; images are always opaque.")
    input_fidelity: Literal["low", "high"] | None = Field(None, description="Accepted; use `strength` instead.")
    user: str | None = Field(None, description="Accepted for compatibility; not stored.")
    safety_identifier: str | None = Field(None, description="Accepted for compatibility; not stored.")

    # -- Image Studio extras (the SDK sends them through extra_body): added by with_extras, from
    #    GenerationRequest (studio/schemas.py)

    _size = field_validator("size")(size_or_auto)


@with_extras("variations")
class ImageVariationRequest(BaseModel):
    """The form fields of ``POST /v1/images/variations`` (the image aside): OpenAI's first, then the extras."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # -- OpenAI Images API fields ------------------------------------------------------------
    model: str | None = Field(None, description="A model that can edit (GET /v1/models: `tasks`); default model when unset.")
    n: int | None = Field(None, ge=1, le=MAX_IMAGES, description=f"Number of variations, 1..{MAX_IMAGES} (one batch).")
    size: str | None = Field(
        None, description="'WIDTHxHEIGHT', or 'auto' (default): the input image's size fitted to the model's rules."
    )
    response_format: Literal["url", "b64_json"] | None = Field(None, description=RESPONSE_FORMAT_DOC)
    user: str | None = Field(None, description="Accepted for compatibility; not stored.")
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="'png' (default), 'jpeg' or 'webp'.")
    output_compression: int | None = Field(None, ge=0, le=100, description="Quality 0..100 of jpeg and webp output.")

    # -- Image Studio extras (the SDK sends them through extra_body): added by with_extras, from
    #    GenerationRequest (studio/schemas.py); an unset strength is VARIATION_STRENGTH here

    # What request_data and answer read of every Images body: a variation has no prompt and never streams.
    prompt: ClassVar[str] = ""
    stream: ClassVar[None] = None
    partial_images: ClassVar[None] = None

    _size = field_validator("size")(size_or_auto)

    @model_validator(mode="before")
    @classmethod
    def _no_prompt(cls, data):
        for name in ("prompt", "mask"):
            if name in data:  # a StudioError passes through pydantic: the 400 names the field, with the way out
                raise InvalidRequest(
                    f"{name}: a variation takes no {name}; to edit after a prompt or in a mask, "
                    "use POST /v1/images/edits", field=name,
                )
        return data


async def read_form(request: Request, schema: type[BaseModel], takes: tuple[str, ...]):
    """The form's fields as ``schema`` and its checked files (``takes``: "image", and "mask" where the route
    has one) as ``(body, image, mask or None)``; any problem is a 400 naming the field."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPES):
        raise InvalidRequest("body: send multipart/form-data with an 'image' file (as the OpenAI SDK does)", field=None)
    file_fields = (*IMAGE_FIELDS, *takes)
    form = await request.form(max_fields=MAX_FORM_FIELDS)
    try:
        fields, files = {}, {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in file_fields:
                    expected = " and optionally ".join(f"'{name}'" for name in takes)
                    raise InvalidRequest(f"{key}: unexpected file; send {expected}", field=key)
                files.setdefault("image" if key in IMAGE_FIELDS else key, value)  # of several images, the first
            elif key in file_fields:
                raise InvalidRequest(f"{key}: must be a file upload", field=key)
            elif (item := FORM_LIST_ITEM.fullmatch(key)) or key in fields and key in LIST_FIELDS:
                add_list_item(fields, *(item.groups() if item else (key, None)), value)
            else:
                fields[key] = value
        if "image" not in files:
            raise InvalidRequest("image: an image file is required", field="image")
        try:
            body = schema.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        image = await run_in_threadpool(uploads.check_image, await files["image"].read(), "image")
        mask = None
        if "mask" in files:
            mask = await run_in_threadpool(uploads.check_mask, await files["mask"].read(), image)
        return body, image, mask
    finally:
        await form.close()


def resolve_edit(catalog, body: ImageEditRequest | ImageVariationRequest, image: uploads.Upload,
                 mask: uploads.Upload | None = None, default_strength: float | None = None):
    """The edit as ONE resolved ``GenerationRequest``: size from the input when unset, then the catalog's check
    (which also fills an unset strength with its task's default, where ``default_strength`` does not)."""
    spec: ModelSpec = catalog.get(body.model)
    if body.size:
        width, height = parse_size(body.size)
    else:
        width, height = spec.fit_size(image.width, image.height)
    data = request_data(
        body, width=width, height=height, num_images=body.n or 1,
        strength=default_strength if body.strength is None else body.strength,
        image=image.data, mask=mask.data if mask else None,
    )
    try:
        return catalog.parse(data)
    except InvalidRequest as exc:
        if exc.field in ("width", "height"):
            exc.field = "size"
        raise


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["OpenAI-compatible"])

IMAGE_FILE = {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP, up to 50 MB."}
MASK_FILE = {"type": "string", "format": "binary", "description": "PNG of the image's size; alpha 0 (fully transparent) = repaint."}


def form_schema(schema: type[BaseModel], files: dict) -> dict:
    """The OpenAPI request body of a multipart route (FastAPI cannot derive it: the route reads the form itself)."""
    fields = schema.model_json_schema()
    properties = {**files, **fields["properties"]}
    required = ["image", *fields.get("required", ())]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": required, "properties": properties}
    }}}}


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses={**GENERATION_ERRORS, 200: {"content": {streaming.MEDIA_TYPE: {}}}},
    summary="Edit an image: image-to-image, or inpainting with a mask (OpenAI Images API)",
    openapi_extra=form_schema(ImageEditRequest, {"image": IMAGE_FILE, "mask": MASK_FILE}),
)
async def create_image_edit(request: Request):
    """Repaint an input image after a prompt; with a mask, only where the mask is transparent.
    Closing the connection cancels the job."""
    state = request.app.state
    body, image, mask = await read_form(request, ImageEditRequest, EDIT_FILES)
    spec, resolved = resolve_edit(state.catalog, body, image, mask)
    return await answer(state.backend.submit(spec, resolved, rest_owner(request)), "image_edit", body, request)


@router.post(
    "/images/variations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=GENERATION_ERRORS,
    summary="Variations of an image: image-to-image with no prompt (OpenAI Images API)",
    description="Redraw an input image's details, keeping its composition, on a model that can edit. An unset "
    f"`strength` is {VARIATION_STRENGTH:g} here. Closing the connection cancels the job.",
    openapi_extra=form_schema(ImageVariationRequest, {"image": IMAGE_FILE}),
)
async def create_image_variation(request: Request):
    """Image-to-image with no prompt, at ``VARIATION_STRENGTH`` unless told (the route's description says more)."""
    state = request.app.state
    body, image, _ = await read_form(request, ImageVariationRequest, VARIATION_FILES)
    spec, resolved = resolve_edit(state.catalog, body, image, default_strength=VARIATION_STRENGTH)
    return await answer(state.backend.submit(spec, resolved, rest_owner(request)), "image_edit", body, request)
