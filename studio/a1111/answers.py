"""What the ``/sdapi`` routes answer, in A1111's shapes: the images with their parameters and info, the
progress of a caller's job, the checkpoint list and the lists of samplers and other options.

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from pydantic import BaseModel, Field

from studio import pngmeta
from studio.a1111.bodies import Txt2ImgRequest
from studio.a1111.callers import Followed
from studio.a1111.sampling import ran, schedule_names
from studio.a1111.translate import title
from studio.catalog import Catalog, ModelSpec
from studio.schemas import JobResult

VERSION = "Image Studio"


class ImagesAnswer(BaseModel):
    """A1111's answer to txt2img and img2img."""

    images: list[str] = Field(description="Base64 PNGs, their parameters inside (PNG text 'parameters').")
    parameters: dict[str, Any] = Field(description="The request's fields as sent (no input images).")
    info: str = Field(description="JSON: seed, all_seeds, infotexts, prompt, sizes, steps, cfg_scale, model...")


def images_answer(body: Txt2ImgRequest, result: JobResult | None, interrupted: bool = False) -> ImagesAnswer:
    """The images (none when the caller interrupted the job, or sent send_images false) and their info."""
    parameters = body.model_dump()
    for name in ("init_images", "mask"):  # A1111 leaves the inputs out (include_init_images)
        if name in parameters:
            parameters[name] = None
    images = [] if result is None or interrupted or not body.send_images else [base64.b64encode(png).decode("ascii") for png in result.images]
    return ImagesAnswer(images=images, parameters=parameters, info=json.dumps(info(body, result, interrupted)))


def info(body: Txt2ImgRequest, result: JobResult | None, interrupted: bool = False) -> dict:
    """A1111's info object: what really ran, each image's seed and A1111 text."""
    if result is None:
        return {"prompt": body.prompt, "all_seeds": [], "infotexts": [], "interrupted": interrupted, "version": VERSION}
    resolved = result.request
    seeds = resolved.seeds
    count = len(seeds)
    sampler_name, scheduler = ran(resolved.sampler)
    return {
        "prompt": resolved.prompt, "all_prompts": [resolved.prompt] * count,
        "negative_prompt": resolved.negative_prompt or "", "all_negative_prompts": [resolved.negative_prompt or ""] * count,
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": resolved.width, "height": resolved.height, "sampler_name": sampler_name, "scheduler": scheduler,
        "cfg_scale": resolved.guidance, "steps": resolved.steps,
        "batch_size": body.batch_size, "n_iter": body.n_iter, "denoising_strength": resolved.strength,
        "sd_model_name": resolved.model, "sd_model_hash": None, "index_of_first_image": 0,
        "infotexts": [pngmeta.read(png).get(pngmeta.A1111_KEY, "") for png in result.images],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "interrupted": interrupted, "version": VERSION,
    }


def progress(current: Followed | None, job_count: int, skip_current_image: bool) -> dict:
    """GET progress: the caller's job furthest along (A1111 idle: progress 0, job_count 0)."""
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": job_count,
             "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if current is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    state.update(interrupted=current.interrupted, job=f"job {current.job.id[:8]}", sampling_step=current.step,
                 sampling_steps=current.total,
                 job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(current.submitted)))
    image = None
    if current.preview and not skip_current_image:
        image = base64.b64encode(current.preview).decode("ascii")
    text = f"{current.stage}" + (f" {current.step}/{current.total}" if current.total else "")
    return {"progress": round(current.progress, 4), "eta_relative": round(current.eta_relative, 2), "state": state,
            "current_image": image, "textinfo": text}


def sd_model(spec: ModelSpec) -> dict:
    """One GET sd-models entry (A1111's SDModelItem); ``filename`` is the hub repo, never a machine path."""
    return {"title": title(spec), "model_name": spec.id, "hash": None, "sha256": None, "filename": spec.repo,
            "config": None}


def options(spec: ModelSpec) -> dict:
    """GET options: the options A1111 clients read, with this caller's checkpoint."""
    return {"sd_model_checkpoint": title(spec), "sd_checkpoint_hash": None, "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1, "samples_format": "png"}


def samplers(names: list[tuple[str, list[str]]]) -> list[dict]:
    return [{"name": name, "aliases": aliases, "options": {}} for name, aliases in names]


def schedulers() -> list[dict]:
    return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for name, label in schedule_names().items()]


# What SillyTavern asks for at start-up that the studio does not have: A1111's "None" entries.
UPSCALERS = [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 1}]


def loras(catalog: Catalog) -> list[dict]:
    """GET loras, as A1111's Lora extension lists them: ``<lora:NAME:WEIGHT>`` in a prompt uses one. ``path`` is
    the file under ``--lora-dir`` (never a machine path); ``metadata`` what the studio read of it."""
    return [{"name": lora["name"], "alias": lora["name"], "path": f"{lora['name']}.safetensors",
             "metadata": {key: value for key, value in lora.items() if key != "name"}}
            for lora in catalog.lora_listing()]


def catalog_titles(catalog: Catalog) -> list[dict]:
    """GET sd-models: every model in rank order."""
    return [sd_model(spec) for spec in catalog]
