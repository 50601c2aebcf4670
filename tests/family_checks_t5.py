"""Checks shared by the tests of the T5/Gemma DiT families (FLUX, Chroma, PixArt-Sigma, Sana).

Every check runs the real adapter on the tiny random-weight pipeline of a model id,
loaded through ``from_pretrained`` from its tiny folder; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from studio import families
from studio.errors import JobCancelled
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


class TransformerCalls:
    """Records every denoiser call: batch, latent shape, text length, and the guidance tensor if any.

    This is what tells guidance modes apart: classifier-free guidance doubles the batch
    (PixArt, Sana) or the calls (Chroma); FLUX.1 [dev] passes guidance to the model itself.
    """

    def __init__(self, pipe):
        self.latent_shapes: list[tuple[int, ...]] = []
        self.text_tokens: list[int] = []
        self.guidance: list = []
        self.handle = pipe.transformer.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        latents = args[0] if args else kwargs["hidden_states"]
        self.latent_shapes.append(tuple(latents.shape))
        self.text_tokens.append(kwargs["encoder_hidden_states"].shape[1])
        self.guidance.append(kwargs.get("guidance"))

    @property
    def batches(self) -> list[int]:
        return [shape[0] for shape in self.latent_shapes]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# The checks every model id of these families passes.


def check_loads_tiny_folder_and_draws_requested_size(tiny: TinyModels, model_id: str, size: tuple[int, int]):
    spec = tiny.spec(model_id)
    pipe = tiny.pipe(model_id)
    assert spec.local_dir is not None
    assert pipe.name_or_path == str(spec.local_dir)  # from_pretrained of the tiny folder
    assert type(pipe).__name__ == spec.pipeline
    assert pipe.device.type == "cpu"

    width, height = size
    assert width != height
    images = tiny.run(model_id, width=width, height=height, seed=1)
    assert [image.size for image in images] == [(width, height)]
    default = tiny.run(model_id, seed=1)[0]
    assert default.size == (spec.defaults.width, spec.defaults.height)


def check_seed_decides_the_image(tiny: TinyModels, model_id: str):
    first = tiny.run(model_id, seed=7)[0]
    again = tiny.run(model_id, seed=7)[0]
    other = tiny.run(model_id, seed=8)[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert differ(first, other)


def check_batch_is_one_call_matching_single_runs(tiny: TinyModels, model_id: str):
    steps = []
    with TransformerCalls(tiny.pipe(model_id)) as calls:
        batch = tiny.run(model_id, seed=11, num_images=2, on_step=lambda step, total: steps.append(step))
    alone = [tiny.run(model_id, seed=seed)[0] for seed in (11, 12)]

    assert len(batch) == 2
    assert steps == [1, 2]  # one denoising loop for both images
    assert all(batch_size % 2 == 0 for batch_size in calls.batches)  # both images in every model call
    for batched, single in zip(batch, alone):
        assert np.abs(pixels(batched) - pixels(single)).max() <= BATCH_TOLERANCE
    assert differ(batch[0], batch[1])


def check_progress_and_cancellation(tiny: TinyModels, model_id: str):
    calls = []
    tiny.run(model_id, steps=3, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    seen = []

    def cancel_at_first_step(step, total):
        seen.append(step)
        raise JobCancelled("cancelled by the test")

    with TransformerCalls(tiny.pipe(model_id)) as model:
        with pytest.raises(JobCancelled):
            tiny.run(model_id, steps=3, on_step=cancel_at_first_step)
    assert seen == [1]
    assert len(model.batches) <= 2  # the first step's calls only (two for Chroma's CFG), then it stopped


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
