"""A1111 request bodies as ONE validated ``GenerationRequest``: its names, its checkpoint titles, its sampler,
its base64 input image and its mask (white = repaint), then the catalog's one check.

Every refusal is an ``InvalidRequest`` naming the A1111 field (``cfg_scale``, not ``guidance``).
Runs in the parent process: PIL, never torch.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageFilter, ImageOps

from studio import uploads
from studio.a1111.bodies import REFUSED, Img2ImgRequest, Txt2ImgRequest
from studio.a1111.sampling import sampler_fields
from studio.catalog import Catalog, ModelSpec
from studio.errors import InvalidRequest, echo
from studio.schemas import MAX_IMAGES, MAX_PREVIEWS, GenerationRequest

PREVIEWS = MAX_PREVIEWS  # preview images per job, for GET progress's current_image (cheap: no VAE pass)
CHECKPOINT = "sd_model_checkpoint"
# GenerationRequest's names -> A1111's, for the errors the catalog raises.
A1111_NAMES = {"guidance": "cfg_scale", "num_images": "batch_size", "strength": "denoising_strength",
               "sampler": "sampler_name", "model": CHECKPOINT, "image": "init_images", "size": "width",
               "loras": "prompt"}  # A1111 names LoRAs only in the prompt: <lora:NAME:WEIGHT>
WHY_MAX_IMAGES = (f"one call runs as one batch on one slot, and at most {MAX_IMAGES} images keep a slot's turn "
                  "short for the other callers; send more calls for more images")


def title(spec: ModelSpec) -> str:
    """A model's A1111 checkpoint title (GET sd-models, options): its catalog id."""
    return spec.id


def checkpoint(catalog: Catalog, name: str, field: str = CHECKPOINT) -> ModelSpec:
    """The model of a checkpoint title, model id, alias or label (any case; a trailing " [hash]" is dropped)."""
    wanted = name.split(" [")[0].strip().lower() if isinstance(name, str) else ""
    for spec in catalog:
        if wanted in (spec.id, spec.label.lower(), *spec.aliases):
            return spec
    available = ", ".join(title(spec) for spec in catalog)
    raise InvalidRequest(f"{field}: unknown checkpoint '{echo(name)}'; available: {available}", field=field)


def txt2img(catalog: Catalog, body: Txt2ImgRequest, default_model: str | None) -> tuple[ModelSpec, GenerationRequest]:
    return parse(catalog, common_data(catalog, body, default_model))


def img2img(catalog: Catalog, body: Img2ImgRequest, default_model: str | None) -> tuple[ModelSpec, GenerationRequest]:
    data = common_data(catalog, body, default_model)
    image = uploads.check_image(decode(body.init_images[0], "init_images"), "init_images")
    mask = None
    if body.mask:
        mask = uploads.check_mask(decode(body.mask, "mask"), image)
    if body.width is None and body.height is None:
        data["width"], data["height"] = catalog.get(data["model"]).fit_size(image.width, image.height)
    data.update(
        image=image.data, strength=body.denoising_strength,
        mask=repaint_mask(mask.data, bool(body.inpainting_mask_invert), body.mask_blur) if mask else None,
    )
    return parse(catalog, data)


def common_data(catalog: Catalog, body: Txt2ImgRequest, default_model: str | None) -> dict:
    """The fields txt2img and img2img share, as ``GenerationRequest`` data."""
    for name, why in REFUSED.items():
        if getattr(body, name):
            raise InvalidRequest(f"{name}: {why}", field=name)
    count = body.batch_size * body.n_iter
    if count > MAX_IMAGES:
        raise InvalidRequest(
            f"batch_size: {body.batch_size} x n_iter {body.n_iter} = {count} images; at most {MAX_IMAGES} per call: "
            f"{WHY_MAX_IMAGES}", field="batch_size",
        )
    asked = (body.override_settings or {}).get(CHECKPOINT)
    if asked:
        model = checkpoint(catalog, asked, f"override_settings.{CHECKPOINT}").id
    else:
        model = default_model or catalog.get(None).id
    sampler = sampler_fields(body.sampler_name or body.sampler_index, body.scheduler, catalog.get(model).samplers)
    return dict(
        prompt=body.prompt, negative_prompt=body.negative_prompt or None, model=model, steps=body.steps,
        guidance=body.cfg_scale, seed=None if body.seed == -1 else body.seed, width=body.width, height=body.height,
        num_images=count, previews=PREVIEWS, **sampler,
    )


def parse(catalog: Catalog, data: dict) -> tuple[ModelSpec, GenerationRequest]:
    """The catalog's one check; its errors renamed to A1111's fields."""
    try:
        return catalog.parse(data)
    except InvalidRequest as exc:
        name = A1111_NAMES.get(exc.field, exc.field)
        message = exc.message
        if exc.field and message.startswith(f"{exc.field}:"):
            message = f"{name}{message[len(exc.field):]}"
        raise InvalidRequest(message, field=name) from None


def decode(text: str, field: str) -> bytes:
    """A base64 image as A1111 takes it: plain, or a ``data:image/...;base64,`` URL. No URL is fetched."""
    if text.startswith(("http://", "https://")):
        raise InvalidRequest(f"{field}: image URLs are not fetched; send the image as base64", field=field)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field}: not base64 image data", field=field) from None


def repaint_mask(data: bytes, invert: bool, blur: int) -> bytes:
    """A1111's mask as the studio's: a greyscale PNG, white = repaint. Read as A1111 reads it: an RGBA mask with
    transparency is its alpha (opaque = repaint), any other its brightness; then inverted, then blurred."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode == "RGBA" and image.getchannel("A").getextrema() != (255, 255):
            mask = image.getchannel("A").point(lambda alpha: 255 if alpha > 128 else 0)
        else:
            mask = image.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()
