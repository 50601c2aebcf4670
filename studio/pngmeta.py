"""Image files that carry their generation parameters, and the reader for them.

Every image is first a PNG with two text chunks: ``parameters`` in the A1111 layout (so
tools that show "PNG info" read it) and ``studio`` with the exact parameters as JSON.
``convert`` makes a JPEG or WebP of it that keeps both, where A1111 keeps them in those
formats: the text in EXIF ``UserComment`` (UTF-16), the JSON in EXIF ``ImageDescription``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import ExifTags, Image, PngImagePlugin

from studio import samplers
from studio.schemas import GenerationRequest, request_fields

A1111_KEY = "parameters"
JSON_KEY = "studio"
FORMATS = ("png", "jpeg", "webp")
USER_COMMENT_UNICODE = b"UNICODE\0"  # EXIF's character-code prefix for UTF-16 text


def parameters_text(request: GenerationRequest, seed: int, label: str, memory_plan: str | None = None) -> str:
    """The A1111 ``parameters`` text: prompt, negative prompt line, then ``key: value`` pairs: each request
    field that declares its A1111 key (``Faces.a1111``), in declaration order, then the model and the task.
    LoRAs are written as A1111 writes them: ``<lora:name:w>`` tags after the prompt, and their hashes
    (``Lora hashes: "name: hash, ..."``, which Civitai reads)."""
    lines = [" ".join([request.prompt, *(lora.tag() for lora in request.loras)]).strip()]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    pairs = []
    for name, _, faces in request_fields():
        value = seed if name == "seed" else getattr(request, name)  # this image's own seed
        if faces.a1111 is None or value is None or value == ():
            continue
        if name == "loras":
            value = '"' + ", ".join(f"{lora.name}: {lora._hash}" for lora in value if lora._hash) + '"'
        elif name == "width":
            value = f"{request.width}x{request.height}"  # A1111's one "Size"
        if name == "sampler":
            pairs += sampler_pairs(value)
            continue
        pairs.append((faces.a1111, f"{value:g}" if isinstance(value, float) else value))
    if request.image:
        pairs.append(("Task", request.task))
    pairs += [("Model", label), ("Model id", request.model)]
    if memory_plan:  # a plan that changed the weights (fp8): the same seed gives another image at full precision
        pairs.append(("Memory plan", memory_plan))
    pairs.append(("Version", "Image Studio"))
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def sampler_pairs(name: str) -> list[tuple[str, str]]:
    """A1111's ``Sampler: DPM++ 2M, Schedule type: Karras`` (no type when it is A1111's "Automatic")."""
    sampler, schedule = samplers.to_a1111(name)
    return [("Sampler", sampler)] + ([("Schedule type", schedule)] if schedule != "Automatic" else [])


def metadata(request: GenerationRequest, seed: int) -> dict:
    """The JSON parameters of one image: the request as resolved, with this image's own seed and n=1,
    and its task (the input image and mask themselves are not kept)."""
    data = request.model_dump()
    data.update(seed=seed, num_images=1, task=request.task)
    return data


def encode(image: Image.Image, request: GenerationRequest, seed: int, label: str,
           memory_plan: str | None = None) -> bytes:
    """``memory_plan``: the plan that ran it, recorded only when it changes the weights (fp8)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, parameters_text(request, seed, label, memory_plan))
    data = metadata(request, seed) | ({"memory_plan": memory_plan} if memory_plan else {})
    info.add_text(JSON_KEY, json.dumps(data))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def convert(png: bytes, output_format: str, quality: int = 100) -> bytes:
    """``png`` (from ``encode``) as ``output_format`` ("png", "jpeg", "webp"), its parameters kept."""
    if output_format == "png":
        return png
    if output_format not in FORMATS:
        raise ValueError(f"output_format: {output_format!r} is not one of {', '.join(FORMATS)}")
    with Image.open(io.BytesIO(png)) as image:
        text = _texts(image)
        exif = Image.Exif()
        if JSON_KEY in text:
            exif[ExifTags.Base.ImageDescription] = text[JSON_KEY]  # json.dumps output is ASCII
        if A1111_KEY in text:
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = (
                USER_COMMENT_UNICODE + text[A1111_KEY].encode("utf-16-be")
            )
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=output_format.upper(), quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def read(source: bytes | str | Path) -> dict:
    """The parameters stored in an image (``{}`` when it has none): the JSON, plus the A1111 text."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        text = _texts(image)
    params = json.loads(text[JSON_KEY]) if JSON_KEY in text else {}
    if A1111_KEY in text:
        params[A1111_KEY] = text[A1111_KEY]
    return params


def _texts(image: Image.Image) -> dict[str, str]:
    """The PNG text chunks, or the same two texts from a JPEG's or WebP's EXIF."""
    text = dict(getattr(image, "text", {}) or {})
    if text or image.format == "PNG":
        return text
    exif = image.getexif()
    description = exif.get(ExifTags.Base.ImageDescription)
    if isinstance(description, str) and description.startswith("{"):
        text[JSON_KEY] = description
    comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if isinstance(comment, bytes) and comment.startswith(USER_COMMENT_UNICODE):
        text[A1111_KEY] = comment[len(USER_COMMENT_UNICODE):].decode("utf-16-be", errors="replace")
    return text
