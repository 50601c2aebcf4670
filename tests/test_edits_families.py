"""Edits (image-to-image, inpainting) and previews in the engine, on the tiny pipelines of every
family that has edit pipelines (SDXL incl. Playground, FLUX, Chroma); nothing is mocked."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from studio import families, pngmeta
from studio.catalog import ModelSpec
from studio.engine import Engine, preview_steps
from studio.errors import InvalidRequest
from studio.families import preview, projections
from studio.protocol import Preview, RunJob
from studio.schemas import GenerationRequest
from studio.speed import EngineOptions

EDIT_IDS = ["sdxl-base", "playground-v2.5", "flux-schnell", "chroma"]
PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(*EDIT_IDS, "pixart-sigma")


@pytest.fixture(scope="module")
def engine():
    return Engine("cpu", EngineOptions(ram_cache_gb=4))  # the tests alternate models: swap without rereading


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def gradient(width: int, height: int, flip: bool = False) -> bytes:
    x = np.linspace(0, 255, width).astype(np.uint8)
    y = np.linspace(0, 255, height).astype(np.uint8)
    red = np.tile(x[::-1] if flip else x, (height, 1))
    green = np.tile(y[:, None], (1, width))
    return png(Image.fromarray(np.stack([red, green, 255 - red], -1)))


def alpha_mask(width: int, height: int, hole: tuple[int, int, int, int]) -> bytes:
    """Opaque everywhere except ``hole`` (left, top, right, bottom), which is transparent: repaint it."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), hole)
    return png(mask)


def edit(catalog, model_id: str, **fields):
    return catalog.resolve(GenerationRequest(prompt=PROMPT, model=model_id, seed=7, **fields))


def run(engine, spec: ModelSpec, request: GenerationRequest, **callbacks) -> list[np.ndarray]:
    result = engine.run(spec, request, **callbacks)
    params = pngmeta.read(result.images[0])
    assert (params["task"], params["strength"]) == (request.task, request.strength)  # the file keeps both
    assert "image" not in params and "mask" not in params and "previews" not in params
    return [np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16) for data in result.images]


def test_the_catalog_says_which_models_edit(catalog):
    assert catalog.get("sdxl-base").tasks == ("text-to-image", "image-to-image", "inpainting")
    assert catalog.get("flux-schnell").tasks == ("text-to-image", "image-to-image", "inpainting")
    assert catalog.get("pixart-sigma").tasks == ("text-to-image",)
    with pytest.raises(InvalidRequest) as error:
        edit(catalog, "pixart-sigma", image=gradient(64, 64))
    assert error.value.field == "model"
    assert "pixart-sigma cannot do image-to-image" in error.value.message
    for model_id in EDIT_IDS:
        assert model_id in error.value.message


def test_edit_fields_are_checked_once(catalog):
    with pytest.raises(InvalidRequest) as error:
        edit(catalog, "sdxl-base", strength=0.5)
    assert error.value.field == "strength"  # text-to-image has no strength
    with pytest.raises(InvalidRequest) as error:
        edit(catalog, "sdxl-base", mask=alpha_mask(64, 64, (0, 0, 8, 8)))
    assert error.value.field == "mask"  # a mask without an image
    with pytest.raises(InvalidRequest) as error:
        edit(catalog, "sdxl-base", image=gradient(64, 64), strength=0.2, steps=3)
    assert error.value.field == "strength" and "at least 1" in error.value.message
    _, resolved = edit(catalog, "sdxl-base", image=gradient(64, 64), strength=0.2)
    assert resolved.steps == 5  # the default 2 steps would run none at strength 0.2
    _, resolved = edit(catalog, "sdxl-base", image=gradient(64, 64), mask=alpha_mask(64, 64, (0, 0, 8, 8)))
    assert (resolved.task, resolved.strength) == ("inpainting", 1.0)


@pytest.mark.parametrize("model_id", EDIT_IDS)
def test_image_to_image_uses_the_image_and_loads_the_model_once(catalog, engine, model_id):
    spec, first = edit(catalog, model_id, image=gradient(96, 64), width=96, height=64, steps=4, strength=0.5)
    _, second = edit(catalog, model_id, image=gradient(96, 64, flip=True), width=96, height=64, steps=4, strength=0.5)
    loads_before = engine.loads
    steps = []
    a = run(engine, spec, first, on_step=lambda step, total: steps.append((step, total)))
    b = run(engine, spec, second)
    assert a[0].shape == (64, 96, 3)
    assert np.abs(a[0] - b[0]).max() > 0  # the input image shapes the result
    assert steps[-1] == (2, 2)  # 4 steps at strength 0.5 run 2, and progress says so
    assert engine.loads <= loads_before + 1
    img2img = engine.task_pipe("image-to-image")
    assert type(img2img).__name__ == families.FAMILIES[spec.family].edits["image-to-image"]
    denoiser = "unet" if spec.family == "sdxl" else "transformer"
    assert getattr(img2img, denoiser) is getattr(engine.pipe, denoiser)  # from_pipe: the same weights


