"""Tiny random-weight FLUX.1 pipelines: the real component set of [schnell] and [dev], shrunk to kilobytes.

The same parts as the hub repos: ``CLIPTextModel`` + ``CLIPTokenizer`` (pooled prompt),
``T5EncoderModel`` + T5 tokenizer (sequence prompt), ``FluxTransformer2DModel``, a
16-channel ``AutoencoderKL`` with FLUX's 8x downscale and latent shift, and the
``FlowMatchEulerDiscreteScheduler`` configuration each repo ships. [dev]'s transformer
has the guidance embedding, [schnell]'s has not, exactly as the real configs say.

Chroma and PixArt-Sigma reuse the T5 encoder and (Chroma) the FLUX VAE from here.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from studio.catalog import ModelSpec
from studio.tiny.tokenizers import clip_tokenizer, t5_tokenizer

T5_WIDTH = 32  # d_model of the tiny T5: the transformer's joint_attention_dim
CLIP_WIDTH = 32  # hidden size of the tiny CLIP: the transformer's pooled_projection_dim
LATENT_CHANNELS = 16  # FLUX's VAE; the transformer sees 2x2 patches of them: 64 input channels

# scheduler_config.json of the hub repos. [dev] shifts the schedule by image size
# ("dynamic shifting"); [schnell] is distilled on the plain schedule.
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
    base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
)
FLUX_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


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
        text_encoder=CLIPTextModel(_clip_config(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=CLIP_WIDTH,
            guidance_embeds=distilled_guidance,
            axes_dims_rope=(4, 6, 6),  # must add up to attention_head_dim, as (16, 56, 56) does to 128
        ),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return {}


def t5_encoder(tokenizer) -> T5EncoderModel:
    """A two-layer T5 v1.1 encoder (gated GELU, as T5-XXL) over ``tokenizer``'s vocabulary."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_WIDTH,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def flux_vae() -> AutoencoderKL:
    """FLUX's 16-channel VAE (no quant convs, latent shift and scale), with tiny blocks."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 8, 16, 16),  # four blocks: the real 8x downscale
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=256,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        force_upcast=True,
    )


def _clip_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_WIDTH,
        intermediate_size=64,
        projection_dim=CLIP_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu",  # CLIP ViT-L/14's text tower
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the pooled output is read at the first end-of-text token
        pad_token_id=tokenizer.pad_token_id,
    )
