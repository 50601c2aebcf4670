"""Out-of-memory is the studio's problem: under auto a job that runs out of memory is retried once on the
next smaller memory plan (on a CPU: fp8), or with a tiled VAE decode when the decode ran out; the slot keeps
what worked; a 503 only when that fails too. Injected through real workers (tests/faults.py)."""

from __future__ import annotations

import logging

import faults
import pytest
import torch

from studio import families, pngmeta
from studio.config import Settings
from studio.errors import OutOfMemory
from studio.memory import Plan
from studio.schemas import GenerationRequest
from studio.slots import SlotManager
from studio.speed import EngineOptions
from studio.ui.text import slots_html

FLUX, TURBO = "flux-schnell", "sdxl-turbo"
START_S = 120


@pytest.fixture(scope="module")
def catalog(tiny_catalog):
    return tiny_catalog(FLUX, TURBO)


@pytest.fixture(scope="module")
def manager(tiny_models, catalog):
    settings = Settings(devices=["cpu", "cpu"], models_dir=tiny_models(FLUX, TURBO), preload=[FLUX, TURBO],
                        fault_hook="faults:install", job_timeout_s=120)
    manager = SlotManager(settings, catalog)
    manager.start()
    yield manager
    manager.shutdown()


def submit(manager, catalog, model: str, prompt: str, **fields):
    return manager.submit(*catalog.resolve(GenerationRequest(model=model, prompt=prompt, steps=2, **fields)))


def plans(manager) -> dict[int, str | None]:
    return {slot.index: slot.plan for slot in manager.status().slots}


def test_an_out_of_memory_is_retried_once_on_a_smaller_plan_and_the_slot_keeps_it(manager, catalog):
    failing = submit(manager, catalog, FLUX, faults.OOM_ONCE + " a red fox", seed=3)
    others = [submit(manager, catalog, FLUX, f"a lighthouse at dusk {i}") for i in range(3)]  # on both slots
    result = failing.wait(START_S)
    meta = pngmeta.read(result.images[0])
    assert meta["memory_plan"] == "fp8" and "Memory plan: fp8" in meta["parameters"]  # the weights changed
    assert all(job.wait(START_S).images for job in others)  # no other job lost, on either slot
    status = manager.status()
    slot = status.slots[result.slot]
    assert slot.model == FLUX and slot.plan == "fp8"  # /health shows the plan the slot keeps for FLUX
    assert status.as_dict()["slots"][result.slot]["plan"] == "fp8"
    assert f"{slot.device} · {FLUX} (fp8) · " in slots_html(status)  # the UI's slot pill says it too
    assert submit(manager, catalog, TURBO, "a lighthouse").wait(START_S).images
    again = submit(manager, catalog, FLUX, "a red fox", seed=3).wait(START_S)
    if again.slot == result.slot:  # the same slot: the same plan, without a second out-of-memory
        assert pngmeta.read(again.images[0])["memory_plan"] == "fp8"


def test_an_out_of_memory_in_the_decode_is_retried_with_a_tiled_decode(manager, catalog):
    before = plans(manager)
    result = submit(manager, catalog, TURBO, faults.DECODE_OOM_ONCE + " a lighthouse").wait(START_S)
    assert result.images and plans(manager)[result.slot] == before[result.slot] == "full"  # tiles, not a plan
    assert "memory_plan" not in pngmeta.read(result.images[0])


def test_when_the_smaller_plan_fails_too_the_user_gets_a_503_and_the_slot_serves_on(manager, catalog):
    with pytest.raises(OutOfMemory, match="on the full plan and again on the fp8 plan") as caught:
        submit(manager, catalog, TURBO, faults.CUDA_OOM + " a lighthouse").wait(START_S)
    assert caught.value.status == 503
    result = submit(manager, catalog, TURBO, "a lighthouse").wait(START_S)
    assert plans(manager)[result.slot] == "full"  # the plan that did not help was not kept


def test_the_retry_logs_one_line_and_a_named_plan_is_not_retried(catalog, monkeypatch, caplog):
    from studio.engine import Engine

    real_generate, failed = families.generate, []

    def generate_failing_once(pipe, spec, request, on_step):
        if not failed:
            failed.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_generate(pipe, spec, request, on_step)

    monkeypatch.setattr(families, "generate", generate_failing_once)
    spec = catalog.get(FLUX)
    request = spec.check(GenerationRequest(prompt="a red fox", steps=2, seed=1))
    engine = Engine("cpu")
    with caplog.at_level(logging.INFO, logger="studio.engine"):
        assert engine.run(spec, request).images
    lines = [r.getMessage() for r in caplog.records if r.name == "studio.engine" and "out of memory" in r.getMessage()]
    assert lines == [f"{FLUX} on cpu: out of memory on the full plan; retrying once on the fp8 plan"]
    assert engine.plan is Plan.FP8 and engine.kept_plans == {FLUX: Plan.FP8}

    failed.clear()
    named = Engine("cpu", EngineOptions(memory_plan="full"))  # the operator's plan is not second-guessed
    with pytest.raises(OutOfMemory, match="try a smaller size"):
        named.run(spec, request)
    assert named.kept_plans == {}
