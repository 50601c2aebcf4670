"""Speed options on tiny real pipelines: each one applied keeps generation working (and, where
it is exact, keeps the image), and options that do not apply are skipped, not fatal."""

from __future__ import annotations

import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from studio.config import Settings
from studio.schemas import GenerationRequest
from studio.speed import EngineOptions


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog("sdxl-turbo", "flux-schnell", "pixart-sigma")


def load(catalog, model_id: str):
    from studio import families

    spec = catalog.get(model_id)
    return spec, families.load_pipeline(spec, "cpu")


def draw(pipe, spec, **fields) -> np.ndarray:
    from studio import families

    request = spec.check(GenerationRequest(prompt="a red fox in snow", seed=11, **fields))
    return np.stack([np.asarray(image, dtype=np.int16) for image in families.generate(pipe, spec, request, lambda *_: None)])


def processor_names(module) -> set[str]:
    return {type(processor).__name__ for processor in module.attn_processors.values()}


def test_options_come_from_settings_cross_processes_and_keep_the_parent_torch_free():
    options = EngineOptions.from_settings(Settings(ram_cache_gb=1.5, compile=True, step_cache=True))
    assert (options.ram_cache_gb, options.compile, options.step_cache) == (1.5, True, True)
    assert options.ram_cache_bytes == int(1.5 * 2**30)
    assert options.fuse_qkv and options.channels_last  # on by default (they act on CUDA only)
    assert pickle.loads(pickle.dumps(options)) == options
    probe = "import sys, studio.speed; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_direct_to_device_loading_is_for_cuda_only():
    from studio import speed

    assert speed.load_kwargs("cpu") == {}


def test_vae_tiling_follows_each_request(catalog):
    from studio import speed

    _, pipe = load(catalog, "pixart-sigma")
    assert speed.prepare(pipe, GenerationRequest(prompt="x", width=4096, height=2048))
    assert pipe.vae.use_tiling
    assert not speed.prepare(pipe, GenerationRequest(prompt="x", width=2048, height=2048))
    assert not pipe.vae.use_tiling  # a small image after a big one decodes in one piece again
    assert not speed.prepare(SimpleNamespace(), GenerationRequest(prompt="x", width=4096, height=4096))  # no VAE


def test_engine_turns_tiling_off_for_a_small_image(catalog):
    from studio.engine import Engine

    spec = catalog.get("pixart-sigma")
    engine = Engine("cpu")
    engine.ensure(spec)
    engine.pipe.vae.enable_tiling()  # as a previous 4K request would have left it
    engine.run(spec, spec.check(GenerationRequest(prompt="x", seed=1)))
    assert not engine.pipe.vae.use_tiling


def test_defaults_on_cpu_leave_the_pipeline_alone(catalog):
    from studio import speed

    spec, pipe = load(catalog, "sdxl-turbo")
    assert speed.optimize(pipe, spec, "cpu", EngineOptions()) == []
    assert processor_names(pipe.unet) == {"AttnProcessor2_0"}  # SDPA already, and fusing is for CUDA


def test_the_classic_attention_processor_is_swapped_for_sdpa(catalog):
    from diffusers.models.attention_processor import AttnProcessor

    from studio import speed

    spec, pipe = load(catalog, "sdxl-turbo")
    before = draw(pipe, spec)
    pipe.unet.set_attn_processor(AttnProcessor())  # what set_default_attn_processor() would leave
    assert speed.optimize(pipe, spec, "cpu", EngineOptions()) == ["sdpa"]
    assert processor_names(pipe.unet) == {"AttnProcessor2_0"}
    assert np.abs(draw(pipe, spec) - before).max() <= 1


def test_fused_qkv_and_channels_last_draw_the_same_sdxl_image(catalog):
    from studio import families, speed

    spec, pipe = load(catalog, "sdxl-turbo")
    before = draw(pipe, spec)
    denoisers = families.FAMILIES[spec.family].denoisers
    assert speed.fuse_qkv(pipe, denoisers) and speed.channels_last(pipe, denoisers)
    assert processor_names(pipe.unet) == {"FusedAttnProcessor2_0"}
    assert np.abs(draw(pipe, spec) - before).max() <= 1


def test_step_cache_on_flux_generates_and_is_skipped_where_unsupported(catalog):
    from studio import speed

    spec, pipe = load(catalog, "flux-schnell")
    assert speed.optimize(pipe, spec, "cpu", EngineOptions(step_cache=True)) == ["step_cache"]
    assert pipe.transformer.is_cache_enabled
    first = draw(pipe, spec, steps=4, num_images=2)
    assert first.shape == (2, 64, 64, 3)
    assert np.array_equal(draw(pipe, spec, steps=4, num_images=2), first)  # cache state resets per call

    spec, pipe = load(catalog, "pixart-sigma")  # its loop opens no cache context: must not turn it on
    assert speed.optimize(pipe, spec, "cpu", EngineOptions(step_cache=True)) == []
    assert draw(pipe, spec).shape == (1, 64, 64, 3)


def test_compiled_denoiser_draws_the_same_image(catalog):
    from studio import speed

    spec, pipe = load(catalog, "flux-schnell")
    before = draw(pipe, spec)
    # The eager backend exercises the wiring (regional compile of the repeated blocks) in seconds.
    # FLUX takes LoRAs: hotswap is enabled before compiling, so a LoRA switch will not recompile.
    assert speed.optimize(pipe, spec, "cpu", EngineOptions(compile=True, compile_backend="eager")) == [
        "lora_hotswap", "compile"]
    assert np.abs(draw(pipe, spec) - before).max() <= 1
