"""Tiny random-weight Sana 1.5: Gemma-2 encoder, linear-attention DiT, 32x DC-AE, flow DPM-Solver.

The hub repo's parts, shrunk: ``Gemma2Model`` (the decoder of gemma-2-2b-it) with a
Gemma tokenizer padding on the right, ``SanaTransformer2DModel`` with Sana 1.5's
query/key RMS norm, an ``AutoencoderDC`` with six stages (the real 32x compression,
so sides come in multiples of 32) and the repo's ``DPMSolverMultistepScheduler`` in
flow-matching mode (the conversion script's default, "flow-dpm_solver", shift 3).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
from transformers import Gemma2Config, Gemma2Model

from studio.catalog import ModelSpec
from studio.tiny.parts import gemma_settings
from studio.tiny.tokenizers import gemma_tokenizer

GEMMA_WIDTH = 32  # hidden size of the tiny Gemma-2: the transformer's caption_channels
LATENT_CHANNELS = 32  # DC-AE f32c32
SIZE_MULTIPLE = 32  # the DC-AE's downscale; the transformer's patches are 1x1 latents

SANA_SCHEDULER = dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
    final_sigmas_type="zero", timestep_spacing="linspace",
)


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``SanaPipeline`` in ``out_dir``; its sides must be multiples of 32."""
    # Gemma's own context, as the real tokenizer: the pipeline prepends a long instruction
    # to the prompt and truncates the whole to that plus token_limit itself.
    tokenizer = gemma_tokenizer(max_length=8192)
    pipe = SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=_gemma(tokenizer),
        vae=_vae(),
        transformer=SanaTransformer2DModel(
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=GEMMA_WIDTH,
            mlp_ratio=2.5,
            sample_size=32,  # the real 1024 px / 32; it selects the aspect-ratio bins
            patch_size=1,
            qk_norm="rms_norm_across_heads",  # Sana 1.5
        ),
        scheduler=DPMSolverMultistepScheduler(**SANA_SCHEDULER),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {"limits": {"size_multiple": SIZE_MULTIPLE}}


def _gemma(tokenizer) -> Gemma2Model:
    # two layers: one sliding-window layer and one full-attention layer, as Gemma-2 alternates
    settings = gemma_settings(tokenizer, GEMMA_WIDTH)
    return Gemma2Model(Gemma2Config(**settings, query_pre_attn_scalar=16)).eval()


def _vae() -> AutoencoderDC:
    stages = 6  # 2**5 = 32x
    blocks = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
    multiscales = ((),) * 3 + ((5,),) * 3
    return AutoencoderDC(
        in_channels=3,
        latent_channels=LATENT_CHANNELS,
        attention_head_dim=8,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        # the last stage must be a multiple of the latent channels (the shortcuts repeat them)
        encoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        decoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        encoder_layers_per_block=(1,) * stages,
        decoder_layers_per_block=(1,) * stages,
        encoder_qkv_multiscales=multiscales,
        decoder_qkv_multiscales=multiscales,
        downsample_block_type="Conv",
        upsample_block_type="interpolate",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
        decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
        scaling_factor=0.41407,
    )
