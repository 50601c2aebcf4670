"""PNG files that carry their generation parameters, and the reader for them.

Two text chunks: ``parameters`` in the A1111 layout (so tools that show
"PNG info" read it) and ``studio`` with the exact parameters as JSON.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from studio.schemas import GenerationRequest

A1111_KEY = "parameters"
JSON_KEY = "studio"


def parameters_text(request: GenerationRequest, seed: int, label: str) -> str:
    """The A1111 ``parameters`` text: prompt, negative prompt line, then ``key: value`` pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    pairs = [
        ("Steps", request.steps),
        ("CFG scale", f"{request.guidance:g}"),
        ("Seed", seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model", label),
        ("Model id", request.model),
        ("Version", "Image Studio"),
    ]
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs))
    return "\n".join(lines)


def metadata(request: GenerationRequest, seed: int) -> dict:
    """The JSON parameters of one image: the request as resolved, with this image's own seed and n=1."""
    data = request.model_dump()
    data.update(seed=seed, num_images=1)
    return data


def encode(image: Image.Image, request: GenerationRequest, seed: int, label: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, parameters_text(request, seed, label))
    info.add_text(JSON_KEY, json.dumps(metadata(request, seed)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read(source: bytes | str | Path) -> dict:
    """The parameters stored in a PNG (``{}`` when it has none): the JSON chunk, plus the A1111 text."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        text = dict(getattr(image, "text", {}) or {})
    params = json.loads(text[JSON_KEY]) if JSON_KEY in text else {}
    if A1111_KEY in text:
        params[A1111_KEY] = text[A1111_KEY]
    return params
