"""The OpenAI-compatible REST API: Images API request/response models and the ``/v1`` routes.

The request model mirrors ``POST /v1/images/generations`` of the OpenAI Images API field by
field, then adds Image Studio's own fields in a marked block. Each request becomes ONE
``GenerationRequest``, is resolved by the catalog (the one validation step), submitted to the
backend and awaited. ``error_response`` is the one place where an exception becomes an
OpenAI error object ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status.

The app keeps its services on ``app.state``: ``settings``, ``catalog``, ``backend``,
``metrics`` and ``started_at`` (set by ``studio.server.create_app``).

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from studio import pngmeta, streaming
from studio.catalog import ModelSpec
from studio.config import api_keys
from studio.errors import InvalidRequest, JobCancelled, JobTimeout, QueueFull, StudioError, Unauthorized, echo
from studio.history import History, owner_dir
from studio.owners import note_owner, rest_owner
from studio.responses import (GENERATION_ERRORS, READ_ERRORS, ImageData, ImagesResponse, LoraList, ModelList,
                              ModelObject)
from studio.schemas import (MAX_IMAGES, SIZE_PATTERN, SIZE_SHAPE, GenerationRequest, JobResult, allowed_range,
                            field_bounds, parse_size, request_fields, value_type)

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.25  # how often a waiting request checks whether its client is still there
TIMEOUT_GRACE_S = 5.0  # the backend times jobs out itself; this only backs it up
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but logs show what happened

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
RESPONSE_FORMAT_DOC = (
    "Unset (default): each image as both `url` and `b64_json`, so clients that read either field work. "
    "'b64_json': only the base64 image data. 'url': only a data URL ('data:image/png;base64,...'); "
    "this server keeps no public file host, so no http URL is ever returned."
)


def with_extras(route: str):
    """A class decorator: the OpenAI request model ``cls`` with Image Studio's extras for ``route`` after its own
    fields: each ``GenerationRequest`` field declared for the route (``Faces.routes``), its type and description.
    Unset is the model's default; the bounds are checked once, in ``GenerationRequest``, and shown here."""

    def add(cls: type[BaseModel]) -> type[BaseModel]:
        extras = {
            name: (extra_type(info), extra_field(name, info))
            for name, info, faces in request_fields() if route in faces.routes
        }
        return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **extras)

    return add


def extra_type(info) -> Any:
    """A field's type as an extra, unset allowed. A list field (``loras``) takes objects or strings
    (``"NAME:SCALE"``; one string, commas between), which ``GenerationRequest`` checks once, naming the item."""
    if value_type(info) is tuple:
        return list[dict | str] | str | None
    return info.annotation | None


def extra_field(name: str, info) -> Any:
    bounds = field_bounds(name)
    if bounds is None:
        return Field(None, description=info.description)
    description = f"{info.description} Allowed {allowed_range(name)}; the model may allow less (see GET /v1/models)."
    return Field(None, description=description, json_schema_extra={"minimum": bounds[0], "maximum": bounds[1]})


# ---------------------------------------------------------------- request and response models


