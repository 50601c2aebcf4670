"""Memory plans applied at load, on tiny real pipelines on the CPU: fp8 storage and streamed text encoders run
here; group and sequential offload need CUDA and say so."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from studio import placement, pngmeta
from studio.errors import InvalidRequest, OutOfMemory
from studio.memory import Plan
from studio.schemas import GenerationRequest
from studio.speed import EngineOptions

FLUX, CASCADE = "flux-schnell", "stable-cascade"


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(FLUX, CASCADE)


@pytest.fixture(scope="module")
def full(catalog):
    """FLUX's image on the full plan, to compare the others with."""
    return run(catalog, "full")[1]


def run(catalog, plan: str, model: str = FLUX, spec=None):
    from studio.engine import Engine

    engine = Engine("cpu", EngineOptions(memory_plan=plan))
    spec = spec or catalog.get(model)
    result = engine.run(spec, spec.check(GenerationRequest(prompt="a red fox in snow", seed=7, steps=2)))
    return engine, result


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_auto_on_a_cpu_loads_whole_and_records_no_plan(catalog):
    engine, result = run(catalog, "auto")
    assert engine.plan is Plan.FULL
    assert "memory_plan" not in pngmeta.read(result.images[0])


def test_fp8_stores_the_denoiser_in_fp8_and_says_so_in_the_image(catalog, full):
    engine, result = run(catalog, "fp8")
    placed = placement.describe(engine.pipe)
    assert engine.plan is Plan.FP8 and placed["transformer"] == "cpu float8_e4m3fn"
    assert placed["text_encoder_2"] == "cpu float32" and placed["vae"] == "cpu float32"  # only the denoiser
    meta = pngmeta.read(result.images[0])
    assert meta["memory_plan"] == "fp8" and "Memory plan: fp8" in meta["parameters"]
    image, reference = pixels(result.images[0]), pixels(full.images[0])
    assert image.shape == reference.shape and 0 < np.abs(image - reference).mean() < 32  # close, not equal


def test_offload_encoders_streams_the_text_encoders_and_draws_the_same_image(catalog, full):
    engine, result = run(catalog, "offload-encoders")
    assert engine.plan is Plan.OFFLOAD_ENCODERS
    assert placement.streamed(engine.pipe) == {"text_encoder", "text_encoder_2"}
    assert np.array_equal(pixels(result.images[0]), pixels(full.images[0]))
    assert "memory_plan" not in pngmeta.read(result.images[0])  # the weights are the same: nothing to record


@pytest.mark.parametrize("plan", ["group-offload", "sequential"])
def test_the_streaming_plans_are_gpu_only_and_say_so(catalog, plan):
    with pytest.raises(InvalidRequest, match=f"{plan} streams weights to a GPU.*CUDA devices only") as caught:
        run(catalog, plan)
    assert caught.value.status == 400 and caught.value.field == "memory_plan"


def test_the_catalogs_plan_for_a_model_wins_over_the_flag(catalog):
    spec = dataclasses.replace(catalog.get(FLUX), memory_plan="fp8")
    engine, _ = run(catalog, "auto", spec=spec)
    assert engine.plan is Plan.FP8


def test_stable_cascade_refuses_fp8_in_words_and_runs_with_streamed_encoders(catalog):
    with pytest.raises(InvalidRequest, match="fp8 does not work for cascade models"):
        run(catalog, "fp8", model=CASCADE)
    engine, result = run(catalog, "offload-encoders", model=CASCADE)
    assert engine.plan is Plan.OFFLOAD_ENCODERS and result.images


# ---------------------------------------------------------------- on a GPU (skipped here; run where one is lent)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the streaming plans and the cap need CUDA")


@cuda
@pytest.mark.parametrize("plan", ["offload-encoders", "fp8", "group-offload", "sequential"])
def test_every_plan_runs_on_cuda(catalog, plan):
    from studio.engine import Engine

    engine = Engine("cuda", EngineOptions(memory_plan=plan))
    spec = catalog.get(FLUX)
    result = engine.run(spec, spec.check(GenerationRequest(prompt="a red fox in snow", seed=7, steps=2)))
    assert engine.plan is Plan(plan) and result.images


@cuda
def test_the_gpu_cap_is_what_the_plan_choice_sees(catalog):
    from studio.engine import Engine

    engine = Engine("cuda", EngineOptions(gpu_memory_gb=0.5))
    try:
        assert engine.device_memory().free <= 0.5 * 2**30
        spec = catalog.get(FLUX)
        with pytest.raises(OutOfMemory, match="no plan fits"):  # even sequential's headroom is over half a GiB
            engine.run(spec, spec.check(GenerationRequest(prompt="a red fox", seed=7, steps=2)))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # the cap is the process's: give the other tests the card
