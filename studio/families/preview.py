"""Cheap previews of a running job: the latents mapped to RGB by one fixed linear projection per VAE.

A preview costs a 3xC matrix product on a latent-sized tensor (1/8 of the image's side), no VAE
pass and no extra weights, so a job can send several. The projection factors are published data
(ComfyUI's ``latent_formats.py``, fitted on real images), each stated for its VAE's scaled
latent space; ``Projection.reference`` moves a pipeline's latents there through the VAE's own
config, so Playground v2.5 (its latents normalised by a per-channel mean and std) reads the SDXL
factors right. Families without published factors (Sana's DC-AE) decode the first image with
their VAE instead, which costs about one final decode. Stable Cascade reports progress without
previews (its stages keep no RGB-decodable latents until the VQGAN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from studio.schemas import GenerationRequest


@dataclass(frozen=True)
class Projection:
    """RGB = reference_latents @ factors + bias, with reference = (raw VAE latents - shift) * scale."""

    factors: tuple[tuple[float, float, float], ...]  # one (R, G, B) row per latent channel
    bias: tuple[float, float, float]
    scale: float
    shift: float = 0.0

    def reference(self, latents: torch.Tensor, vae_config) -> torch.Tensor:
        """The pipeline's (scaled) latents as raw VAE latents, then in this projection's space."""
        scaling = getattr(vae_config, "scaling_factor", None) or 1.0
        mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
        if mean is not None and std is not None and len(mean) == latents.shape[1]:
            shape = (1, -1, 1, 1)
            raw = latents * torch.tensor(std).view(shape) / scaling + torch.tensor(mean).view(shape)
        else:
            raw = latents / scaling + (getattr(vae_config, "shift_factor", None) or 0.0)
        return (raw - self.shift) * self.scale

    def to_rgb(self, latents: torch.Tensor, vae_config) -> torch.Tensor:
        """(C, H, W) latents of one image as (H, W, 3) RGB in 0..1."""
        reference = self.reference(latents.unsqueeze(0).float(), vae_config)[0]
        rgb = torch.einsum("chw,cr->hwr", reference, torch.tensor(self.factors)) + torch.tensor(self.bias)
        return ((rgb + 1) / 2).clamp(0, 1)


SDXL_VAE = Projection(
    factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    bias=(0.1084, -0.0175, -0.0011),
    scale=0.13025,
)

FLUX_VAE = Projection(
    factors=(
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    bias=(-0.0329, -0.0718, -0.0851),
    scale=0.3611,
    shift=0.1159,
)

# PixArt-Sigma, HunyuanDiT and Lumina-Next decode with SDXL's VAE (or its fp16 fix); Chroma with FLUX's.
PROJECTIONS = {
    "sdxl": SDXL_VAE,
    "pixart": SDXL_VAE,
    "hunyuan": SDXL_VAE,
    "lumina": SDXL_VAE,
    "flux": FLUX_VAE,
    "chroma": FLUX_VAE,
}


@torch.no_grad()
def latents_to_image(pipe, family: str, latents: torch.Tensor, request: GenerationRequest) -> Image.Image | None:
    """A preview of the first image of the batch, at the latents' resolution; None where there is no way."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return None
    first = latents[:1].detach()
    if first.ndim == 3:  # FLUX and Chroma pack 2x2 latent patches into a token sequence
        first = unpack(first, request, pipe)
    if first.ndim != 4:
        return None
    projection = PROJECTIONS.get(family)
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
