"""Tiny random-weight Lumina-Next: the real component set of ``Alpha-VLLM/Lumina-Next-SFT-diffusers``, shrunk.

The same parts: a ``GemmaModel`` text encoder (the pipeline reads its penultimate hidden
state) with a Gemma tokenizer, a ``LuminaNextDiT2DModel`` (grouped-query attention, 2x2
patches, learned sigma channels), the SDXL ``AutoencoderKL`` and the plain
``FlowMatchEulerDiscreteScheduler`` the diffusers conversion ships.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LuminaNextDiT2DModel, LuminaPipeline
from transformers import GemmaConfig, GemmaModel

from studio.catalog import ModelSpec
from studio.tiny.parts import autoencoder_kl, gemma_settings
from studio.tiny.tokenizers import gemma_tokenizer

GEMMA_WIDTH = 32  # the transformer's cross_attention_dim (2048 for Gemma-2B)


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``LuminaPipeline`` in ``out_dir``; the default tiny limits fit it as they are."""
    tokenizer = gemma_tokenizer(max_length=spec.token_limit)
    pipe = LuminaPipeline(
        transformer=_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        vae=autoencoder_kl(scaling_factor=0.13025, force_upcast=True),  # stabilityai/sdxl-vae
        text_encoder=_gemma(tokenizer),
        tokenizer=tokenizer,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {}


def _gemma(tokenizer) -> GemmaModel:
    # the pipeline reads hidden_states[-2]: the output of the first of the two layers
    settings = gemma_settings(tokenizer, GEMMA_WIDTH)
    return GemmaModel(GemmaConfig(**settings, max_position_embeddings=tokenizer.model_max_length)).eval()


def _transformer() -> LuminaNextDiT2DModel:
    transformer = LuminaNextDiT2DModel(
        sample_size=8,  # 64 px is the tiny "native" size, as 128 latents (1024 px) are the real one's
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=2,  # head size 16: the 2D rotary embedding needs a multiple of 4
        num_kv_heads=1,
        multiple_of=16,
        ffn_dim_multiplier=None,
        norm_eps=1e-5,
        learn_sigma=True,
        qk_norm=True,
        cross_attention_dim=GEMMA_WIDTH,
        scaling_factor=1.0,
    )
    # The model allocates its padding token with torch.empty; give it defined values so the
    # saved weights are the same on every machine.
    torch.nn.init.normal_(transformer.pad_token, std=0.02)
    return transformer
