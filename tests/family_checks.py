"""Checks shared by the tests of every family adapter (SDXL, FLUX, Chroma, PixArt-Sigma, Sana,
HunyuanDiT, Lumina-Next, Stable Cascade).

Every check runs the real adapter on the tiny random-weight pipeline of a model id,
loaded through ``from_pretrained`` from its tiny folder; nothing is mocked.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace

import numpy as np
import pytest

from studio import families
from studio.errors import JobCancelled, ModelLoadFailed
from studio.schemas import GenerationRequest

# Images of one batched call differ from single ones by float rounding only (CPU kernels
# block differently for another batch size): at most a couple of 8-bit levels.
BATCH_TOLERANCE = 2
PROMPT = "a red fox in a forest"


def ignore_steps(step: int, total: int) -> None:
    return None


class TinyModels:
    """The tiny catalog of one test module and its pipelines, each loaded once."""

    def __init__(self, catalog):
        self.catalog = catalog
        self._pipes: dict[str, object] = {}

    def spec(self, model_id: str):
        return self.catalog.get(model_id)

    def pipe(self, model_id: str):
        if model_id not in self._pipes:
            self._pipes[model_id] = families.load_pipeline(self.spec(model_id), "cpu")
        return self._pipes[model_id]

    def request(self, model_id: str, spec=None, **fields) -> GenerationRequest:
        spec = spec or self.spec(model_id)
        return spec.check(GenerationRequest(prompt=fields.pop("prompt", PROMPT), **fields))

    def run(self, model_id: str, on_step=ignore_steps, spec=None, **fields) -> list:
        """Generate through the family adapter; ``spec`` replaces the catalog's (limits widened by a test)."""
        spec = spec or self.spec(model_id)
        request = self.request(model_id, spec=spec, **fields)
        return families.generate(self.pipe(model_id), spec, request, on_step)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def differ(a, b) -> bool:
    """Clearly different images, not rounding noise."""
    return np.abs(pixels(a) - pixels(b)).mean() > 1.0


class DenoiserCalls:
    """Records every call of one denoiser (a transformer, a UNet, a Stable Cascade stage):
    latent shape, text length and the guidance tensor, where the call has them.

    This is what tells guidance modes apart: classifier-free guidance doubles the batch
    (PixArt, Sana, SDXL) or the calls (Chroma); FLUX.1 [dev] passes guidance to the model itself.
    """

    def __init__(self, module):
        self.latent_shapes: list[tuple[int, ...]] = []
        self.text_tokens: list[int | None] = []
        self.guidance: list = []
        self.handle = module.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        # Positional for the UNets and HunyuanDiT; Cascade's stages name it ``sample``.
        latents = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.latent_shapes.append(tuple(latents.shape))
        text = kwargs.get("encoder_hidden_states")  # Cascade's stages take CLIP text under other names
        self.text_tokens.append(None if text is None else text.shape[1])
        self.guidance.append(kwargs.get("guidance"))

    @property
    def batches(self) -> list[int]:
        return [shape[0] for shape in self.latent_shapes]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def denoiser_names(pipe) -> tuple[str, ...]:
    """The pipeline's modules called once per denoising step, in the order they run."""
    if hasattr(pipe, "prior_prior"):
        return ("prior_prior", "decoder")  # Stable Cascade: the prior's steps, then the decoder's
    return ("unet",) if hasattr(pipe, "unet") else ("transformer",)


class AllDenoiserCalls(ExitStack):
    """``DenoiserCalls`` of every denoiser of a pipeline, by attribute name."""

    def __init__(self, pipe):
        super().__init__()
        self.pipe = pipe

    def __enter__(self) -> dict[str, DenoiserCalls]:
        super().__enter__()
        return {name: self.enter_context(DenoiserCalls(getattr(self.pipe, name))) for name in denoiser_names(self.pipe)}


def progress_total(spec, steps: int) -> int:
    """The steps ``on_step`` counts to: Stable Cascade's decoder steps follow the requested prior steps."""
    return steps + (spec.decoder_steps or 0)


# The checks every model id of every family passes.


def check_loads_tiny_folder(tiny: TinyModels, model_id: str):
    spec = tiny.spec(model_id)
    pipe = tiny.pipe(model_id)
    assert spec.local_dir is not None
    assert pipe.name_or_path == str(spec.local_dir)  # from_pretrained of the tiny folder
    assert type(pipe).__name__ == spec.pipeline
    assert pipe.device.type == "cpu"


def check_draws_requested_size(tiny: TinyModels, model_id: str, size: tuple[int, int]):
    """``size`` is not square, so swapped sides show; models with a list of sizes need one of theirs."""
    spec = tiny.spec(model_id)
    width, height = size
    assert width != height
    images = tiny.run(model_id, width=width, height=height, seed=1)
    assert [image.size for image in images] == [(width, height)]
    default = tiny.run(model_id, seed=1)[0]
    assert default.size == (spec.defaults.width, spec.defaults.height)