def test_flux_edits_run_with_the_step_cache_on(catalog):
    # The edit pipelines share the cached transformer, but their loops open no cache context.
    cached = Engine("cpu", EngineOptions(step_cache=True))
    spec, request = edit(catalog, "flux-schnell", image=gradient(64, 64), width=64, height=64, steps=2, strength=0.6)
    assert run(cached, spec, request)[0].shape == (64, 64, 3)
    _, inpaint = edit(catalog, "flux-schnell", image=gradient(64, 64), mask=alpha_mask(64, 64, (0, 0, 32, 64)), steps=2)
    assert run(cached, spec, inpaint)[0].shape == (64, 64, 3)
    assert cached.pipe.transformer.is_cache_enabled  # back on for the next text-to-image job
    assert run(cached, spec, spec.check(GenerationRequest(prompt=PROMPT, seed=7, steps=2)))[0].shape == (64, 64, 3)


@pytest.mark.parametrize("model_id", EDIT_IDS)
def test_a_variation_needs_no_prompt(catalog, engine, model_id):
    # POST /v1/images/variations: image-to-image with an empty prompt, which every text encoder must take.
    spec, request = edit(catalog, model_id, image=gradient(64, 64), width=64, height=64, steps=2, strength=0.6)
    (image,) = run(engine, spec, request.model_copy(update={"prompt": ""}))
    assert image.shape == (64, 64, 3) and image.std() > 0


@pytest.mark.parametrize("model_id", ["sdxl-base", "flux-schnell", "chroma"])
def test_inpainting_follows_the_mask(catalog, engine, model_id):
    image = gradient(64, 64)
    spec, left = edit(catalog, model_id, image=image, mask=alpha_mask(64, 64, (0, 0, 32, 64)), steps=2)
    _, right = edit(catalog, model_id, image=image, mask=alpha_mask(64, 64, (32, 0, 64, 64)), steps=2)
    a, b = run(engine, spec, left), run(engine, spec, right)
    assert a[0].shape == (64, 64, 3)
    assert np.abs(a[0] - b[0]).max() > 0
    assert type(engine.task_pipe("inpainting")).__name__ == families.FAMILIES[spec.family].edits["inpainting"]


@pytest.mark.parametrize("model_id", ["sdxl-base", "flux-schnell", "pixart-sigma"])
def test_previews_come_spread_over_the_run(catalog, engine, model_id):
    spec, request = edit(catalog, model_id, steps=6, previews=2, width=96, height=64)
    previews = []
    run(engine, spec, request, on_preview=lambda *args: previews.append(args))
    assert [(index, step) for index, step, _, _ in previews] == [(0, 2), (1, 4)]
    image = Image.open(io.BytesIO(previews[0][3]))
    assert image.mode == "RGB" and image.size == (96 // 8, 64 // 8)  # latent resolution: no VAE pass


def test_no_previews_unless_asked(catalog, engine):
    spec, request = edit(catalog, "sdxl-base", steps=3)
    previews = []
    run(engine, spec, request, on_preview=lambda *args: previews.append(args))
    assert previews == []


def test_preview_steps_are_spread_and_never_the_last():
    assert preview_steps(2, 6) == {2, 4}
    assert preview_steps(3, 4) == {1, 2, 3}
    assert preview_steps(3, 2) == {1}
    assert preview_steps(1, 1) == set()


def test_projection_reads_playground_latents_in_the_sdxl_space():
    """Playground's VAE normalises latents by mean and std; the projection undoes it first."""

    class Config:
        scaling_factor = 0.5
        latents_mean = [-1.6574, 1.886, -1.383, 2.5155]
        latents_std = [8.4927, 5.9022, 6.5498, 5.2299]

    raw = torch.randn(1, 4, 3, 3)
    mean, std = torch.tensor(Config.latents_mean).view(1, 4, 1, 1), torch.tensor(Config.latents_std).view(1, 4, 1, 1)
    playground = (raw - mean) * Config.scaling_factor / std
    reference = projections.SDXL_VAE.reference(playground, Config)
    assert torch.allclose(reference, raw * 0.13025, atol=1e-5)


def test_flux_latents_unpack_to_the_image_grid():
    request = GenerationRequest(prompt="x", width=96, height=64)
    grid = torch.arange(16 * 8 * 12, dtype=torch.float32).view(1, 16, 8, 12)
    packed = grid.view(1, 16, 4, 2, 6, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 24, 64)  # FLUX's packing
    assert torch.equal(preview.unpack(packed, request, pipe=None), grid)


def test_edit_jobs_and_previews_cross_the_pipe_whole(catalog):
    """The pipe pickles: the image and mask (left out of the metadata) must still travel."""
    spec, request = edit(catalog, "sdxl-base", image=gradient(64, 64), mask=alpha_mask(64, 64, (0, 0, 8, 8)))
    job = pickle.loads(pickle.dumps(RunJob("j1", spec, request)))
    assert (job.request.image, job.request.mask, job.request.task) == (request.image, request.mask, "inpainting")
    message = Preview("j1", index=0, step=1, total=2, png=b"png")
    assert pickle.loads(pickle.dumps(message)) == message


def test_an_edit_counts_the_steps_it_runs_for_the_estimates(catalog):
    from studio.routing import work_units

    _, text = edit(catalog, "sdxl-base", steps=8)
    _, half = edit(catalog, "sdxl-base", steps=8, image=gradient(64, 64), strength=0.5)
    assert work_units(half) == pytest.approx(work_units(text) / 2)
