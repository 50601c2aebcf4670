"""Tiny random-weight PixArt-Sigma: T5 encoder, ``PixArtTransformer2DModel``, SDXL's VAE, DPM-Solver++.

The hub repo's parts, shrunk: the transformer keeps the real layout (2x2 patches,
AdaLN-single conditioning, learned sigma so 8 output channels for 4 latent ones, no
size micro-conditions), and the scheduler is the repo's ``DPMSolverMultistepScheduler``.
The tiny VAE keeps SDXL's 8x downscale and a small ``sample_size`` so that tiled
decoding, which the adapter turns on for large images, splits even small test images.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

from studio.catalog import ModelSpec
from studio.tiny.parts import T5_WIDTH, autoencoder_kl, t5_encoder
from studio.tiny.tokenizers import t5_tokenizer

# scheduler_config.json of PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
PIXART_SIGMA_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
    algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
    prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero",
)


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``PixArtSigmaPipeline`` in ``out_dir``; no overrides beyond the defaults."""
    tokenizer = t5_tokenizer()
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=t5_encoder(tokenizer),
        vae=autoencoder_kl(scaling_factor=0.13025, force_upcast=True),  # tiles of 64 px (8 latents) when on
        transformer=PixArtTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=8,  # learned sigma: the pipeline keeps the first half
            num_layers=1,
            cross_attention_dim=16,
            caption_channels=T5_WIDTH,
            sample_size=128,  # the real 1024 px / 8; it selects the aspect-ratio bins
            patch_size=2,
            norm_type="ada_norm_single",
            use_additional_conditions=False,  # Sigma drops Alpha's size/aspect conditioning
            interpolation_scale=2,
        ),
        scheduler=DPMSolverMultistepScheduler(**PIXART_SIGMA_SCHEDULER),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {}
