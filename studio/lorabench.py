"""``python -m studio.bench --only lora``: what a LoRA costs on a warm slot, in one run, as ratios.

- a switch between two LoRAs the slot keeps loaded (what a job with another LoRA pays), and a first
  load of a LoRA file into the warm pipeline, each against reloading the base model from disk (what a
  studio without per-job adapters would pay to change its weights);
- the time per denoising step with one active LoRA against none, on the same warm pipeline.

Runs the Engine in this process, as the CPU sections of ``studio.bench`` do (tiny FLUX.1 [schnell] and
its tiny kohya and diffusers-format LoRAs, built by ``studio.tiny``).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

MODEL = "flux-schnell"
SIZE = 128
STEPS = 16


def bench_lora(models_dir: Path, repeats: int, steps: int = STEPS, size: int = SIZE) -> dict:
    from studio.bench import median, timed  # bench imports this module first
    from studio.catalog import load_catalog
    from studio.engine import Engine
    from studio.schemas import GenerationRequest
    from studio.tiny.lora import build_loras

    build_loras(models_dir)
    catalog = load_catalog(models_dir, lora_dir=models_dir / "loras")

    def request(*loras: str):
        return catalog.resolve(GenerationRequest(model=MODEL, prompt="a red fox", width=size, height=size,
                                                 steps=steps, seed=1, loras=list(loras)))

    (spec, plain), (_, first), (_, second) = request(), request("tiny-flux-kohya"), request("tiny-flux-diffusers")
    engine = Engine("cpu")
    engine.run(spec, first), engine.run(spec, second), engine.run(spec, plain)  # load, warm, both adapters kept
    switch_s = [timed(lambda job=job: engine.loras.apply(engine.pipe, job.loras)) for job in [first, second] * repeats]
    load_s = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "Adapter ... was active which is now deleted"
        for _ in range(repeats):
            engine.pipe.delete_adapters(engine.loras._held[engine.pipe].pop(first.loras[0]._path))
            load_s.append(timed(lambda: engine.loras.apply(engine.pipe, first.loras)))
    reload_s = []
    for _ in range(max(2, repeats // 2)):
        engine.unload()
        reload_s.append(timed(lambda: engine.ensure(spec)))
    engine.run(spec, plain)
    base_step, lora_step = [], []
    for _ in range(max(2, repeats // 2)):  # interleaved, so drift on a shared machine hits both alike
        base_step.append(per_step_s(engine, spec, plain))
        lora_step.append(per_step_s(engine, spec, first))
    return {
        "model": spec.id, "size": f"{size}x{size}", "steps": steps, "repeats": repeats,
        "switch_s": switch_s, "load_s": load_s, "reload_s": reload_s, "base_step_s": base_step,
        "lora_step_s": lora_step, "switch_median_s": median(switch_s), "load_median_s": median(load_s),
        "reload_median_s": median(reload_s), "base_step_median_s": median(base_step),
        "lora_step_median_s": median(lora_step),
    }


def per_step_s(engine, spec, request) -> float:
    """The median time between denoising steps of one run (the first step, which encodes the prompt, aside)."""
    from studio.bench import median

    stamps: list[float] = []
    engine.run(spec, request, on_step=lambda step, total: stamps.append(time.perf_counter()))
    return median([later - earlier for earlier, later in zip(stamps[1:], stamps[2:])])


def lora_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(what, ours, baseline, ours / baseline): the switch, the first load, the per-step cost."""
    reload_s, where = r["reload_median_s"], f"{r['model']} {r['size']}, median of {r['repeats']}"
    return [
        (f"LoRA switch on a warm slot (adapters kept) vs base model reload from disk, s ({where})",
         f"{r['switch_median_s']:.4f}", f"{reload_s:.3f}", f"{r['switch_median_s'] / reload_s:.4f}"),
        (f"LoRA first load into a warm slot vs base model reload from disk, s ({where})",
         f"{r['load_median_s']:.4f}", f"{reload_s:.3f}", f"{r['load_median_s'] / reload_s:.4f}"),
        (f"s per step, one active LoRA vs none ({where}, {r['steps']} steps)",
         f"{r['lora_step_median_s']:.4f}", f"{r['base_step_median_s']:.4f}",
         f"{r['lora_step_median_s'] / r['base_step_median_s']:.3f}"),
    ]