@with_extras("generations")
class ImageGenerationRequest(BaseModel):
    """``POST /v1/images/generations``: the OpenAI fields first, then Image Studio's extras."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # JSON types as documented: "n": "2", "n": true and "seed": "42" are errors, not guesses
        protected_namespaces=(),
        json_schema_extra={"examples": [{"model": "sdxl-turbo", "prompt": "a red fox in snow", "n": 1,
                                         "size": "512x512", "response_format": "b64_json"}]},
    )

    # -- OpenAI Images API fields ------------------------------------------------------------
    prompt: str = Field(description="A text description of the desired image(s).")
    model: str | None = Field(
        None, description="A model id or alias from GET /v1/models; the studio's default model when unset."
    )
    n: int | None = Field(None, ge=1, le=MAX_IMAGES, description=f"Number of images, 1..{MAX_IMAGES} (one batch).")
    size: str | None = Field(
        None,
        description="'WIDTHxHEIGHT' (e.g. '1024x1024'), or 'auto' for the model's default size. "
        "Each model has its own size limits (GET /v1/models).",
    )
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = Field(
        None, description="Accepted for compatibility; no effect here. Use `steps` to trade speed for detail."
    )
    style: Literal["vivid", "natural"] | None = Field(
        None, description="Accepted for compatibility; no effect here. Describe the style in the prompt."
    )
    response_format: Literal["url", "b64_json"] | None = Field(None, description=RESPONSE_FORMAT_DOC)
    output_format: Literal["png", "jpeg", "webp"] | None = Field(
        None,
        description="'png' (default), 'jpeg' or 'webp'; all keep the generation parameters inside the file "
        "(PNG text, or EXIF as A1111 writes them).",
    )
    output_compression: int | None = Field(
        None, ge=0, le=100, description="Quality 0..100 of jpeg and webp output (default 100); ignored for png."
    )
    background: Literal["auto", "opaque"] | None = Field(
        None, description="Accepted; images are always opaque (no transparent backgrounds)."
    )
    moderation: Literal["auto", "low"] | None = Field(
        None, description="Accepted for compatibility; this server does no content moderation."
    )
    stream: bool | None = Field(
        None, description="true: answer with server-sent events: `partial_images` previews, then the images."
    )
    partial_images: int | None = Field(
        None, ge=0, le=streaming.MAX_PARTIAL_IMAGES, description="Previews sent while streaming, 0..3 (default 0)."
    )
    user: str | None = Field(None, description="Accepted for compatibility; not stored.")
    safety_identifier: str | None = Field(None, description="Accepted for compatibility; not stored.")

    # -- Image Studio extras (not in the OpenAI API; the SDK sends them through extra_body): added by
    #    with_extras, from GenerationRequest (studio/schemas.py)

    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.lower()
        if text != "auto" and not SIZE_PATTERN.fullmatch(text):
            raise ValueError(f"must be {SIZE_SHAPE} or 'auto'")
        return text



# ---------------------------------------------------------------- errors


def request_error(exc: BaseException) -> StudioError:
    """An exception raised while serving an HTTP request as a ``StudioError`` with the right status;
    unexpected ones are logged, not shown. (A job's errors are mapped in the worker: ``jobloop.as_studio_error``.)"""
    if isinstance(exc, StudioError):
        return exc
    if isinstance(exc, RequestValidationError):
        return invalid_from_validation(exc)
    if isinstance(exc, StarletteHTTPException):
        return http_error(exc.status_code, str(exc.detail))
    log.error("unexpected error", exc_info=(type(exc), exc, exc.__traceback__))
    return StudioError("internal server error; the server log has the details")


def http_error(status: int, message: str, code: str | None = None) -> StudioError:
    """A ``StudioError`` for a plain HTTP status (unknown route, wrong method)."""
    error = StudioError(message)
    error.status = status
    error.type = "invalid_request_error" if status < 500 else "server_error"
    error.code = code
    return error


def error_response(exc: BaseException) -> JSONResponse:
    """The OpenAI error object for any exception, with its status and headers."""
    error = request_error(exc)
    if error.status >= 500:  # the access log says that a request failed; this line says why
        log.warning("failed: %s", error.message)
    else:
        log.info("refused: %s", error.message)
    headers = {}
    if isinstance(error, QueueFull):
        headers["Retry-After"] = str(error.retry_after_s)  # the OpenAI SDK honours it when it retries
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=headers)


def invalid_from_validation(exc: RequestValidationError) -> InvalidRequest:
    """FastAPI's 422 as our 400: ``"<field>: <reason> (allowed <range>)"`` for the first error."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("body: invalid request", field=None)
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    field_name = echo(".".join(loc)) if loc else None
    kind = first.get("type", "")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "json_invalid":
        field_name, message = None, "the body is not valid JSON"
    elif kind == "missing" and not field_name:
        message = "a JSON body is required"
    allowed = allowed_range(field_name or "", ImageGenerationRequest)
    if allowed and kind not in ("extra_forbidden", "missing"):
        message = f"{message} (allowed {allowed})"
    return InvalidRequest(f"{field_name or 'body'}: {message}", field=field_name)


bearer = HTTPBearer(auto_error=False, description="The server's API key, when it was started with --api-key.")


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """Guard for /v1 routes: a no-op unless the server has API keys; notes the key's owner in ``request.state``."""
    request.state.api_owner = None
    keys = api_keys(request.app.state.settings.api_key)
    if not keys:
        return
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    request.state.api_owner = key_owner(keys, credentials.credentials)
    note_owner(request.scope, request.state.api_owner)  # the access log names the key's owner


def key_owner(keys: dict[str, str | None], sent: str) -> str | None:
    """The owner of the API key ``sent`` (None for an unnamed key); ``Unauthorized`` when no key matches."""
    # Compare with every key, always: the time taken says nothing about which key came close.
    matches = [(owner,) for key, owner in keys.items() if hmac.compare_digest(sent.encode(), key.encode())]
    if not matches:
        raise Unauthorized("invalid API key")
    return matches[0][0]


# ---------------------------------------------------------------- request translation


