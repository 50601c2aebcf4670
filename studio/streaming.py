"""Server-sent events of the OpenAI Images API (``stream: true``), for generations and edits.

A stream is ``<kind>.partial_image`` events while the job runs (its previews, at most
``partial_images`` of them), then one ``<kind>.completed`` event per image, ``kind`` being
``image_generation`` or ``image_edit``. The field names are the current OpenAI API's, so the
official SDK's ``stream=True`` iterator parses them into its ``ImageGenStreamEvent`` /
``ImageEditStreamEvent`` types. A failure after the stream began is an ``error`` event with the
OpenAI error object (the SDK raises it as ``APIError``). A client that goes away cancels the job:
Starlette cancels the generator, whose ``finally`` cancels the job.

Runs in the parent process: PIL only, never torch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from PIL import Image
from starlette.concurrency import run_in_threadpool

from studio import pngmeta
from studio.errors import JobTimeout, StudioError
from studio.schemas import JobResult, JobStage

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
MAX_PARTIAL_IMAGES = 3  # the OpenAI API's limit
CLOCK_POLL_S = 0.5  # how often a stream checks whether its job generates yet (its time limit starts then)
# Token counts mean nothing for a diffusion model; the API declares the object, so it comes as zeros.
ZERO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not hold events back


@dataclass(frozen=True)
class Output:
    """How the caller wants its images: file format and jpeg/webp quality."""

    output_format: str = "png"
    quality: int = 100

    def encode(self, png: bytes) -> str:
        """The image (PNG with metadata) in the wanted format, base64."""
        return base64.b64encode(pngmeta.convert(png, self.output_format, self.quality)).decode("ascii")

    def encode_preview(self, png: bytes, size: tuple[int, int]) -> str:
        """A preview (latent resolution) scaled to the image's size, in the wanted format, base64."""
        with Image.open(io.BytesIO(png)) as preview:
            image = preview.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format=self.output_format.upper(), quality=self.quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def sse(event: str, data: dict) -> bytes:
    """One server-sent event; ``data`` also carries the event's ``type``, as OpenAI sends it."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def error_event(error: StudioError) -> bytes:
    return sse("error", {"type": "error", "error": error.to_dict()})


def preview_of(event) -> tuple[int, bytes] | None:
    """(index, PNG) when a job's progress event carries a preview, else None."""
    if getattr(event, "stage", None) != JobStage.PREVIEW:
        return None
    return event.preview_index, event.preview_png


async def _start_clock(job, limit: asyncio.Timeout, timeout_s: float) -> None:
    """Hold the stream's time limit back until the job generates: its model's download, its queue
    wait and its model's load are no part of it (as for the slot's own ``--job-timeout``)."""
    loop = asyncio.get_running_loop()
    while not job.generating and not job.done():
        limit.reschedule(loop.time() + timeout_s)
        await asyncio.sleep(CLOCK_POLL_S)


async def image_events(
    job, kind: str, output: Output, partial_images: int, timeout_s: float, safety_identifier: str | None = None,
    on_result: Callable[[JobResult], None] | None = None,
) -> AsyncIterator[bytes]:
    """The event stream of one job; ``kind`` is "image_generation" or "image_edit". ``on_result``
    (saving the images) runs in a thread before the images are sent."""
    request = job.request
    size = (request.width, request.height)
    common = {
        "background": "opaque",
        "output_format": output.output_format,
        "quality": "auto",
        "size": f"{request.width}x{request.height}",
    }
    clock = None
    try:
        async with asyncio.timeout(timeout_s) as limit:
            clock = asyncio.create_task(_start_clock(job, limit, timeout_s))
            async for event in job.events():
                preview = preview_of(event)
                if preview is None or preview[0] >= partial_images:
                    continue
                index, png = preview
                b64 = await run_in_threadpool(output.encode_preview, png, size)
                yield sse(f"{kind}.partial_image", {
                    "type": f"{kind}.partial_image", "b64_json": b64, "created_at": int(time.time()),
                    "partial_image_index": index, **common,
                })
            result = await job.result()
        if on_result is not None:
            await run_in_threadpool(on_result, result)
        for png in result.images:
            b64 = await run_in_threadpool(output.encode, png)
            completed = {"type": f"{kind}.completed", "b64_json": b64, "created_at": int(time.time()),
                         "usage": ZERO_USAGE, **common}
            if safety_identifier:
                completed["safety_identifier"] = safety_identifier
            yield sse(f"{kind}.completed", completed)
    except TimeoutError:
        yield error_event(JobTimeout(f"the job took longer than {timeout_s:g} s and was cancelled"))
    except StudioError as exc:
        yield error_event(exc)
    except Exception as exc:  # the stream has begun: the status is sent, so the error travels as an event
        log.error("stream failed", exc_info=(type(exc), exc, exc.__traceback__))
        yield error_event(StudioError("internal server error; the server log has the details"))
    finally:
        if clock is not None:
            clock.cancel()
        if not job.done():  # the client left, or the stream failed: never leave work behind
            log.info("stream of job %s ended early; cancelling it", job.id)
            job.cancel()
