"""Tiny random-weight SDXL pipelines: the real component set, shrunk to about 1.5 MB.

The same parts as the hub repos (``UNet2DConditionModel`` with ``text_time`` addition
embeddings, ``CLIPTextModel`` + ``CLIPTextModelWithProjection`` with two CLIP tokenizers,
``AutoencoderKL`` with SDXL's 8x downscale) and the scheduler class each real repo
ships, so loading and generation go through exactly the code paths of the big models.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    EDMDPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from studio.catalog import ModelSpec
from studio.tiny import parts
from studio.tiny.tokenizers import clip_tokenizer

TEXT_WIDTH = 16  # hidden size of each tiny text encoder; the UNet cross-attends to both, concatenated
PROJECTION_DIM = 16  # text_encoder_2's pooled projection, fed to the UNet's text_time embedding
TIME_EMBED_DIM = 4  # per-value width of the six size/crop conditioning numbers

# The schedulers the real repos ship (scheduler_config.json) where the model depends on them; the
# fine-tunes ship Euler, Euler a or DPM++ configs of SDXL's schedule, which all load the same way.
SDXL_EULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
)
SCHEDULERS = {
    # SDXL Turbo is distilled for 1-4 steps with ancestral sampling on "trailing" timesteps.
    "sdxl-turbo": (EulerAncestralDiscreteScheduler, {**SDXL_EULER, "timestep_spacing": "trailing", "steps_offset": 0}),
    # Playground v2.5 was trained in the EDM framework.
    "playground-v2.5": (
        EDMDPMSolverMultistepScheduler,
        dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0, solver_order=2, algorithm_type="dpmsolver++",
             solver_type="midpoint", final_sigmas_type="zero", prediction_type="epsilon"),
    ),
}
DEFAULT_SCHEDULER = (EulerDiscreteScheduler, {**SDXL_EULER, "interpolation_type": "linear"})

# Playground v2.5's VAE works on EDM latents: per-channel mean/std and a 0.5 scaling factor.
VAE_LATENT_STATS = {
    "playground-v2.5": dict(
        scaling_factor=0.5,
        latents_mean=[-1.6574, 1.886, -1.383, 2.5155],
        latents_std=[8.4927, 5.9022, 6.5498, 5.2299],
    ),
}


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``StableDiffusionXLPipeline`` for ``spec`` in ``out_dir``; no overrides beyond the defaults."""
    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer()
    tokenizer_2.pad_token = "!"  # as in the real SDXL tokenizer_2 (OpenCLIP pads with "!", not end-of-text)

    scheduler_class, scheduler_config = SCHEDULERS.get(spec.id, DEFAULT_SCHEDULER)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(spec),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=_unet(),
        scheduler=scheduler_class(**scheduler_config),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {}


def _text_config(tokenizer):
    return parts.clip_text_config(tokenizer, TEXT_WIDTH, 32, "gelu", projection_dim=PROJECTION_DIM)


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=PROJECTION_DIM + 6 * TIME_EMBED_DIM,
    )


def _vae(spec: ModelSpec) -> AutoencoderKL:
    return parts.autoencoder_kl(force_upcast=True, **VAE_LATENT_STATS.get(spec.id, {"scaling_factor": 0.13025}))
