"""The fixed linear projections from latents to RGB, one per VAE: published data, torch-free.

The factors are ComfyUI's (``latent_formats.py``, fitted on real images), each stated for its VAE's
scaled latent space; ``Projection.reference`` moves a pipeline's latents there through the VAE's own
config, so Playground v2.5 (its latents normalised by a per-channel mean and std) reads the SDXL
factors right. Each family record (``studio.families``) names the projection of the VAE it decodes
with; ``studio.families.preview`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Projection:
    """RGB = reference_latents @ factors + bias, with reference = (raw VAE latents - shift) * scale."""

    factors: tuple[tuple[float, float, float], ...]  # one (R, G, B) row per latent channel
    bias: tuple[float, float, float]
    scale: float
    shift: float = 0.0

    def reference(self, latents: torch.Tensor, vae_config) -> torch.Tensor:
        """The pipeline's (scaled) latents as raw VAE latents, then in this projection's space."""
        import torch  # worker-side only: the family records that hold projections are read torch-free

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
        import torch

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