def check_loads_tiny_folder_and_draws_requested_size(tiny: TinyModels, model_id: str, size: tuple[int, int]):
    check_loads_tiny_folder(tiny, model_id)
    check_draws_requested_size(tiny, model_id, size)


def check_seed_decides_the_image(tiny: TinyModels, model_id: str):
    first = tiny.run(model_id, seed=7)[0]
    again = tiny.run(model_id, seed=7)[0]
    other = tiny.run(model_id, seed=8)[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert differ(first, other)


def check_batch_is_one_call_matching_single_runs(tiny: TinyModels, model_id: str, denoiser_batches=None):
    """``denoiser_batches``: the exact batch of every call of each denoiser, where the family's
    guidance fixes it; every call must hold both images in any case."""
    steps = []
    with AllDenoiserCalls(tiny.pipe(model_id)) as calls:
        batch = tiny.run(model_id, seed=11, steps=2, num_images=2, on_step=lambda step, total: steps.append(step))
    alone = [tiny.run(model_id, seed=seed, steps=2)[0] for seed in (11, 12)]

    assert len(batch) == 2
    # One denoising loop (per stage) for both images.
    assert steps == list(range(1, progress_total(tiny.spec(model_id), 2) + 1))
    for denoiser in calls.values():
        assert denoiser.batches and all(size % 2 == 0 for size in denoiser.batches)  # both images in every call
    if denoiser_batches is not None:
        assert {name: denoiser.batches for name, denoiser in calls.items()} == denoiser_batches
    for batched, single in zip(batch, alone):
        assert np.abs(pixels(batched) - pixels(single)).max() <= BATCH_TOLERANCE
    assert differ(batch[0], batch[1])


def check_progress_reports_every_step(tiny: TinyModels, model_id: str):
    calls = []
    tiny.run(model_id, steps=3, on_step=lambda step, total: calls.append((step, total)))
    total = progress_total(tiny.spec(model_id), 3)
    assert calls == [(step, total) for step in range(1, total + 1)]


def check_cancellation_stops_the_job(tiny: TinyModels, model_id: str, cancel_at: int = 1, calls_per_step: int = 1):
    """``calls_per_step``: denoiser calls a step makes (two where guidance runs the negative apart, as Chroma's)."""
    seen = []

    def cancel(step, total):
        seen.append(step)
        if step == cancel_at:
            raise JobCancelled("cancelled by the test")

    with AllDenoiserCalls(tiny.pipe(model_id)) as calls, pytest.raises(JobCancelled):
        tiny.run(model_id, steps=3, on_step=cancel)
    assert seen == list(range(1, cancel_at + 1))
    # No step after the cancelled one.
    assert sum(len(denoiser.batches) for denoiser in calls.values()) == cancel_at * calls_per_step


def check_progress_and_cancellation(tiny: TinyModels, model_id: str, calls_per_step: int = 1):
    check_progress_reports_every_step(tiny, model_id)
    check_cancellation_stops_the_job(tiny, model_id, calls_per_step=calls_per_step)


def check_another_pipeline_is_refused_before_loading(tiny: TinyModels, model_id: str, other: str):
    spec = tiny.spec(model_id)
    with pytest.raises(ModelLoadFailed) as error:
        families.load_pipeline(replace(spec, pipeline=other), "cpu")
    assert spec.pipeline in error.value.message  # the message names the class the adapter runs
    return error.value


def check_large_images_decode_in_tiles(tiny: TinyModels, model_id: str, monkeypatch, wide: tuple[int, int]):
    """Over 2048 px on a side the VAE decodes in tiles; a small image after it decodes whole.

    ``wide`` is a thin strip past 2048 px (cheap on the tiny model); the tiny catalog's
    256 px limit is widened for it as the real model's are.
    """
    spec = tiny.spec(model_id)
    big = replace(spec, limits=replace(spec.limits, max_side=4096, max_pixels=4096 * 4096))
    pipe = tiny.pipe(model_id)
    tiled = []
    real_tiled_decode = pipe.vae.tiled_decode
    monkeypatch.setattr(pipe.vae, "tiled_decode", lambda *a, **k: tiled.append(1) or real_tiled_decode(*a, **k))

    width, height = wide
    images = tiny.run(model_id, spec=big, width=width, height=height, steps=1)
    assert images[0].size == (width, height)
    assert pipe.vae.use_tiling
    assert tiled, "the large image was decoded in one piece"

    tiled.clear()
    tiny.run(model_id, steps=1)
    assert not pipe.vae.use_tiling
    assert not tiled
