"""``python -m studio.bench``: how fast the studio is, measured the way users run it.

On any machine (CPU is enough), with tiny models it builds itself in a temporary folder:

  rest     REST end to end (the real app under uvicorn, one CPU slot, httpx) versus a bare pipeline call of the
           same request in this process; tiny FLUX.1 [schnell], steps so the bare call takes ``--job-s``; medians
  routing  a mixed two-model burst on two CPU slots: model loads after warm-up with the slot manager's
           routing versus round-robin (two Engines fed jobs alternately, the workers' load-and-run code)
  swap, batch  a model swap from the Engine's RAM cache vs from disk; images/s of n=4 in one call vs 4 calls
  lora     a LoRA switch on a warm slot vs a base model reload; per-step cost with one LoRA (studio.lorabench)
  admission  Retry-After's honesty: for each queue-full refusal on two CPU slots (--max-queue 1, no waiting
           room, two models mixed), its Retry-After over the time until a place really freed (1.0: exact)
  fairness  a second owner's wait behind another's 20-job flood, fair share on and off (studio.fairbench)
  batching  8 clients' jobs at once: throughput, latency, --batch-window-ms 100 vs none (studio.batchbench)

``--gpu --model ID`` on CUDA builds the full-size model from its real configs (random weights, nothing
downloaded): s/image at its default size and steps, our speed options vs bare diffusers (``--memory-plan
all|auto|fp8,...``, ``--gpu-memory-gb N``: s and peak memory per plan). Prints a table; ``--json FILE`` too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

from studio.batchbench import batching_rows, bench_batching
from studio.fairbench import bench_fairness, fairness_row
from studio.lorabench import bench_lora, lora_rows

REST_MODEL = "flux-schnell"  # the catalog's default model
SECOND_MODEL = "pixart-sigma"  # the other half of the mixed workload and of the swaps
REST_SIZE = 128  # small enough that PNG encoding stays a fixed cost, big enough to be an image
PROBE_STEPS = 16
CALIBRATION_ROUNDS = 3
SETTLE_S = 0.02  # pause before each timed call, so the previous call's trailing work is not billed to it
MAX_BENCH_STEPS = 400
PROMPT = "a red fox in fresh snow, golden hour"
STARTUP_TIMEOUT_S = 300.0  # workers import torch and diffusers; slow on two busy cores


# ---------------------------------------------------------------- small helpers


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def build_models(models_dir: Path, ids: list[str]) -> Path:
    """Tiny models in ``models_dir``, with room for the step counts the REST comparison needs."""
    from studio.catalog import OVERRIDE_FILE
    from studio.tiny import build

    build(models_dir, ids)
    for model_id in ids:
        path = models_dir / model_id / OVERRIDE_FILE
        tables = tomllib.loads(path.read_text())
        tables.setdefault("limits", {})["max_steps"] = MAX_BENCH_STEPS
        path.write_text(_toml(tables))
    return models_dir


def _toml(tables: dict) -> str:
    """The override files' shape: top-level scalars, then one level of tables of scalars and lists."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in tables.items() if not isinstance(value, dict)]
    for key, table in tables.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"] + [f"{name} = {json.dumps(value)}" for name, value in table.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free localhost port; yields the base URL."""
    import uvicorn

    # IPPROTO_TCP, not the default 0: asyncio turns on TCP_NODELAY only for sockets that say TCP,
    # and without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start; its error is in the log above")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


# ---------------------------------------------------------------- (a) REST versus a bare call


