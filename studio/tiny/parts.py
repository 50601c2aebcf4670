"""Tiny components that several families' pipelines share: text encoders and the KL VAE layout.

Each function keeps the real model's architecture (the layers that change the code path) at the
smallest widths that still run; the family builders pass only what their real model does differently.
"""

from __future__ import annotations

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, T5Config, T5EncoderModel

T5_WIDTH = 32  # d_model of the tiny T5 encoders: the width their denoisers cross-attend to


def special_tokens(tokenizer) -> dict:
    """A text encoder config's begin, end and padding token ids, as ``tokenizer`` has them."""
    return dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # CLIP's pooled output is read at the first end-of-text token
        pad_token_id=tokenizer.pad_token_id,
    )


def clip_text_config(
    tokenizer, width: int, intermediate_size: int, hidden_act: str, projection_dim: int
) -> CLIPTextConfig:
    """A two-layer CLIP text tower over ``tokenizer``'s vocabulary and length (SDXL reads the
    penultimate layer, so two is the least that means anything)."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=intermediate_size,
        projection_dim=projection_dim, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length, hidden_act=hidden_act, **special_tokens(tokenizer),
    )


def t5_encoder(tokenizer, **differences) -> T5EncoderModel:
    """A two-layer T5 v1.1 encoder (gated GELU, as T5-XXL and mT5) over ``tokenizer``'s vocabulary."""
    config = T5Config(
        vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **differences,
    )
    return T5EncoderModel(config).eval()


def gemma_settings(tokenizer, width: int) -> dict:
    """The config of a two-layer Gemma (Lumina-Next) or Gemma-2 (Sana) decoder with multi-query attention."""
    return dict(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, **special_tokens(tokenizer),
    )


def autoencoder_kl(**differences) -> AutoencoderKL:
    """SDXL's VAE layout (4 latent channels, four blocks: the real 8x downscale) with tiny blocks;
    ``differences`` are the family's (latent channels, scaling, shift, quant convs, tile size)."""
    settings = dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, sample_size=64,
    )
    return AutoencoderKL(**(settings | differences))
