"""Tiny random-weight Stable Cascade: both stages of the real repos, shrunk to a few hundred kilobytes.

``out_dir/prior`` mirrors ``stabilityai/stable-cascade-prior`` (``StableCascadePriorPipeline``:
the stage C ``StableCascadeUNet``, a ``CLIPTextModelWithProjection`` with its CLIP tokenizer,
``DDPMWuerstchenScheduler``, and the CLIP image encoder and feature extractor used only for
image variations). ``out_dir/decoder`` mirrors ``stabilityai/stable-cascade``
(``StableCascadeDecoderPipeline``: the stage B ``StableCascadeUNet``, the same text encoder,
the ``PaellaVQModel`` VQGAN, ``DDPMWuerstchenScheduler``).

The size arithmetic is the real one: the prior's latent is ``ceil(side / 42.67)``, the
decoder's ``int(that * 10.67)``, and the VQGAN scales by 4; only multiples of 128 come out
at exactly the requested size. So the tiny model keeps the real multiple and uses the
smallest sides it allows (128 and 256) with few decoder steps.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    DDPMWuerstchenScheduler,
    StableCascadeDecoderPipeline,
    StableCascadePriorPipeline,
    StableCascadeUNet,
)
from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from studio.catalog import ModelSpec
from studio.families.cascade import DECODER_DIR, PRIOR_DIR  # where the adapter looks for the stages
from studio.tiny import parts
from studio.tiny.tokenizers import clip_tokenizer

TEXT_WIDTH = 32  # CLIP bigG's hidden and projection size is 1280
IMAGE_EMBED_DIM = 16  # CLIP ViT-L's image projection is 768
PRIOR_WIDTH = 32  # stage C's conditioning and block width is 2048
EFFNET_CHANNELS = 16  # stage C predicts 16-channel EfficientNet latents; stage B is conditioned on them

# The real repos' pipeline settings (model_index.json): image side -> prior latent, prior -> decoder latent.
RESOLUTION_MULTIPLE = 42.67
LATENT_DIM_SCALE = 10.67


def build(spec: ModelSpec, out_dir: Path) -> dict:
    """Save the tiny prior and decoder pipelines under ``out_dir``; overrides keep sizes on the 128 grid."""
    tokenizer = clip_tokenizer()
    text_encoder = _text_encoder(tokenizer)  # one encoder for both stages, as the real conversion saved it
    prior = StableCascadePriorPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        prior=_prior(),
        scheduler=DDPMWuerstchenScheduler(),
        resolution_multiple=RESOLUTION_MULTIPLE,
        feature_extractor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        image_encoder=_image_encoder(),
    )
    prior.save_pretrained(out_dir / PRIOR_DIR, safe_serialization=True)
    decoder = StableCascadeDecoderPipeline(
        decoder=_decoder(),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        scheduler=DDPMWuerstchenScheduler(),
        vqgan=_vqgan(),
        latent_dim_scale=LATENT_DIM_SCALE,
    )
    decoder.save_pretrained(out_dir / DECODER_DIR, safe_serialization=True)
    return {
        "decoder_steps": 2,
        "defaults": {"width": 128, "height": 128},
        "limits": {"size_multiple": 128, "min_side": 128},
    }


def _text_encoder(tokenizer) -> CLIPTextModelWithProjection:
    config = parts.clip_text_config(tokenizer, TEXT_WIDTH, 64, "gelu", TEXT_WIDTH)  # OpenCLIP bigG
    return CLIPTextModelWithProjection(config).eval()


def _image_encoder() -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        projection_dim=IMAGE_EMBED_DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    return CLIPVisionModelWithProjection(config).eval()


# What the two stages' tiny StableCascadeUNets share: one block of each kind per level, 3x3 kernels.
STAGE_UNET = dict(
    timestep_ratio_embedding_dim=64, down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1),
    down_blocks_repeat_mappers=(1, 1), clip_seq=4, kernel_size=3, self_attn=True,
)


def _prior() -> StableCascadeUNet:
    """Stage C: text-conditioned, attention at both levels, no spatial down-sampling (switch_level False)."""
    block = ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")
    return StableCascadeUNet(
        **STAGE_UNET,
        in_channels=EFFNET_CHANNELS,
        out_channels=EFFNET_CHANNELS,
        patch_size=1,
        conditioning_dim=PRIOR_WIDTH,
        block_out_channels=(PRIOR_WIDTH, PRIOR_WIDTH),
        num_attention_heads=(2, 2),
        up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=(block, block),
        clip_text_in_channels=TEXT_WIDTH,
        clip_text_pooled_in_channels=TEXT_WIDTH,
        clip_image_in_channels=IMAGE_EMBED_DIM,
        dropout=(0.1, 0.1),
        timestep_conditioning_type=("sca", "crp"),
        switch_level=(False,),
    )


def _decoder() -> StableCascadeUNet:
    """Stage B: pooled-text and EfficientNet conditioned, 2x2 patches, attention only at the deeper level."""
    return StableCascadeUNet(
        **STAGE_UNET,
        in_channels=4,
        out_channels=4,
        patch_size=2,
        conditioning_dim=TEXT_WIDTH,
        block_out_channels=(16, 32),
        num_attention_heads=(0, 2),
        up_blocks_repeat_mappers=(2, 1),
        block_types_per_layer=(
            ("SDCascadeResBlock", "SDCascadeTimestepBlock"),
            ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),
        ),
        clip_text_pooled_in_channels=TEXT_WIDTH,
        effnet_in_channels=EFFNET_CHANNELS,
        pixel_mapper_in_channels=3,
        dropout=(0.0, 0.0),
        timestep_conditioning_type=("sca",),
    )


def _vqgan() -> PaellaVQModel:
    """Stage A: the 4-channel, 4x-upscaling VQGAN, with one bottleneck block instead of twelve."""
    return PaellaVQModel(
        in_channels=3,
        out_channels=3,
        up_down_scale_factor=2,
        levels=2,
        bottleneck_blocks=1,
        embed_dim=16,
        latent_channels=4,
        num_vq_embeddings=64,
        scale_factor=0.3764,
    )