def bench_rest(models_dir: Path, repeats: int, job_s: float, backend: str = "local") -> dict:
    """Median REST latency over a bare pipeline call of the same request, measured in alternation.
    ``backend="ray"``: the app sends the job to one Ray Serve replica (a local Ray it starts)."""
    import httpx

    from studio import families
    from studio.catalog import load_catalog
    from studio.config import Settings
    from studio.schemas import GenerationRequest
    from studio.server import create_app

    catalog = load_catalog(models_dir)
    spec = catalog.get(REST_MODEL)
    pipe = families.load_pipeline(spec, "cpu")

    def request(steps: int):
        fields = dict(prompt=PROMPT, width=REST_SIZE, height=REST_SIZE, steps=steps, seed=1)
        return spec.check(GenerationRequest(**fields))

    def bare(steps: int) -> float:
        resolved = request(steps)
        time.sleep(SETTLE_S)
        return timed(lambda: families.generate(pipe, spec, resolved, lambda *_: None))

    # Steps scale the job: pick the count that makes the bare call about ``job_s`` (a few rounds,
    # since a fixed per-call cost and a busy machine both throw the first guess off).
    steps = PROBE_STEPS
    bare(steps)
    for _ in range(CALIBRATION_ROUNDS):
        probe = median([bare(steps) for _ in range(3)])
        steps = max(1, min(MAX_BENCH_STEPS, round(steps * job_s / probe)))

    body = {
        "model": REST_MODEL, "prompt": PROMPT, "size": f"{REST_SIZE}x{REST_SIZE}", "steps": steps, "seed": 1,
        "response_format": "b64_json",
    }
    settings = Settings(
        devices=["cpu"], models_dir=models_dir, preload=[REST_MODEL], outputs_dir=models_dir / "outputs",
        backend=backend, replicas=1,
    )
    bare_s, rest_s = [], []
    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:

        def rest() -> float:
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            response = client.post("/v1/images/generations", json=body)
            response.raise_for_status()
            base64.b64decode(response.json()["data"][0]["b64_json"])
            return time.perf_counter() - started

        for _ in range(2):  # warm-up: first calls pay for allocator growth and lazy imports
            bare(steps), rest()
        for index in range(repeats):  # alternate, so a noisy neighbour hits both sides alike
            if index % 2:
                rest_s.append(rest())
                bare_s.append(bare(steps))
            else:
                bare_s.append(bare(steps))
                rest_s.append(rest())
    return {
        "model": REST_MODEL, "size": f"{REST_SIZE}x{REST_SIZE}", "steps": steps, "repeats": repeats,
        "backend": backend, "bare_s": bare_s, "rest_s": rest_s,
        "bare_median_s": median(bare_s), "rest_median_s": median(rest_s),
        "ratio": median(rest_s) / median(bare_s),
    }


# ---------------------------------------------------------------- (b) routing versus round-robin


def workload(jobs: int, models: tuple[str, str], seed: int = 0) -> list[str]:
    """A reproducible random mix of the two models."""
    rng = random.Random(seed)
    return [rng.choice(models) for _ in range(jobs)]


def bench_routing(models_dir: Path, jobs: int) -> dict:
    """Loads after warm-up for a burst of mixed jobs: our slot manager versus round-robin."""
    from studio.catalog import load_catalog
    from studio.config import Settings
    from studio.schemas import GenerationRequest
    from studio.devices import preload_plan
    from studio.slots import SlotManager

    catalog = load_catalog(models_dir)
    models = (REST_MODEL, SECOND_MODEL)
    order = workload(jobs, models)
    requests = [(catalog.get(m), catalog.get(m).check(GenerationRequest(prompt=PROMPT, seed=i))) for i, m in enumerate(order)]

    settings = Settings(devices=["cpu", "cpu"], models_dir=models_dir, preload=list(models), max_queue=jobs)
    manager = SlotManager(settings, catalog)
    manager.start()
    try:
        before = sum(slot.loads for slot in manager.status().slots)
        started = time.perf_counter()
        submitted = [manager.submit(spec, request) for spec, request in requests]
        results = [job.wait(timeout=600) for job in submitted]
        ours_s = time.perf_counter() - started
        ours_loads = sum(slot.loads for slot in manager.status().slots) - before
    finally:
        manager.shutdown()

    plan = preload_plan(list(models), 2)
    rr = round_robin(catalog, [catalog.get(ids[0]) for ids in plan], requests)
    return {
        "jobs": jobs, "models": list(models), "order": order,
        "ours_loads": ours_loads, "ours_wall_s": ours_s,
        "ours_jobs_per_slot": [sum(1 for r in results if r.slot == index) for index in range(2)],
        "round_robin_loads": rr["loads"], "round_robin_load_s": rr["load_s"],
    }


