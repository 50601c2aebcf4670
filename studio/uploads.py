"""Input images of edits: checked once in the parent, turned into pipeline inputs in the worker.

``check_image`` and ``check_mask`` read an uploaded file's header and pixels and raise
``InvalidRequest`` naming the field for anything a pipeline should never see: not an image, a
format other than PNG/JPEG/WebP, a file over ``MAX_FILE_BYTES``, a decompression bomb (a small
file that claims a huge size: the header is checked before any pixel is decoded), a degenerate
size, a mask of another size than its image.

The mask convention is OpenAI's: where the mask's alpha is 0 the image is repainted. A mask
without an alpha channel is read the way A1111 and diffusers read one: white is repainted.
``repaint_mask`` is the one place that knows this; the worker calls it to build the
pipeline's mask (white = repaint).

PIL only: runs in the parent and in the worker.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from studio.errors import InvalidRequest

MAX_FILE_BYTES = 50 * 1024 * 1024  # the OpenAI API's limit per image
MAX_PIXELS = 40_000_000  # a 40 MP photo decodes to 160 MB of RGBA: the most one upload may cost
MIN_SIDE = 16
FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
ORIENTATION_TAG = 0x0112
SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


@dataclass(frozen=True)
class Upload:
    """A checked upload: the file's bytes and its size in pixels."""

    data: bytes
    width: int
    height: int


def check_image(data: bytes, field: str = "image") -> Upload:
    """The upload if it is a PNG, JPEG or WebP within the limits; else ``InvalidRequest`` naming ``field``."""
    if not data:
        raise InvalidRequest(f"{field}: the file is empty", field=field)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidRequest(
            f"{field}: {len(data) / 2**20:.1f} MB is over the limit of {MAX_FILE_BYTES // 2**20} MB", field=field
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format
                width, height = image.size
                if kind not in FORMATS:
                    raise InvalidRequest(
                        f"{field}: {kind or 'unknown'} images are not supported; send PNG, JPEG or WebP", field=field
                    )
                _check_size(width, height, field)  # from the header, before decoding a single pixel
                if image.getexif().get(ORIENTATION_TAG) in SIDEWAYS:
                    width, height = height, width  # the size it has once turned upright (load_rgb does)
                image.load()  # a truncated or corrupt file fails here, not in the worker
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(
            f"{field}: the image is too large to decode safely (over the limit of {MAX_PIXELS} pixels)", field=field
        ) from None
    except Exception:  # PIL raises many kinds for a file that is not an image
        raise InvalidRequest(f"{field}: not a readable image file (send PNG, JPEG or WebP)", field=field) from None
    return Upload(data=data, width=width, height=height)


def check_mask(data: bytes, image: Upload) -> Upload:
    """The mask upload if it is a valid image of exactly ``image``'s size."""
    mask = check_image(data, field="mask")
    if (mask.width, mask.height) != (image.width, image.height):
        raise InvalidRequest(
            f"mask: {mask.width}x{mask.height} does not match the image's {image.width}x{image.height}; "
            "the mask must have the same size",
            field="mask",
        )
    return mask


def _check_size(width: int, height: int, field: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise InvalidRequest(f"{field}: {width}x{height} is too small; each side must be at least {MIN_SIDE} px",
                             field=field)
    if width * height > MAX_PIXELS:
        raise InvalidRequest(
            f"{field}: {width}x{height} is {width * height} pixels, over the limit of {MAX_PIXELS}", field=field
        )


def load_rgb(data: bytes, size: tuple[int, int]) -> Image.Image:
    """The image as RGB at ``size`` (width, height), EXIF rotation applied, transparency over white."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        image = image.convert("RGB")
        return image.resize(size, Image.Resampling.LANCZOS) if image.size != size else image


def repaint_mask(data: bytes, size: tuple[int, int]) -> Image.Image:
    """The pipeline's mask ("L", white = repaint) at ``size`` from an uploaded mask (alpha 0 = repaint)."""
    with Image.open(io.BytesIO(data)) as mask:
        mask = ImageOps.exif_transpose(mask)
        if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
            repaint = ImageOps.invert(mask.convert("RGBA").getchannel("A"))
        else:
            repaint = mask.convert("L")
        return repaint.resize(size, Image.Resampling.NEAREST) if repaint.size != size else repaint