def request_data(body, *, width: int | None, height: int | None, num_images: int, **inputs) -> dict:
    """An Images body (generations, edits or variations) as the plain data of ONE ``GenerationRequest``.

    Its extras are ``GenerationRequest``'s own fields, read by name (an empty form value is unset); the
    caller settles what its route reads its own way: the size, the count, and for an edit its ``inputs``
    (image, mask, strength).
    """
    data = {}
    for name, info, _ in request_fields():
        if name in type(body).model_fields:
            value = getattr(body, name)
            data[name] = info.default if value is None or value == "" else value
    return dict(
        data,
        prompt=body.prompt,
        model=body.model,
        width=width,
        height=height,
        num_images=num_images,
        previews=(body.partial_images or 0) if body.stream else 0,
        **inputs,
    )


def generation_data(body: ImageGenerationRequest) -> dict:
    """A generations body as request data: ``n`` or its alias, ``size`` or width/height, never contradicting."""
    if body.n is not None and body.num_images is not None and body.n != body.num_images:
        raise InvalidRequest(
            f"num_images: {body.num_images} contradicts n={body.n}; send one of them", field="num_images"
        )
    width, height = body.width, body.height
    if body.size and body.size != "auto":
        size_w, size_h = parse_size(body.size)
        if (width is not None and width != size_w) or (height is not None and height != size_h):
            raise InvalidRequest(
                f"size: {body.size} contradicts width={width}, height={height}; send size or width/height",
                field="size",
            )
        width, height = size_w, size_h
    return request_data(body, width=width, height=height, num_images=body.n or body.num_images or 1)


def resolve(catalog, body: ImageGenerationRequest) -> tuple[ModelSpec, GenerationRequest]:
    """Translate and validate once; a size error names ``size`` when the caller sent ``size``."""
    try:
        return catalog.parse(generation_data(body))
    except InvalidRequest as exc:
        if exc.field in ("width", "height") and body.size and body.width is None and body.height is None:
            raise InvalidRequest(f"size: {body.size} is not allowed: {exc.message}", field="size") from None
        raise


# ---------------------------------------------------------------- waiting and encoding


async def wait_for_result(job, request: Request, timeout_s: float) -> JobResult | None:
    """The job's result; ``None`` when the client went away (the job is then cancelled, its slot freed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s + TIMEOUT_GRACE_S
    outcome = asyncio.ensure_future(job.result())
    try:
        while True:
            done, _ = await asyncio.wait({outcome}, timeout=DISCONNECT_POLL_S)
            if done:
                try:
                    return outcome.result()
                except JobCancelled as exc:
                    # Not this request's doing (a client that leaves gets None): the studio is stopping.
                    raise http_error(503, exc.message, code="cancelled") from None
            if not job.generating:  # a download, a queue wait, a load: no part of the time limit
                deadline = loop.time() + timeout_s + TIMEOUT_GRACE_S
            if await request.is_disconnected():
                log.info("client closed the request; cancelling job %s", job.id)
                return None
            if loop.time() > deadline:
                raise JobTimeout(f"the job took longer than {timeout_s:g} s and was cancelled")
    finally:
        # Whatever ended the wait (result, disconnect, timeout, server shutdown), never leave work behind.
        if not job.done():
            job.cancel()
        if not outcome.done():
            outcome.cancel()


def build_response(body: ImageGenerationRequest, result: JobResult) -> ImagesResponse:
    resolved = result.request
    output_format = body.output_format or "png"
    quality = 100 if body.output_compression is None else body.output_compression
    data = []
    for png, seed in zip(result.images, resolved.seeds):
        encoded = base64.b64encode(pngmeta.convert(png, output_format, quality)).decode("ascii")
        # Unset: both fields, as clients differ in which one they read (LangChain url, LibreChat b64_json).
        payload = {
            "url": f"data:{MEDIA_TYPES[output_format]};base64,{encoded}" if body.response_format != "b64_json" else None,
            "b64_json": encoded if body.response_format != "url" else None,
        }
        data.append(ImageData(**payload, seed=seed, revised_prompt=resolved.prompt))
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        output_format=output_format,
        size=f"{resolved.width}x{resolved.height}",
        model=resolved.model,
    )


def stream_response(job, kind: str, body, timeout_s: float, on_result=None) -> StreamingResponse:
    """The server-sent events of ``job`` (``kind``: "image_generation" or "image_edit")."""
    quality = 100 if body.output_compression is None else body.output_compression
    output = streaming.Output(body.output_format or "png", quality)
    events = streaming.image_events(job, kind, output, job.request.previews, timeout_s + TIMEOUT_GRACE_S,
                                    body.safety_identifier, on_result)
    return StreamingResponse(events, media_type=streaming.MEDIA_TYPE, headers=streaming.STREAM_HEADERS)


async def answer(job, kind: str, body, request: Request) -> Response:
    """What both image routes send for a submitted job: its event stream, or one JSON body once it
    is done. Its images are kept in the key owner's folder either way, as the UI keeps its own."""
    state = request.app.state
    folder = owner_dir(state.settings.outputs_dir, getattr(request.state, "api_owner", None), kind="api")
    keep = functools.partial(save_images, folder)
    if body.stream:
        return stream_response(job, kind, body, state.settings.job_timeout_s, on_result=keep)
    result = await wait_for_result(job, request, state.settings.job_timeout_s)
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    # Saving and base64 of several large PNGs take a while: keep the event loop (and the UI) responsive.
    await run_in_threadpool(keep, result)
    return await run_in_threadpool(build_response, body, result)