def round_robin(catalog, preload: list, requests: list) -> dict:
    """Job i on Engine i % n, each Engine warm with its preload first (as the slots start)."""
    from studio.engine import Engine

    engines = [Engine("cpu") for _ in preload]
    for engine, spec in zip(engines, preload):
        engine.ensure(spec)
    before = sum(engine.loads for engine in engines)
    load_s = 0.0
    for index, (spec, request) in enumerate(requests):
        engine = engines[index % len(engines)]
        load_s += timed(lambda: engine.ensure(spec))
        engine.run(spec, request)
    return {"loads": sum(engine.loads for engine in engines) - before, "load_s": load_s}


# ---------------------------------------------------------------- (c) RAM cache versus disk


def bench_admission(models_dir: Path, rounds: int) -> dict:
    """Retry-After against the truth: fill the queue, take a refusal, time until a place frees."""
    from studio.catalog import load_catalog
    from studio.config import Settings
    from studio.errors import QueueFull
    from studio.schemas import GenerationRequest
    from studio.slots import SlotManager

    catalog = load_catalog(models_dir)
    models = (REST_MODEL, SECOND_MODEL)
    settings = Settings(devices=["cpu", "cpu"], models_dir=models_dir, preload=list(models), max_queue=1,
                        queue_wait_s=0)
    manager = SlotManager(settings, catalog)
    manager.start()
    samples, jobs = [], []
    rng = random.Random(0)

    def backlog() -> int:
        status = manager.status()
        return status.queue_depth - sum(1 for slot in status.slots if slot.alive and not slot.busy)

    try:
        while len(samples) < rounds:
            spec = catalog.get(rng.choice(models))
            side = rng.choice((512, 768))  # jobs of about a second or more: Retry-After counts whole seconds
            request = spec.check(GenerationRequest(prompt=PROMPT, seed=len(jobs), steps=rng.choice((16, 32, 48)),
                                                   width=side, height=side))
            try:
                jobs.append(manager.submit(spec, request))
                continue
            except QueueFull as full:
                refused_at = time.perf_counter()
                while backlog() >= settings.max_queue:
                    time.sleep(0.01)
                samples.append({"retry_after_s": full.retry_after_s, "freed_after_s": time.perf_counter() - refused_at})
        for job in jobs:
            job.wait(timeout=600)
    finally:
        manager.shutdown()
    ratios = [sample["retry_after_s"] / max(sample["freed_after_s"], 0.01) for sample in samples]
    return {"rounds": rounds, "samples": samples, "ratio_median": median(ratios),
            "ratio_p10": sorted(ratios)[len(ratios) // 10], "ratio_p90": sorted(ratios)[len(ratios) * 9 // 10],
            "freed_median_s": median([sample["freed_after_s"] for sample in samples]),
            "error_median_s": median([abs(sample["retry_after_s"] - sample["freed_after_s"]) for sample in samples])}


def bench_swap(models_dir: Path, repeats: int) -> dict:
    """Seconds per model swap (A <-> B), from the Engine's RAM cache and cold from disk."""
    from studio.catalog import load_catalog
    from studio.engine import Engine
    from studio.speed import EngineOptions

    catalog = load_catalog(models_dir)
    a, b = catalog.get(REST_MODEL), catalog.get(SECOND_MODEL)

    def swaps(engine) -> list[float]:
        engine.ensure(a), engine.ensure(b)  # both read once (and, with a cache, parked)
        return [timed(lambda spec=spec: engine.ensure(spec)) for spec in [a, b] * repeats]

    cached = Engine("cpu", EngineOptions(ram_cache_gb=1.0))
    cache_s = swaps(cached)
    cold = Engine("cpu")
    cold_s = swaps(cold)
    return {
        "models": [a.id, b.id], "swaps": 2 * repeats,
        "cache_s": cache_s, "cold_s": cold_s,
        "cache_median_s": median(cache_s), "cold_median_s": median(cold_s),
        "cache_hits": cached.cache_hits, "cache_disk_loads": cached.loads, "cold_disk_loads": cold.loads,
    }


# ---------------------------------------------------------------- (d) one batch versus n calls


def bench_batch(models_dir: Path, repeats: int, n: int = 4) -> dict:
    """Images per second: ``n`` images in one call versus ``n`` calls of one image."""
    from studio.catalog import load_catalog
    from studio.engine import Engine
    from studio.schemas import GenerationRequest

    spec = load_catalog(models_dir).get(REST_MODEL)
    engine = Engine("cpu")
    # The REST test's image size and the probe's steps: enough work per image that the per-call
    # costs (prompt encoding, scheduler set-up) do not dominate as they do at the tiny defaults.
    shape = dict(prompt=PROMPT, width=REST_SIZE, height=REST_SIZE, steps=PROBE_STEPS)
    batch = spec.check(GenerationRequest(**shape, seed=1, num_images=n))
    singles = [spec.check(GenerationRequest(**shape, seed=1 + i)) for i in range(n)]
    engine.run(spec, batch), engine.run(spec, singles[0])  # load and warm up
    batch_s, singles_s = [], []
    for _ in range(repeats):
        batch_s.append(timed(lambda: engine.run(spec, batch)))
        singles_s.append(timed(lambda: [engine.run(spec, request) for request in singles]))
    return {
        "model": spec.id, "n": n, "size": f"{batch.width}x{batch.height}", "steps": batch.steps,
        "batch_s": batch_s, "singles_s": singles_s,
        "batch_images_per_s": n / median(batch_s), "singles_images_per_s": n / median(singles_s),
    }


# ---------------------------------------------------------------- the CPU run


def cpu_bench(repeats: int, jobs: int, job_s: float, sections: list[str], backend: str = "local") -> dict:
    import torch

    from studio.devices import cpu_threads

    torch.set_num_threads(cpu_threads(1))  # what a one-slot worker uses: the bare call gets the same
    results: dict = {"machine": machine(), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="studio-bench-") as tmp:
        models_dir = build_models(Path(tmp), [REST_MODEL, SECOND_MODEL])
        runs = {
            "rest": lambda: bench_rest(models_dir, repeats, job_s, backend),
            "routing": lambda: bench_routing(models_dir, jobs),
            "swap": lambda: bench_swap(models_dir, repeats),
            "batch": lambda: bench_batch(models_dir, max(3, repeats // 3)),
            "admission": lambda: bench_admission(models_dir, max(10, repeats)),
            "lora": lambda: bench_lora(models_dir, repeats),
            "fairness": lambda: bench_fairness(models_dir, REST_MODEL, PROMPT, backend=backend),
            "batching": lambda: bench_batching(models_dir, PROMPT),
        }
        for name in sections:
            started = time.perf_counter()
            results[name] = runs[name]()
            results[name]["section_s"] = time.perf_counter() - started
    return results


def machine() -> dict:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"date": datetime.date.today().isoformat(), "platform": platform.platform(), "cpu_cores": cores,
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


Row = tuple[str, str, str, str]  # what, ours, baseline, ours / baseline


def _rest_row(r: dict) -> Row:
    backend = f"; {r['backend']} backend" if r.get("backend", "local") != "local" else ""
    what = f"REST end to end vs bare pipeline call, s (median of {r['repeats']}; {r['model']} {r['size']}, "
    return (what + f"{r['steps']} steps{backend})",
            f"{r['rest_median_s']:.3f}", f"{r['bare_median_s']:.3f}", f"{r['ratio']:.3f}")


def _routing_row(r: dict) -> Row:
    what = f"model loads after warm-up, {r['jobs']} mixed jobs, 2 models on 2 slots: routing vs round-robin"
    return what, str(r["ours_loads"]), str(r["round_robin_loads"]), ""


def _swap_row(r: dict) -> Row:
    cache, cold = r["cache_median_s"], r["cold_median_s"]
    what = f"model swap, s (median of {r['swaps']}): RAM cache vs cold load from disk"
    return what, f"{cache:.5f}", f"{cold:.3f}", f"{cache / cold:.4f}"


def _batch_row(r: dict) -> Row:
    batch, singles = r["batch_images_per_s"], r["singles_images_per_s"]
    what = f"images/s, n={r['n']} in one call vs {r['n']} calls ({r['model']} {r['size']}, {r['steps']} steps)"
    return what, f"{batch:.1f}", f"{singles:.1f}", f"{batch / singles:.2f}"


def _admission_row(r: dict) -> Row:
    what = (f"Retry-After / time until a place freed ({r['rounds']} refusals, 2 models on 2 slots, "
            f"places freed after {r['freed_median_s']:.1f} s median, off by {r['error_median_s']:.1f} s median; "
            f"ratio p10-p90 {r['ratio_p10']:.2f}-{r['ratio_p90']:.2f})")
    return what, f"{r['ratio_median']:.2f}", "1.00", ""


# Each CPU section's rows, in the table's order.
CPU_ROWS = dict(rest=_rest_row, routing=_routing_row, swap=_swap_row, batch=_batch_row, admission=_admission_row,
                lora=lora_rows, fairness=fairness_row, batching=batching_rows)


def cpu_rows(results: dict) -> list[Row]:
    """(what, ours, baseline, ours / baseline) for each section that ran."""
    rows = [row(results[name]) for name, row in CPU_ROWS.items() if name in results]  # some give a list
    return [line for row in rows for line in (row if isinstance(row, list) else [row])]


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table (it reads fine in a terminal and pastes into the README)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def quiet() -> None:
    """Only the table: no library warnings or loading bars, here or in the workers (which inherit the
    environment). The bench builds its models offline; nothing downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Writing model shards" while building
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # import-time notices, e.g. "requires torchvision"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.ERROR)
    from studio import terminal

    terminal.quiet_libraries()
    from huggingface_hub.utils import disable_progress_bars
    disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write every sample to this JSON file")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement (after warm-up)")
    parser.add_argument("--jobs", type=int, default=16, help="jobs in the mixed two-model workload")
    parser.add_argument("--job-s", type=float, default=0.2, help="target seconds of the bare call in the REST test")
    parser.add_argument("--only", default="rest,routing,swap,batch",
                        help="comma list of CPU sections (also: admission, lora, fairness, batching)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="the backend of the rest and fairness sections (ray: a local Ray, one replica)")
    parser.add_argument("--gpu", action="store_true", help="full-size random-weight model on CUDA")
    parser.add_argument("--model", default=REST_MODEL, help="with --gpu: the catalog id to build")
    parser.add_argument("--compile", action="store_true", help="with --gpu: include torch.compile in ours")
    parser.add_argument("--step-cache", action="store_true", help="with --gpu: include the first-block cache")
    parser.add_argument("--memory-plan", help="with --gpu: seconds and peak memory per plan (comma list; all; auto)")
    parser.add_argument("--gpu-memory-gb", type=float, help="with --gpu --memory-plan: cap the GPU at this many GiB")
    args = parser.parse_args(argv)
    quiet()

    if args.gpu:
        from studio.gpubench import gpu_section

        results, header, rows = gpu_section(args)
    else:
        sections = [name.strip() for name in args.only.split(",") if name.strip()]
        results = cpu_bench(args.repeats, args.jobs, args.job_s, sections, args.backend)
        header = ("what", "ours", "baseline", "ours / baseline")
        rows = cpu_rows(results)
    info = results["machine"]
    print(f"{info['date']}, {info['platform']}, {info['cpu_cores']} CPU cores, torch {info['torch']}"
          + (f", {info['cuda']}" if info["cuda"] else f", {results.get('threads')} torch threads"))
    print(table(header, rows))
    if args.json:
        command = " ".join(["python -m studio.bench"] + (sys.argv[1:] if argv is None else argv))
        args.json.write_text(json.dumps({"command": command, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
