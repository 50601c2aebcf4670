"""Tiny random-weight HunyuanDiT v1.2: the real component set, shrunk to a few hundred kilobytes.

The same parts as ``Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers``: the bilingual CLIP text
encoder as a ``BertModel`` with a ``BertTokenizer`` (77 tokens), the mT5 encoder as a
``T5EncoderModel`` with a T5 tokenizer (256 tokens), a ``HunyuanDiT2DModel`` without the
style and image-size conditioning (dropped in v1.2), the SDXL fp16-fix ``AutoencoderKL``
and the v-prediction ``DDPMScheduler`` of the official inference code.

The real model only knows ten sizes around one megapixel; the tiny one knows those and the
same aspect ratios at 1/16 of the side (those that stay multiples of 16), so the catalog's
exact-size rule is exercised without 1024 px images on CPU.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
from transformers import BertConfig, BertModel

from studio.catalog import ModelSpec
from studio.tiny.parts import T5_WIDTH, autoencoder_kl, t5_encoder
from studio.tiny.tokenizers import bert_tokenizer, t5_tokenizer

CLIP_TEXT_LENGTH = 77  # the pipeline pads the BERT prompt to 77 tokens ...
T5_TEXT_LENGTH = 256  # ... and the mT5 prompt to 256; the transformer's padding table has both lengths
BERT_WIDTH = 32  # the transformer's cross_attention_dim (1024 in the real model)

# hydit/constants.py and hydit/config.py of the official code: v-prediction DDPM, scaled-linear betas.
HUNYUAN_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.03,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    clip_sample=False,
    steps_offset=1,
    timestep_spacing="leading",
    variance_type="fixed_small",
)

# 1024x1024, 1280x1280, 1024x768, 768x1024, 1280x768, 768x1280 at 1/16 of the side (1152x864,
# 1280x960 and their portraits would not land on a multiple of 16).
TINY_SIZES = ["64x64", "80x80", "64x48", "48x64", "80x48", "48x80"]


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save a tiny ``HunyuanDiTPipeline`` in ``out_dir``; the overrides add tiny sizes to the real ten."""
    tokenizer = bert_tokenizer(max_length=CLIP_TEXT_LENGTH)
    tokenizer_2 = t5_tokenizer(max_length=T5_TEXT_LENGTH)
    pipe = HunyuanDiTPipeline(
        vae=autoencoder_kl(scaling_factor=0.13025, force_upcast=False),  # sdxl-vae-fp16-fix runs in half precision
        text_encoder=_bert(tokenizer),
        tokenizer=tokenizer,
        transformer=_transformer(),
        scheduler=DDPMScheduler(**HUNYUAN_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=t5_encoder(tokenizer_2, tie_word_embeddings=False),  # mT5-XL: untied embeddings
        tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # The real sizes too, so requests written for HunyuanDiT run here; the tiny default (64x64) is among the last.
    real = [f"{width}x{height}" for width, height in spec.limits.allowed_sizes]
    return {"limits": {"allowed_sizes": real + TINY_SIZES, "max_side": spec.limits.max_side,
                       "max_pixels": spec.limits.max_pixels}}


def _bert(tokenizer) -> BertModel:
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=BERT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=CLIP_TEXT_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertModel(config).eval()


def _transformer() -> HunyuanDiT2DModel:
    return HunyuanDiT2DModel(
        num_attention_heads=2,
        attention_head_dim=8,  # 2D rotary embeddings split the head in four
        in_channels=4,
        patch_size=2,
        sample_size=8,  # 64 px by default, as 128 latents are 1024 px for the real model
        hidden_size=16,  # must equal heads * head_dim
        num_layers=4,  # even, as the real 40: the last block takes the long skip from the first
        mlp_ratio=2.0,
        learn_sigma=True,
        cross_attention_dim=BERT_WIDTH,
        cross_attention_dim_t5=T5_WIDTH,  # 2048 in the real model; its attention pool has 8 heads
        pooled_projection_dim=16,
        text_len=CLIP_TEXT_LENGTH,
        text_len_t5=T5_TEXT_LENGTH,
        use_style_cond_and_image_meta_size=False,  # v1.2 dropped the style and size embeddings
    )
