"""What the UI's handlers share: values from components, errors for the user, result parameters."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import InvalidRequest
from studio.catalog import ModelSpec
from studio.schemas import GenerationRequest, JobResult, faces

log = logging.getLogger("studio.ui")


def user_error(message: str, status: int = 400) -> gr.Error:
    """The error a user sees, logged here in one line instead of Gradio's traceback of our re-raise.

    For a StudioError, pass ``exc.message, exc.status``: refusals (4xx) log at INFO, failures at WARNING.
    Unexpected exceptions are not turned into this: Gradio prints their traceback.
    """
    refused(message, status)
    return gr.Error(message, print_exception=False)


def refused(message: str, status: int = 400) -> None:
    """Log a refusal (4xx, at INFO) or failure (WARNING) in one line; the page shows it in its status line."""
    if status >= 500:
        log.warning("failed: %s", message)
    else:
        log.info("refused: %s", message)


def result_params(request: GenerationRequest, result: JobResult, style: str, files: list[Path]) -> dict:
    """The parameters shown next to the images and returned by the API: enough to reproduce each one."""
    params = request.model_dump()
    params.update(
        seeds=request.seeds,
        sampler=result.request.sampler,  # the one that ran: the model's own, named, when unset
        task=request.task,
        style=style,
        slot=result.slot,
        duration_s=round(result.duration_s, 3),
        files=[path.name for path in files],
    )
    return params


def as_int(value: Any, name: str) -> int | None:
    """A whole number from a UI or API value (``None`` stays ``None``: the model's default)."""
    if value is None or value == "":
        return None
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise InvalidRequest(f"{name}: {value} must be a whole number", field=name)
    return int(number)


def as_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def int_or_none(value) -> int | None:
    try:
        return as_int(value, "size")
    except (InvalidRequest, TypeError, ValueError):
        return None


def path_of(item) -> str:
    """A gallery item (path, or ``(path, caption)``, or Gradio's dict) as a file path."""
    if isinstance(item, (list, tuple)):
        item = item[0]
    if isinstance(item, dict):
        item = (item.get("image") or {}).get("path") if "image" in item else item.get("path")
    return str(item)


def box_label(field: str | None) -> str | None:
    """The label of the box that sets a request field (its ``Faces``), if a box does."""
    try:
        return faces(field).label
    except KeyError:
        return None


def accepts_size(spec: ModelSpec, width: int, height: int) -> bool:
    """Whether the model takes ``width``×``height`` as it is (its sizes, multiple, sides and pixels)."""
    lim = spec.limits
    if lim.allowed_sizes:
        return (width, height) in lim.allowed_sizes
    return (width % lim.size_multiple == 0 and height % lim.size_multiple == 0
            and all(lim.min_side <= side <= lim.max_side for side in (width, height))
            and width * height <= lim.max_pixels)
