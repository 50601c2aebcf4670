"""The request bodies of ``POST /sdapi/v1/txt2img`` and ``img2img``, in A1111's field names and types.

A1111 ignores the fields it does not know, and its clients send many (SillyTavern sends its own
``url`` and ``auth`` too): so do these models (``extra="ignore"``). The fields the studio honours are
declared with their types; ``IGNORED`` lists the A1111 fields accepted with no effect (README lists
them); ``REFUSED`` the ones whose true value asks for something the studio does not have.
Unset numbers are the model's defaults, not A1111's fixed 512x512, 50 steps and CFG 7: a turbo model
needs 1-4 steps, FLUX 1024x1024.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from studio.schemas import MAX_IMAGES, MAX_SEED

# Accepted and ignored: A1111 features with no effect here, or whose default is all the studio does.
IGNORED = (
    "styles", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w", "eta", "s_min_uncond",
    "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings (all but sd_model_checkpoint)",
    "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks",
    "comments", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
    "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
    "hr_negative_prompt", "denoising_strength (txt2img: it belongs to hires fix)", "script_args", "save_images",
    "do_not_save_samples", "do_not_save_grid", "alwayson_scripts", "force_task_id", "infotext", "clip_skip",
    "resize_mode", "image_cfg_scale", "mask_blur_x", "mask_blur_y", "mask_round", "inpainting_fill",
    "inpaint_full_res", "inpaint_full_res_padding", "initial_noise_multiplier", "latent_mask", "include_init_images",
)
# A true value (or a name) here asks for what the studio has not: refused, saying so.
REFUSED = {
    "enable_hr": "hires fix (a second, upscaled pass) is not available here; send enable_hr false and the "
                 "final width and height",
    "restore_faces": "face restoration is not available here; send restore_faces false",
    "tiling": "seamless tiling is not available here; send tiling false",
    "script_name": "A1111 scripts are not available here; send no script_name",
}


class Txt2ImgRequest(BaseModel):
    """``POST /sdapi/v1/txt2img``: A1111's fields the studio honours; any other field is accepted and ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), json_schema_extra={"examples": [
        {"prompt": "a red fox in snow", "negative_prompt": "blurry", "steps": 20, "cfg_scale": 7, "width": 512,
         "height": 512, "seed": -1, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 1}]})

    prompt: str = Field("", description="What to draw.")
    negative_prompt: str = Field("", description="What to avoid; only for models that take one.")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description=f"-1: random; else 0..{MAX_SEED}. Image i uses seed + i.")
    sampler_name: str | None = Field(None, description="A1111's sampler name (GET /sdapi/v1/samplers); "
                                                        "the model's own when unset.")
    sampler_index: str | None = Field(None, description="Old A1111 name of `sampler_name`; used when that is unset.")
    scheduler: str | None = Field(None, description="'Automatic' (the sampler's own) or 'Karras' (GET schedulers).")
    batch_size: int = Field(1, ge=1, description=f"Images per batch; batch_size x n_iter <= {MAX_IMAGES}.")
    n_iter: int = Field(1, ge=1, description="Batches; they run as one batch of batch_size x n_iter.")
    steps: int | None = Field(None, description="Denoising steps; the model's default when unset.")
    cfg_scale: float | None = Field(None, description="Guidance scale; the model's default when unset.")
    width: int | None = Field(None, description="Width in pixels; the model's default when unset.")
    height: int | None = Field(None, description="Height in pixels; the model's default when unset.")
    override_settings: dict[str, Any] | None = Field(
        None, description="Only `sd_model_checkpoint` is read: the model of this call (GET sd-models: title)."
    )
    send_images: bool = Field(True, description="false: the answer carries no images (they are still saved).")
    enable_hr: bool | None = Field(None, description="Refused when true: no hires fix here.")
    restore_faces: bool | None = Field(None, description="Refused when true: no face restoration here.")
    tiling: bool | None = Field(None, description="Refused when true: no seamless tiling here.")
    script_name: str | None = Field(None, description="Refused when set: no A1111 scripts here.")


class Img2ImgRequest(Txt2ImgRequest):
    """``POST /sdapi/v1/img2img``: the txt2img fields, the input image, and the inpainting mask."""

    init_images: list[str] = Field(min_length=1, description="Base64 images (PNG, JPEG or WebP); the first is used.")
    denoising_strength: float | None = Field(
        None, description="How much of the input is repainted, 0..1; unset: 0.75 without a mask, 1 with one."
    )
    mask: str | None = Field(None, description="Base64 mask of the image's size: white is repainted (A1111's "
                                               "convention); an RGBA mask with transparency: opaque is repainted.")
    mask_blur: int = Field(4, ge=0, le=64, description="Gaussian blur radius of the mask's edge, in pixels.")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint the black of the mask instead.")
    width: int | None = Field(None, description="Width in pixels; unset: the input's size fitted to the model.")
    height: int | None = Field(None, description="Height in pixels; unset: the input's size fitted to the model.")


class OptionsUpdate(BaseModel):
    """``POST /sdapi/v1/options``: only ``sd_model_checkpoint`` is honoured; any other option is accepted and
    ignored (Open WebUI posts back every option it read)."""

    model_config = ConfigDict(extra="ignore")

    sd_model_checkpoint: str | None = Field(None, description="The default model of this caller's /sdapi calls.")
