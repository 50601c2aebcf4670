"""Engine: model swaps through the CPU-RAM pipeline cache, on tiny real pipelines."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from studio.catalog import ModelSpec
from studio.schemas import GenerationRequest
from studio.speed import GIB, EngineOptions

A, B, C = "flux-schnell", "pixart-sigma", "flux-dev"


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(A, B, C)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def generate(engine, spec: ModelSpec, seed: int = 7) -> np.ndarray:
    request = spec.check(GenerationRequest(prompt="a red fox in snow", seed=seed))
    return pixels(engine.run(spec, request).images[0])


def sizes(catalog, *ids: str) -> dict[str, int]:
    from studio import families, speed

    return {model_id: speed.pipeline_bytes(families.load_pipeline(catalog.get(model_id), "cpu")) for model_id in ids}


def test_swap_back_comes_from_the_ram_cache_and_draws_what_a_fresh_load_draws(catalog):
    from studio.engine import Engine

    engine = Engine("cpu", EngineOptions(ram_cache_gb=0.01))
    first = generate(engine, catalog.get(A))
    other = generate(engine, catalog.get(B))
    again = engine.run(catalog.get(A), catalog.get(A).check(GenerationRequest(prompt="a red fox in snow", seed=7)))

    assert (engine.loads, engine.cache_hits) == (2, 1)
    assert again.loaded_model  # a swap, even when the cache served it
    assert engine.cache.model_ids == [B]  # A left the cache to become resident again
    fresh = generate(Engine("cpu"), catalog.get(A))
    assert np.array_equal(pixels(again.images[0]), fresh)
    assert np.array_equal(first, fresh)
    assert not np.array_equal(other, fresh)  # the comparison can tell two models apart


def test_without_a_cache_every_swap_reads_the_disk(catalog):
    from studio.engine import Engine

    engine = Engine("cpu")
    for model_id in (A, B, A):
        assert engine.ensure(catalog.get(model_id))
    assert not engine.ensure(catalog.get(A))  # already resident: nothing to do
    assert (engine.loads, engine.cache_hits) == (3, 0)
    assert engine.cache.model_ids == []


def test_the_cache_keeps_to_its_byte_bound_and_evicts_the_least_recently_used(catalog):
    from studio.engine import Engine

    size = sizes(catalog, A, B, C)
    bound = 1.2 * max(size.values())  # room for any one parked pipeline, never for two
    assert bound < min(size[a] + size[b] for a in size for b in size if a != b)
    engine = Engine("cpu", EngineOptions(ram_cache_gb=bound / GIB))

    for model_id in (A, B, C):
        engine.ensure(catalog.get(model_id))
    assert engine.cache.model_ids == [B]  # parking B pushed A out
    assert engine.cache.bytes == size[B] <= engine.cache.max_bytes

    engine.ensure(catalog.get(A))  # evicted: back from the disk, and C is parked instead of B
    assert engine.cache.model_ids == [C]
    engine.ensure(catalog.get(C))  # the wanted one leaves the cache before A is parked: no self-eviction
    assert engine.cache.model_ids == [A]
    assert (engine.loads, engine.cache_hits) == (4, 1)


def test_a_pipeline_larger_than_the_cache_is_dropped(catalog):
    from studio.engine import Engine

    engine = Engine("cpu", EngineOptions(ram_cache_gb=1000 / GIB))  # 1000 bytes: no tiny model fits
    for model_id in (A, B, A):
        engine.ensure(catalog.get(model_id))
    assert (engine.loads, engine.cache_hits) == (3, 0)
    assert engine.cache.bytes == 0


def test_pipeline_cache_order_is_least_recently_parked_first(catalog):
    from studio.engine import PipelineCache

    a, b, c = (catalog.get(model_id) for model_id in (A, B, C))
    cache = PipelineCache(max_bytes=250)
    assert cache.put(a, "pipe-a", 100) == []
    assert cache.put(b, "pipe-b", 100) == []
    assert cache.take(a) == "pipe-a" and a not in cache
    cache.put(a, "pipe-a", 100)  # parked again: now the most recent
    assert cache.put(c, "pipe-c", 100) == [B]
    assert cache.model_ids == [A, C] and cache.bytes == 200
    assert cache.take(b) is None
    assert not cache.fits(251) and cache.fits(250)


def test_unload_keeps_the_parked_pipelines(catalog):
    from studio.engine import Engine

    engine = Engine("cpu", EngineOptions(ram_cache_gb=0.01))
    engine.ensure(catalog.get(A))
    engine.ensure(catalog.get(B))
    engine.unload()
    assert engine.model_id is None and engine.cache.model_ids == [A]
    engine.ensure(catalog.get(A))
    assert (engine.loads, engine.cache_hits) == (2, 1)
