"""Samplers: A1111's names per family, checked by the catalog, swapped per job by the engine on tiny
real pipelines (no reload, the model's own scheduler back after the job)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from studio import pngmeta, samplers
from studio.catalog import load_catalog
from studio.errors import InvalidRequest
from studio.schemas import GenerationRequest

FLOW_FAMILIES = ("flux", "chroma", "sana", "lumina")
EDM = "EDMDPMSolverMultistepScheduler"  # Playground v2.5 keeps its scheduler: its samplers are EDM's


def test_noise_prediction_families_take_a1111s_list_with_karras_variants():
    names = samplers.choices("sdxl")
    for name in ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS"):
        assert name in names
    assert {"DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DPM++ SDE Karras", "Euler Karras", "LMS Karras"} <= set(names)
    assert "DDIM Karras" not in names and "Euler a Karras" not in names  # A1111 has no such variant here


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_flow_matching_families_take_only_flow_matching_schedulers(family):
    for name in samplers.choices(family):
        scheduler, _ = samplers.scheduler_of(name, family)
        flow = scheduler.startswith("FlowMatch") or family == "sana"  # Sana's DPM++/UniPC run on its flow sigmas
        assert flow, (family, name, scheduler)
    assert "DDIM" not in samplers.choices(family) and "LMS" not in samplers.choices(family)


def test_a1111_sampler_name_and_scheduler_give_our_sampler_value():
    sdxl = samplers.choices("sdxl")
    assert samplers.from_a1111("DPM++ 2M", "Karras") == "DPM++ 2M Karras"
    assert samplers.from_a1111("DPM++ 2M", "karras") == "DPM++ 2M Karras"  # the name of GET schedulers
    assert samplers.from_a1111("DPM++ 2M", "Uniform") == samplers.from_a1111("DPM++ 2M", "normal") == "DPM++ 2M"
    # A1111's "Automatic" is the sampler's own default: Karras for DPM++ 2M where the model has it
    assert samplers.from_a1111("DPM++ 2M", "Automatic", sdxl) == samplers.from_a1111("DPM++ 2M", None, sdxl) \
        == "DPM++ 2M Karras"
    assert samplers.from_a1111("DPM++ 2M", "Automatic", samplers.choices("sana")) == "DPM++ 2M"
    assert samplers.from_a1111("Euler a", "Automatic", sdxl) == "Euler a"
    assert samplers.from_a1111("DPM++ 2M Karras", "Automatic") == "DPM++ 2M Karras"  # A1111's old combined names
    with pytest.raises(InvalidRequest) as caught:
        samplers.from_a1111("Euler", "Exponential")
    assert caught.value.field == "scheduler" and "Automatic, Uniform, Normal, Karras" in caught.value.message
    assert samplers.to_a1111("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert samplers.to_a1111("DPM++ 2M") == ("DPM++ 2M", "Uniform")  # A1111 would read "Automatic" as Karras
    assert samplers.to_a1111("Euler a") == ("Euler a", "Automatic")
    assert samplers.canonical(" dpm++  2m karras ", "sdxl") == "DPM++ 2M Karras"
    assert samplers.canonical("k_euler_a", "flux") == "Euler a"  # A1111's aliases
    assert samplers.canonical("DPM++ 2M", "flux") is None


def test_a1111s_sampler_list_is_the_models_each_name_once_with_its_schedule_types():
    listed = {sampler.name: sampler for sampler in samplers.a1111_samplers("sdxl")}
    assert list(listed) == ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS"]
    assert listed["DPM++ 2M"].schedules == ("Automatic", "Uniform", "Normal", "Karras")
    assert listed["Euler a"].schedules == ("Automatic", "Uniform", "Normal") and "k_euler_a" in listed["Euler a"].aliases
    assert [sampler.name for sampler in samplers.a1111_samplers("flux")] == ["Euler", "Euler a"]
    assert [sampler.name for sampler in samplers.a1111_samplers("hunyuan")][:2] == ["DDPM", "Euler"]
    edm = {sampler.name: sampler.schedules for sampler in samplers.a1111_samplers("sdxl", EDM)}
    assert edm == {"DPM++ 2M": ("Automatic", "Karras"), "Euler": ("Karras",)}  # EDM's names are A1111's on Karras
    models = [(family, None) for family in samplers.FAMILY_SAMPLERS] + [("sdxl", EDM)]
    for family, fixed in models:  # each listed name on each schedule listed is one of the model's samplers, and
        offered = samplers.choices(family, fixed)  # together they reach every sampler it has
        listed = samplers.a1111_samplers(family, fixed)
        assert not any(sampler.name.endswith("Karras") for sampler in listed), family
        reached = {samplers.from_a1111(sampler.name, schedule, offered) for sampler in listed
                   for schedule in sampler.schedules}
        assert reached == set(offered), (family, fixed)


def test_the_model_own_scheduler_is_named():
    assert samplers.name_of("EulerDiscreteScheduler", {"use_karras_sigmas": False}, "sdxl") == "Euler"
    assert samplers.name_of("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "pixart") == "DPM++ 2M Karras"
    assert samplers.name_of("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "flux") == "Euler"
    assert samplers.name_of("DDPMWuerstchenScheduler", {}, "cascade") == "DDPM"


def test_catalog_refuses_a_sampler_the_model_cannot_take():
    catalog = load_catalog()
    spec = catalog.get("flux-schnell")
    with pytest.raises(InvalidRequest) as caught:
        spec.check(GenerationRequest(prompt="x", sampler="DPM++ 2M Karras"))
    assert caught.value.field == "sampler"
    assert "flux-schnell" in caught.value.message and "Euler, Euler Karras, Euler a" in caught.value.message
    resolved = catalog.get("sdxl-base").check(GenerationRequest(prompt="x", sampler="euler A"))
    assert resolved.sampler == "Euler a"
    assert catalog.get("sdxl-base").check(GenerationRequest(prompt="x")).sampler is None  # the model's own
    assert "Euler a" in catalog.get("sdxl-base").listing()["samplers"]


def test_metadata_writes_sampler_and_schedule_type_as_a1111():
    request = load_catalog().get("sdxl-base").check(GenerationRequest(prompt="x", seed=1, sampler="DPM++ 2M Karras"))
    text = pngmeta.parameters_text(request, 1, "SDXL")
    assert f"Steps: {request.steps}, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale:" in text
    assert "Sampler: Euler a, CFG" in pngmeta.parameters_text(request.model_copy(update={"sampler": "Euler a"}), 1, "x")
    plain = pngmeta.parameters_text(request.model_copy(update={"sampler": "DPM++ 2M"}), 1, "x")
    assert "Sampler: DPM++ 2M, Schedule type: Uniform, CFG" in plain


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# FLUX's Euler a and SDXL's DPM++ SDE draw noise at every step: the pipeline passes FLUX's scheduler no
# generator, and DPM++ SDE seeds its Brownian noise itself; both must still follow the request's seed.
@pytest.mark.parametrize("model_id,sampler", [("sdxl-base", "DPM++ SDE Karras"), ("flux-schnell", "Euler a")])
def test_a_sampler_runs_for_its_job_only_and_follows_the_seed(tiny_catalog, model_id, sampler):
    from studio.engine import Engine

    spec = tiny_catalog(model_id).get(model_id)
    engine, fresh = Engine("cpu"), Engine("cpu")

    def run(on: Engine, name: str | None):
        return on.run(spec, spec.check(GenerationRequest(prompt="a red fox", seed=3, steps=2, sampler=name)))

    swapped = run(engine, sampler)
    original = engine.pipe.scheduler
    default = run(engine, None)
    assert default.images == run(fresh, None).images  # the model's own scheduler again, as on a fresh worker
    assert engine.pipe.scheduler is original and engine.loads == 1  # put back, no reload
    assert not np.array_equal(pixels(swapped.images[0]), pixels(default.images[0]))
    assert run(engine, sampler).images == swapped.images  # the same seed, the same image
    assert swapped.request.sampler == sampler and pngmeta.read(swapped.images[0])["sampler"] == sampler
    own = default.request.sampler  # the engine names the model's own scheduler for the metadata
    assert own in spec.samplers and f"Sampler: {samplers.to_a1111(own)[0]}" in pngmeta.read(default.images[0])["parameters"]
    assert run(engine, own).images == default.images  # the metadata's name reproduces the image
