"""Tiny random-weight FLUX.1 pipelines: the real component set of [schnell] and [dev], shrunk to kilobytes.

The same parts as the hub repos: ``CLIPTextModel`` + ``CLIPTokenizer`` (pooled prompt),
``T5EncoderModel`` + T5 tokenizer (sequence prompt), ``FluxTransformer2DModel``, a
16-channel ``AutoencoderKL`` with FLUX's 8x downscale and latent shift, and the
``FlowMatchEulerDiscreteScheduler`` configuration each repo ships. [dev]'s transformer
has the guidance embedding, [schnell]'s has not, exactly as the real configs say.

Chroma reuses the FLUX VAE and the transformer's settings from here.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel

from studio.catalog import ModelSpec
from studio.tiny import parts
from studio.tiny.parts import T5_WIDTH, t5_encoder
from studio.tiny.tokenizers import clip_tokenizer, t5_tokenizer

CLIP_WIDTH = 32  # hidden size of the tiny CLIP: the transformer's pooled_projection_dim
LATENT_CHANNELS = 16  # FLUX's VAE; the transformer sees 2x2 patches of them: 64 input channels

# scheduler_config.json of the hub repos. [dev] shifts the schedule by image size
# ("dynamic shifting"); [schnell] is distilled on the plain schedule.
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
    base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
)
FLUX_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
# The transformer's shape, which Chroma's (a FLUX.1 [schnell] derivative) shares.
FLOW_TRANSFORMER = dict(
    patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=T5_WIDTH,
    axes_dims_rope=(4, 6, 6),  # must add up to attention_head_dim, as (16, 56, 56) does to 128
)


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``FluxPipeline`` for ``spec`` (flux-dev or flux-schnell) in ``out_dir``."""
    distilled_guidance = spec.cfg  # [dev]: guidance goes into the transformer; [schnell]: none at all
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            **(FLUX_DEV_SCHEDULER if distilled_guidance else FLUX_SCHNELL_SCHEDULER)
        ),
        vae=flux_vae(),
        # CLIP ViT-L/14's text tower
        text_encoder=CLIPTextModel(parts.clip_text_config(tokenizer, CLIP_WIDTH, 64, "quick_gelu", CLIP_WIDTH)),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=FluxTransformer2DModel(
            **FLOW_TRANSFORMER, pooled_projection_dim=CLIP_WIDTH, guidance_embeds=distilled_guidance
        ),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {}


def flux_vae() -> AutoencoderKL:
    """FLUX's 16-channel VAE (no quant convs, latent shift and scale), with tiny blocks."""
    return parts.autoencoder_kl(
        latent_channels=LATENT_CHANNELS, sample_size=256, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.3611, shift_factor=0.1159, force_upcast=True,
    )
