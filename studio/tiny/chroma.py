"""Tiny random-weight Chroma1-HD: FLUX's VAE and T5 encoder, Chroma's own transformer, no CLIP.

Chroma replaced FLUX's CLIP-fed modulation with a small "distilled guidance" approximator
network, so ``ChromaTransformer2DModel`` takes no pooled prompt and the pipeline has
only the T5 text encoder. The scheduler is FLUX's flow-matching Euler with the
resolution-dependent shift.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

from studio.catalog import ModelSpec
from studio.tiny.flux import FLOW_TRANSFORMER, FLUX_DEV_SCHEDULER, flux_vae
from studio.tiny.parts import t5_encoder
from studio.tiny.tokenizers import t5_tokenizer


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``ChromaPipeline`` in ``out_dir``; no overrides beyond the defaults."""
    tokenizer = t5_tokenizer()
    pipe = ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER),
        vae=flux_vae(),
        text_encoder=t5_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=ChromaTransformer2DModel(
            **FLOW_TRANSFORMER, approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=1
        ),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {}
