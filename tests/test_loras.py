"""The LoRA library (studio.loras) on the tiny LoRAs that ``python -m studio.tiny`` writes."""

from __future__ import annotations

import shutil

import pytest

from studio.loras import LoraError, LoraLibrary, family_of, read_header

SDXL, FLUX = "sdxl-base", "flux-schnell"


@pytest.fixture(scope="module")
def models_dir(lora_models):
    return lora_models


@pytest.fixture(scope="module")
def library(models_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    for path in (models_dir / "loras").glob("*.safetensors"):
        shutil.copy(path, folder / path.name)
    (folder / "styles").mkdir()
    shutil.copy(folder / "tiny-sdxl-kohya.safetensors", folder / "styles" / "ink.safetensors")
    return LoraLibrary(folder)


def test_the_library_lists_each_lora_with_its_family_size_triggers_and_hash(library):
    listed = {lora.name: lora for lora in library.all()}
    assert sorted(listed) == ["styles/ink", "tiny-flux-diffusers", "tiny-flux-kohya",
                              "tiny-sdxl-diffusers", "tiny-sdxl-kohya"]
    assert {name: lora.family for name, lora in listed.items()} == {
        "styles/ink": "sdxl", "tiny-flux-diffusers": "flux", "tiny-flux-kohya": "flux",
        "tiny-sdxl-diffusers": "sdxl", "tiny-sdxl-kohya": "sdxl"}
    assert listed["tiny-flux-kohya"].fits == ("flux", "chroma")
    assert listed["tiny-sdxl-kohya"].triggers == ("tinystyle",)
    assert listed["tiny-sdxl-kohya"].size_bytes == listed["tiny-sdxl-kohya"].path.stat().st_size
    assert len(listed["tiny-sdxl-kohya"].short_hash) == 12
    # A1111's hash covers the tensors only: the same tensors under another name hash the same.
    assert listed["styles/ink"].short_hash == listed["tiny-sdxl-kohya"].short_hash
    assert library.get("tiny-sdxl-kohya.safetensors") == listed["tiny-sdxl-kohya"]


@pytest.mark.parametrize("name, says", [
    ("../../etc/passwd", "climbs out of the LoRA folder"),
    ("styles/../../x", "climbs out of the LoRA folder"),
    ("/etc/passwd", "is not a LoRA name"),
    ("model.ckpt", "is not a .safetensors file"),
    ("weights.bin", "never loaded"),
    ("tiny-sdxl-kohy", "unknown LoRA 'tiny-sdxl-kohy'; did you mean tiny-sdxl-kohya"),
])
def test_bad_names_are_refused_naming_loras(library, name, says):
    with pytest.raises(LoraError, match=says) as caught:
        library.get(name)
    assert caught.value.status == 400 and caught.value.field == "loras"


def test_a_link_out_of_the_folder_is_refused(library, tmp_path):
    outside = tmp_path / "secret.safetensors"
    shutil.copy(library.get("tiny-sdxl-kohya").path, outside)
    link = library.folder / "escape.safetensors"
    link.symlink_to(outside)
    try:
        with pytest.raises(LoraError, match="climbs out"):
            library.get("escape")
    finally:
        link.unlink()


def test_truncated_and_corrupt_files_are_refused_and_left_out_of_the_list(library):
    good = library.get("tiny-sdxl-kohya").path.read_bytes()
    broken = {"truncated": good[:-7], "garbage": b"\x00not a safetensors file at all" * 3, "empty": b""}
    for name, data in broken.items():
        (library.folder / f"{name}.safetensors").write_bytes(data)
    try:
        for name in broken:
            with pytest.raises(LoraError, match=f"loras: {name}.safetensors (is truncated|is not a safetensors)"):
                library.get(name)
        assert not set(broken) & {lora.name for lora in library.all()}
    finally:
        for name in broken:
            (library.folder / f"{name}.safetensors").unlink()


def test_families_are_told_from_the_keys():
    assert family_of(["lora_unet_double_blocks_0_img_attn_proj.lora_down.weight"])[0] == "flux"
    assert family_of(["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"])[0] == "flux"
    assert family_of(["diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight"])[0] == "flux"
    assert family_of(["transformer.transformer_blocks.0.attn2.to_k.lora_A.weight",
                      "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"])[0] == "sana"
    assert family_of(["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]) == ("sdxl", ("sdxl",))
    assert family_of(["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                      "lora_unet_input_blocks_1_1_proj_in.lora_down.weight"]) == ("sd1", ())
    assert family_of(["something.else"]) == ("unknown", ())


def test_read_header_returns_tensors_and_metadata(library):
    tensors, metadata = read_header(library.get("tiny-flux-kohya").path)
    assert "lora_unet_single_blocks_0_linear2.lora_up.weight" in tensors
    assert metadata["modelspec.trigger_phrase"] == "tinyflux"


def test_kohya_and_diffusers_files_load_in_diffusers_and_change_the_image_alike(models_dir, library):
    """The tiny files are real LoRAs: diffusers' own loaders read both formats, to the same weights."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(models_dir / SDXL)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("a fox", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(3)).images[0]

    base = image()
    for key_format in ("kohya", "diffusers"):
        pipe.load_lora_weights(str(library.get(f"tiny-sdxl-{key_format}").path), adapter_name=key_format)
    pipe.set_adapters(["kohya"], [1.0])
    kohya = image()
    pipe.set_adapters(["diffusers"], [1.0])
    diffusers_format = image()
    assert np.abs(kohya - base).mean() > 0.01
    assert np.array_equal(kohya, diffusers_format)
