"""The UI's edit inputs and live previews, as plain images and bytes.

Gradio's ``ImageEditor`` gives a background (the input image) and the layers painted over it;
``edit_files`` turns them into the input image file and the mask file the requests carry (the
mask white where anything was painted: ``studio.uploads`` reads a mask without alpha that way).
``preview_image`` reads a job's preview event. PIL only: runs in the parent process.
"""

from __future__ import annotations

import io

from PIL import Image

from studio import uploads
from studio.schemas import JobStage


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def edit_files(value) -> tuple[bytes | None, bytes | None]:
    """(image PNG, mask PNG) from an ``ImageEditor`` value; (None, None) without an image, no mask unpainted."""
    if not isinstance(value, dict) or value.get("background") is None:
        return None, None
    background = _as_image(value["background"])
    painted = Image.new("L", background.size, 0)
    for layer in value.get("layers") or []:
        layer = _as_image(layer)
        if layer.size != background.size:
            layer = layer.resize(background.size)
        alpha = layer.convert("RGBA").getchannel("A")
        painted.paste(255, mask=alpha.point(lambda a: 255 if a > 0 else 0))
    mask = png_bytes(painted) if painted.getbbox() else None
    return png_bytes(background.convert("RGB")), mask


def edit_task(value) -> str | None:
    """The task an ``ImageEditor`` value asks for: None without an image, inpainting once anything is painted."""
    if not isinstance(value, dict) or value.get("background") is None:
        return None
    for layer in value.get("layers") or []:
        alpha = _as_image(layer).convert("RGBA").getchannel("A")
        if alpha.getbbox():
            return "inpainting"
    return "image-to-image"


def read_file(path: str, field: str) -> bytes:
    """An uploaded file's bytes (the Gradio API hands over paths), checked like a REST upload."""
    with open(path, "rb") as handle:
        data = handle.read()
    uploads.check_image(data, field)
    return data


def preview_image(event) -> Image.Image | None:
    """The preview a job's progress event carries, if any."""
    if getattr(event, "stage", None) != JobStage.PREVIEW:
        return None
    with Image.open(io.BytesIO(event.preview_png)) as image:
        return image.convert("RGB")


def _as_image(value) -> Image.Image:
    return value if isinstance(value, Image.Image) else Image.open(value)