def model_object(spec: ModelSpec, created: int, disk: dict | None = None, sizes=None) -> ModelObject:
    """``disk``: ``{"on_disk", "download_bytes"}`` from the download phase (``DownloadGate.disk_status``);
    ``sizes``: the model's measured ``memory.Weights`` (``DownloadGate.weights``; None: the catalog's)."""
    return ModelObject(created=created, owned_by=spec.repo.split("/")[0], max_n=MAX_IMAGES,
                       **spec.listing(sizes), **(disk or {}))


# ---------------------------------------------------------------- routes

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["OpenAI-compatible"])


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=GENERATION_ERRORS,
    summary="Create images from a prompt (OpenAI Images API)",
)
async def create_images(body: ImageGenerationRequest, request: Request):
    """Generate `n` images in one batch on one slot. Closing the connection cancels the job."""
    state = request.app.state
    spec, resolved = resolve(state.catalog, body)
    return await answer(state.backend.submit(spec, resolved, rest_owner(request)), "image_generation", body, request)


def save_images(folder, result: JobResult) -> None:
    """Keep REST images like the UI's: PNGs with their parameters, in the key owner's folder."""
    history = History(folder)
    for png in result.images:
        history.save(png)


@router.get("/models", response_model=ModelList, responses=READ_ERRORS, summary="List the models")
async def list_models(request: Request) -> ModelList:
    """Every catalog model, with its capabilities: sizes, defaults, negative prompt, guidance, max n."""
    state = request.app.state
    return ModelList(data=[model_object(spec, state.started_at, disk_status(state, spec), measured(state, spec))
                           for spec in state.catalog])


@router.get("/models/{model}", response_model=ModelObject, responses=READ_ERRORS, summary="Retrieve a model")
async def retrieve_model(model: str, request: Request) -> ModelObject:
    state = request.app.state
    spec = state.catalog.get(model)
    return model_object(spec, state.started_at, disk_status(state, spec), measured(state, spec))


@router.get("/loras", response_model=LoraList, responses=READ_ERRORS, summary="List the LoRAs")
async def list_loras(request: Request) -> LoraList:
    """The LoRAs of ``--lora-dir`` (unreadable files left out): name, family, the models that take each, size,
    trigger words and A1111's hash. A request names them in ``loras`` or as ``<lora:NAME:SCALE>``."""
    return LoraList(data=await run_in_threadpool(request.app.state.catalog.lora_listing))  # hashes read files


def disk_status(state, spec: ModelSpec) -> dict | None:
    status = getattr(state.backend, "disk_status", None)  # the download phase knows; a bare backend does not
    return status(spec.id) if status else None


def measured(state, spec: ModelSpec):
    """The model's component sizes from its files, where the download phase knows them."""
    sizes = getattr(state.backend, "weights", None)
    return sizes(spec.id) if sizes else None


def app_routes(app) -> list:
    """Every route of the app; FastAPI keeps an included router as one entry holding its routes."""
    routes = []
    for route in app.router.routes:
        original = getattr(route, "original_router", None)
        routes.extend(original.routes if original is not None else [route])
    return routes


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def unknown_route(path: str, request: Request):
    """Other /v1 routes are not served here; say so in the OpenAI shape (405 for a known route's wrong method).

    Without this, the UI mounted at "/" would answer them with its own 404 page.
    """
    methods = sorted(
        method
        for route in app_routes(request.app)  # the app's: other modules add /v1 routes too (studio.edits)
        if getattr(route, "path", None) == f"/v1/{path}"
        for method in getattr(route, "methods", ())
    )
    if methods:
        raise http_error(405, f"{request.method} /v1/{echo(path)}: method not allowed; use {', '.join(methods)}")
    raise http_error(404, f"/v1/{echo(path)} is not served here; see /docs for the routes", code="not_found")
