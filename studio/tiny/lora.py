"""Tiny random LoRAs for the tiny SDXL and FLUX models, in both key formats people download.

``build_loras(models_dir)`` writes ``models_dir/loras/`` with, for each of SDXL and FLUX:

- ``tiny-<family>-diffusers.safetensors``: diffusers/PEFT keys (``unet.<module>.lora_A.weight``),
  as ``save_lora_weights`` and most hub repos write them;
- ``tiny-<family>-kohya.safetensors``: kohya/A1111 keys (``lora_unet_<module>.lora_down.weight``
  plus ``.alpha``), as Civitai serves them; FLUX's use Black Forest Labs' own block names.

The shapes come from the tiny model's own layers, so diffusers' real loaders (and converters) read
them. The up matrices are not zero (unlike a freshly initialised adapter), so each LoRA changes the
image; each file's metadata carries trigger words the way kohya's trainer records them.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio import families

LORA_DIR = "loras"
RANK = 4
SCALE = 0.5  # of the random up matrices: a visible change, not a wrecked image

# Which layers each tiny LoRA adapts: (the denoiser's module, its name in the kohya file).
SDXL_TARGETS = [
    (f"{block}.attentions.0.transformer_blocks.0.{attn}.{proj}",
     f"{block}.attentions.0.transformer_blocks.0.{attn}.{proj}".replace(".", "_"))
    for block in ("down_blocks.1", "up_blocks.0")
    for attn in ("attn1", "attn2")
    for proj in ("to_q", "to_k", "to_v", "to_out.0")
]
FLUX_TARGETS = [  # Black Forest Labs' names for the unfused layers (kohya's FLUX LoRAs use them)
    ("transformer_blocks.0.attn.to_out.0", "double_blocks_0_img_attn_proj"),
    ("transformer_blocks.0.attn.to_add_out", "double_blocks_0_txt_attn_proj"),
    ("transformer_blocks.0.ff.net.2", "double_blocks_0_img_mlp_2"),
    ("single_transformer_blocks.0.proj_out", "single_blocks_0_linear2"),
]
FAMILIES = {  # family: (tiny model it is made from, targets); the denoiser is the family record's
    "sdxl": ("sdxl-base", SDXL_TARGETS),
    "flux": ("flux-schnell", FLUX_TARGETS),
}
TRIGGERS = {"sdxl": "tinystyle", "flux": "tinyflux"}


def build_loras(models_dir: str | Path) -> list[Path]:
    """Write the tiny LoRAs of every family whose tiny model is in ``models_dir``; returns the files."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(models_dir) / LORA_DIR
    written = []
    for family, (model_id, targets) in FAMILIES.items():
        attribute = families.FAMILIES[family].denoisers[0]  # diffusers' LoRA keys start with its name too
        model_dir = Path(models_dir) / model_id
        if not (model_dir / attribute).is_dir():
            continue
        layers = _linear_shapes(model_dir / attribute, attribute)
        generator = torch.Generator().manual_seed(len(family))
        diffusers_keys, kohya_keys = {}, {}
        for module, kohya_name in targets:
            out_features, in_features = layers[module]
            down = torch.randn(RANK, in_features, generator=generator) * SCALE
            up = torch.randn(out_features, RANK, generator=generator) * SCALE
            diffusers_keys[f"{attribute}.{module}.lora_A.weight"] = down
            diffusers_keys[f"{attribute}.{module}.lora_B.weight"] = up
            kohya_keys[f"lora_unet_{kohya_name}.lora_down.weight"] = down
            kohya_keys[f"lora_unet_{kohya_name}.lora_up.weight"] = up
            kohya_keys[f"lora_unet_{kohya_name}.alpha"] = torch.tensor(float(RANK))  # alpha = rank: scale 1
        out_dir.mkdir(parents=True, exist_ok=True)
        for key_format, tensors in (("diffusers", diffusers_keys), ("kohya", kohya_keys)):
            path = out_dir / f"tiny-{family}-{key_format}.safetensors"
            save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, path,
                      metadata=_metadata(family, key_format))
            written.append(path)
    return written


def _linear_shapes(folder: Path, attribute: str) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer of the saved denoiser, read from its weights (no model built)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                shape = weights.get_slice(name).get_shape()
                if name.endswith(".weight") and len(shape) == 2:
                    shapes[name.removesuffix(".weight")] = (shape[0], shape[1])
    if not shapes:
        raise FileNotFoundError(f"no weights in {folder} (build the tiny {attribute} first)")
    return shapes


def _metadata(family: str, key_format: str) -> dict[str, str]:
    """What trainers record: kohya's tag counts (where A1111 and Civitai find trigger words), the
    modelspec trigger phrase and the base model's architecture."""
    trigger = TRIGGERS[family]
    return {
        "ss_tag_frequency": json.dumps({"1_tiny": {trigger: 12, "random noise": 3}}),
        "modelspec.trigger_phrase": trigger,
        "modelspec.architecture": {"sdxl": "stable-diffusion-xl-v1-base/lora", "flux": "flux-1-dev/lora"}[family],
        "ss_network_dim": str(RANK),
        "studio.key_format": key_format,
    }
