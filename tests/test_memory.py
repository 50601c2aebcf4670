"""The memory plan as a pure function: the 15 catalog models on 80, 48, 24, 16 and 12 GB cards."""

from __future__ import annotations

import pytest

from studio import memory, weights
from studio.catalog import load_catalog
from studio.memory import GB, GIB, Device, Plan, Weights

CATALOG = load_catalog()
FULL, ENC, FP8, GROUP = Plan.FULL, Plan.OFFLOAD_ENCODERS, Plan.FP8, Plan.GROUP_OFFLOAD
SDXL = {80: FULL, 48: FULL, 24: FULL, 16: FULL, 12: FULL}
FLUX = {80: FULL, 48: FULL, 24: FP8, 16: FP8, 12: GROUP}
# What auto picks at each model's default size, one image, 64 GB of RAM: the README's table.
EXPECTED = {
    "flux-dev": FLUX, "flux-schnell": FLUX,
    "chroma": {80: FULL, 48: FULL, 24: ENC, 16: FP8, 12: GROUP},
    "pixart-sigma": {80: FULL, 48: FULL, 24: FULL, 16: FULL, 12: ENC},
    "stable-cascade": {80: FULL, 48: FULL, 24: FULL, 16: FULL, 12: GROUP},  # no fp8: see its family record's fp8_unfit
    "sana-1.5": SDXL, "hunyuan-dit": SDXL, "lumina-next": SDXL,
    **{model: SDXL for model in ("playground-v2.5", "animagine-xl-4", "dreamshaper-xl", "juggernaut-xl-9",
                                 "realvis-xl-4", "sdxl-base", "sdxl-turbo")},
}


def flux() -> Weights:
    return CATALOG.get("flux-dev").catalog_weights()


def test_the_table_covers_the_catalog():
    assert set(EXPECTED) == {spec.id for spec in CATALOG} and len(EXPECTED) == 15


@pytest.mark.parametrize("model", sorted(EXPECTED))
@pytest.mark.parametrize("card", memory.CARDS_GB)
def test_auto_takes_the_first_plan_that_fits(model, card):
    spec = CATALOG.get(model)
    sizes = spec.catalog_weights()
    plans = memory.plans_for(spec.family)
    choice = memory.choose(sizes, memory.card(card), spec.defaults.width, spec.defaults.height, plans=plans)
    assert choice.plan == EXPECTED[model][card], choice.reason
    device = memory.card(card)
    assert choice.need.device <= device.free and choice.need.host <= device.host_ram
    # Every plan before it would not have fitted: auto takes the first that fits, not any that fits.
    for earlier in plans[: plans.index(choice.plan)]:
        assert memory.need(earlier, sizes, spec.defaults.width, spec.defaults.height).device > device.free


def test_the_needs_shrink_plan_by_plan_and_the_files_sizes_are_the_real_ones():
    sizes = flux()
    assert dict(sizes.components) == {"transformer": 23_800_000_000, "text_encoder": 250_000_000,
                                      "text_encoder_2": 9_520_000_000, "vae": 170_000_000}
    needs = [memory.need(plan, sizes, 1024, 1024).device for plan in memory.PLANS]
    assert needs == sorted(needs, reverse=True) and len(set(needs)) == len(needs)
    full = memory.need(FULL, sizes, 1024, 1024)
    assert full.device == sizes.total + memory.activation_bytes(1024, 1024) and full.host == 0
    fp8 = memory.need(FP8, sizes, 1024, 1024)
    assert fp8.device < full.device - 11.9 * GB  # the transformer at one byte a weight, T5 streamed


def test_a_bigger_image_or_batch_needs_more_headroom_and_can_change_the_plan():
    sizes = flux()
    assert memory.activation_bytes(2048, 2048) > memory.activation_bytes(1024, 1024, batch=2) > \
        memory.activation_bytes(1024, 1024)
    small = memory.choose(sizes, memory.card(16), 512, 512)
    big = memory.choose(sizes, memory.card(16), 1536, 1536, batch=2)
    assert small.plan == FP8 and memory.PLANS.index(big.plan) > memory.PLANS.index(FP8)


def test_never_a_plan_that_needs_more_host_ram_than_the_machine_has():
    sizes = flux()
    # 16 GB of RAM: fp8 (casts the bf16 transformer in RAM) and the streaming plans cannot be used.
    device = Device("cuda", 20 * GIB, 16 * GIB)
    choice = memory.choose(sizes, device, 1024, 1024)
    assert choice.plan is None
    assert "host RAM" in choice.reason and "this machine has 17.2 GB" in choice.reason
    # With the RAM, the same card takes fp8.
    assert memory.choose(sizes, Device("cuda", 20 * GIB, 64 * GIB), 1024, 1024).plan == FP8
    # A named plan is refused the same way, in words.
    named = memory.choose(sizes, device, 1024, 1024, wanted="sequential")
    assert named.plan is None and "sequential needs 33.7 GB of host RAM" in named.reason


def test_no_plan_fits_says_how_much_the_smallest_needs():
    choice = memory.choose(flux(), Device("cuda", GIB, 64 * GIB), 1024, 1024)
    assert choice.plan is None and "no plan fits: even sequential needs" in choice.reason


def test_on_a_cpu_auto_is_full_and_the_streaming_plans_say_they_need_cuda():
    cpu = Device("cpu", 8 * GIB, 8 * GIB)
    assert memory.choose(flux(), cpu, 64, 64).plan == FULL
    assert memory.choose(flux(), cpu, 64, 64, wanted="offload-encoders").plan == ENC
    for plan in memory.GPU_ONLY:
        choice = memory.choose(flux(), cpu, 64, 64, wanted=plan)
        assert choice.plan is None and "CUDA devices only" in choice.reason


def test_the_retry_plan_is_the_next_smaller_one_and_none_after_the_last():
    assert [memory.next_plan(plan, "cuda") for plan in memory.PLANS] == [*memory.PLANS[1:], None]
    assert memory.next_plan(ENC, "cuda", memory.plans_for("cascade")) is GROUP  # Stable Cascade has no fp8
    assert memory.next_plan(FULL, "cpu") is FP8 and memory.next_plan(FP8, "cpu") is None  # on a CPU fp8 alone


def test_the_listing_shows_the_bf16_size_and_the_smallest_plans_need():
    listed = CATALOG.get("flux-dev").memory()
    assert listed["weights"] == 33.7 and listed["components"]["transformer"] == 23.8
    assert listed["source"] == "catalog estimate" and listed["smallest_plan"] == "sequential"
    assert listed["smallest"] == listed["plans"]["sequential"] < listed["plans"]["fp8"] < listed["studio"]


def test_sizes_come_from_the_files_on_disk(tiny_catalog):
    spec = tiny_catalog("flux-schnell").get("flux-schnell")
    measured = weights.measure(spec)
    assert measured.source == "files on disk"
    names = dict(measured.components)
    assert {"transformer", "text_encoder", "text_encoder_2", "vae"} <= set(names)
    assert all(0 < size < 10 * 2**20 for size in names.values())  # a tiny model: the files', not the catalog's


def test_the_table_command_prints_every_model(capsys):
    assert memory.main(["--table"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == 15 and "| flux-dev | 33.7 GB (estimate) | full | full | fp8 | fp8 | group-offload |" in out
