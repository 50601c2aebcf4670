"""``studio.bench`` smoke: each CPU measurement runs end to end with minimal repetitions and says
what it should; the GPU path's full-size configs are checked on the meta device (no memory, no GPU)."""

from __future__ import annotations

import json
import tomllib

import pytest

from studio import bench, gpubench


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return bench.build_models(tmp_path_factory.mktemp("bench-models"), [bench.REST_MODEL, bench.SECOND_MODEL])


def test_bench_models_allow_the_step_counts_the_rest_test_needs(models_dir):
    from studio.catalog import OVERRIDE_FILE, load_catalog

    written = tomllib.loads((models_dir / bench.REST_MODEL / OVERRIDE_FILE).read_text())
    assert written["limits"]["max_steps"] == bench.MAX_BENCH_STEPS
    assert written["defaults"]["width"] == 64  # the tiny builder's overrides survive the rewrite
    assert load_catalog(models_dir).get(bench.REST_MODEL).limits.max_steps == bench.MAX_BENCH_STEPS


def test_rest_section_measures_both_sides(models_dir):
    result = bench.bench_rest(models_dir, repeats=2, job_s=0.02)
    assert len(result["bare_s"]) == len(result["rest_s"]) == 2
    assert result["steps"] >= 1
    assert result["ratio"] > 0.5  # the REST path runs the same job: never much faster than it


def test_swap_section_serves_swaps_from_the_cache(models_dir):
    result = bench.bench_swap(models_dir, repeats=1)
    assert (result["cache_hits"], result["cache_disk_loads"], result["cold_disk_loads"]) == (2, 2, 4)
    assert result["cache_median_s"] < result["cold_median_s"]


def test_round_robin_reloads_where_routing_would_not(models_dir):
    from studio.catalog import load_catalog
    from studio.schemas import GenerationRequest

    catalog = load_catalog(models_dir)
    a, b = catalog.get(bench.REST_MODEL), catalog.get(bench.SECOND_MODEL)
    jobs = [(spec, spec.check(GenerationRequest(prompt="x", seed=0))) for spec in (a, a, b, b)]
    # Engines warm with a and b; round-robin sends a to the b engine and b to the a engine.
    assert bench.round_robin(catalog, [a, b], jobs)["loads"] == 3
    assert bench.workload(8, ("x", "y")) == bench.workload(8, ("x", "y"))


def test_batch_section_and_table(models_dir, tmp_path):
    results = {"batch": bench.bench_batch(models_dir, repeats=1, n=2)}
    assert results["batch"]["n"] == 2 and results["batch"]["batch_images_per_s"] > 0
    rows = bench.cpu_rows(results)
    assert len(rows) == 1 and rows[0][0].startswith("images/s, n=2")
    text = bench.table(("what", "ours", "baseline", "ratio"), rows)
    assert text.splitlines()[1] == "|---|---|---|---|"
    json.dumps(results)  # what --json writes


def test_lora_section_measures_the_switch_the_load_and_the_steps(models_dir):
    result = bench.bench_lora(models_dir, repeats=1, steps=3, size=64)
    assert len(result["switch_s"]) == 2 and len(result["load_s"]) == 1 and len(result["reload_s"]) == 2
    assert result["switch_median_s"] < result["reload_median_s"]  # a kept adapter is no reload
    rows = bench.cpu_rows({"lora": result})
    assert [row[0].split(", s")[0].split(" (flux")[0] for row in rows] == [
        "LoRA switch on a warm slot (adapters kept) vs base model reload from disk",
        "LoRA first load into a warm slot vs base model reload from disk",
        "s per step, one active LoRA vs none"]
    json.dumps(result)


@pytest.mark.parametrize(
    "model_id, expected",
    [
        # Parameter counts of the real checkpoints, in billions.
        ("sdxl-base", {"unet": 2.567, "text_encoder": 0.123, "text_encoder_2": 0.695, "vae": 0.0837}),
        ("flux-dev", {"transformer": 11.90, "text_encoder": 0.123, "text_encoder_2": 4.762, "vae": 0.0838}),
        ("pixart-sigma", {"transformer": 0.611, "text_encoder": 4.762, "vae": 0.0837}),
    ],
)
def test_full_size_configs_have_the_real_parameter_counts(model_id, expected):
    import torch

    from studio.catalog import load_catalog

    spec = load_catalog().get(model_id)
    pipe = gpubench.full_size_pipeline(spec, "meta")
    for name, billions in expected.items():
        module = getattr(pipe, name)
        assert sum(p.numel() for p in module.parameters()) / 1e9 == pytest.approx(billions, rel=0.002), name
        assert {p.dtype for p in module.parameters()} == {getattr(torch, spec.dtype)}, name  # built in half precision
    assert torch.get_default_dtype() == torch.float32  # and the default is restored


@pytest.mark.parametrize("model_id", ["sdxl-base", "flux-dev", "pixart-sigma"])
def test_the_catalogs_weight_sizes_are_the_real_architectures_at_two_bytes_a_parameter(model_id):
    from studio.catalog import load_catalog

    spec = load_catalog().get(model_id)
    pipe = gpubench.full_size_pipeline(spec, "meta")
    for name, size in spec.catalog_weights().components:
        parameters = sum(p.numel() for p in getattr(pipe, name).parameters())
        assert size == pytest.approx(parameters * 2, rel=0.03), name


def test_the_memory_plan_bench_needs_cuda_and_tables_each_plan():
    if not __import__("torch").cuda.is_available():
        with pytest.raises(SystemExit, match="--gpu --memory-plan needs a CUDA device"):
            bench.main(["--gpu", "--memory-plan", "all", "--model", "flux-dev"])
    results = {"model": "flux-dev", "size": "1024x1024", "steps": 28, "gpu_memory_gb": 16.0, "plans": [
        {"wanted": "auto", "plan": "fp8", "reason": "", "median_s": 9.5, "peak_memory_gb": 14.2, "load_s": 40.0},
        {"wanted": "full", "plan": "full", "reason": "", "out_of_memory": "CUDA out of memory", "peak_memory_gb": 15.9,
         "load_s": 3.0},
        {"wanted": "group-offload", "plan": None, "reason": "needs 70 GB of host RAM"},
    ]}
    rows = gpubench.memory_rows(results)
    assert rows[0] == ("flux-dev 1024x1024, 28 steps, --gpu-memory-gb 16: auto -> fp8", "9.50", "14.2", "40.0")
    assert rows[1][0].endswith("full: out of memory") and rows[2][0].endswith("(needs 70 GB of host RAM)")
