"""Cheap previews of a running job: the latents mapped to RGB by one fixed linear projection per VAE.

A preview costs a 3xC matrix product on a latent-sized tensor (1/8 of the image's side), no VAE
pass and no extra weights, so a job can send several. The projection is the family record's
(``studio.families.projections`` holds the published factors). Families without one (Sana's
DC-AE) decode the first image with their VAE instead, which costs about one final decode. Stable
Cascade reports progress without previews (its stages keep no RGB-decodable latents until the VQGAN).
"""

from __future__ import annotations

import torch
from PIL import Image

from studio import families
from studio.schemas import GenerationRequest


@torch.no_grad()
def latents_to_image(pipe, family: str, latents: torch.Tensor, request: GenerationRequest) -> Image.Image | None:
    """A preview of the first image of ``latents``, at the latents' resolution; None where there is no way."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return None
    first = latents[:1].detach()
    if first.ndim == 3:  # FLUX and Chroma pack 2x2 latent patches into a token sequence
        first = unpack(first, request, pipe)
    if first.ndim != 4:
        return None
    projection = families.FAMILIES[family].preview
    if projection is not None and len(projection.factors) == first.shape[1]:
        rgb = projection.to_rgb(first[0].cpu(), vae.config)
    else:
        rgb = _decode(vae, first)
    return Image.fromarray((rgb * 255).round().to(torch.uint8).numpy(), "RGB")


def unpack(latents: torch.Tensor, request: GenerationRequest, pipe) -> torch.Tensor:
    """(B, tokens, C*4) packed latents as (B, C, H/8, W/8), the layout FLUX's pipelines pack them from."""
    factor = getattr(pipe, "vae_scale_factor", 8) * 2
    rows, cols = request.height // factor, request.width // factor
    batch, tokens, packed = latents.shape
    if tokens != rows * cols or packed % 4:
        return latents
    channels = packed // 4
    grid = latents.view(batch, rows, cols, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, channels, rows * 2, cols * 2)


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's own decode of one image's latents, as (H, W, 3) in 0..1 (the costly fallback)."""
    config = vae.config
    raw = latents.to(vae.dtype) / (getattr(config, "scaling_factor", None) or 1.0)
    raw = raw + (getattr(config, "shift_factor", None) or 0.0)
    image = vae.decode(raw, return_dict=False)[0][0].float().cpu()
    return ((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1)
