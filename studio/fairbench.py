"""``python -m studio.bench --only fairness``: how long a second owner waits behind another's flood.

One CPU slot (``backend="ray"``: one Ray Serve replica, on a local Ray it starts) and a tiny model
whose steps are chosen so that one job takes about ``job_s`` seconds.
One owner submits ``flood`` jobs at once; half a second later a second owner submits one job. The
second owner's wait (from its submission to its job's start) is measured in units of one job's time
(the median of the flood's own jobs, from start to end), with fair share on and off, in one run.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

LATE_AFTER_S = 0.5
CALIBRATION_STEPS = 8
MAX_STEPS = 200


def bench_fairness(models_dir: Path, model: str, prompt: str, flood: int = 20, job_s: float = 1.0,
                   backend: str = "local") -> dict:
    from studio.catalog import load_catalog
    from studio.config import Settings
    from studio.fairshare import FairShare
    from studio.schemas import GenerationRequest

    catalog = load_catalog(models_dir)
    spec = catalog.get(model)
    settings = Settings(devices=["cpu"], models_dir=models_dir, preload=[spec.id], max_queue=flood + 4,
                        backend=backend, replicas=1)
    if backend == "ray":
        from studio.ray_backend import RayBackend

        manager = RayBackend(settings, catalog)
        turns = manager.queue.turns  # fair share in the app, in front of Serve
    else:
        from studio.slots import SlotManager

        manager = SlotManager(settings, catalog)
        turns = manager.turns
    manager.start()

    def request(steps: int, seed: int):
        return spec.check(GenerationRequest(prompt=prompt, steps=steps, seed=seed, width=64, height=64))

    try:
        manager.submit(spec, request(CALIBRATION_STEPS, 0)).wait(600)  # warm, then calibrate
        short_s, long_s = (timed_job(manager, spec, request(steps, 1)) for steps in (1, CALIBRATION_STEPS + 1))
        per_step = max(1e-3, (long_s - short_s) / CALIBRATION_STEPS)  # a job's fixed costs left out
        steps = max(1, min(MAX_STEPS, round(1 + (job_s - short_s) / per_step)))
        runs = {}
        for fair in (True, False):
            settings.fair_share = fair
            turns.fair = FairShare(settings.shares)  # each run starts with no service on record
            runs["on" if fair else "off"] = flood_and_one(manager, lambda seed: request(steps, seed), spec, flood)
    finally:
        manager.shutdown()
    return {"model": spec.id, "steps": steps, "flood": flood, "late_after_s": LATE_AFTER_S, "backend": backend, **{
        f"{name}_{key}": value for name, run in runs.items() for key, value in run.items()}}


def timed_job(manager, spec, request) -> float:
    started = time.perf_counter()
    manager.submit(spec, request).wait(600)
    return time.perf_counter() - started


def flood_and_one(manager, request, spec, flood: int) -> dict:
    """The flood, then one job of another owner; its wait and the flood's median job time."""
    times: dict[str, dict[str, float]] = {}

    def follow(name: str, job) -> None:
        for event in job.iter_events(timeout=600):
            if event.stage in ("loading", "generating") and "start" not in times[name]:
                times[name]["start"] = time.perf_counter()
        job.wait(600)
        times[name]["end"] = time.perf_counter()

    threads = []
    for index in range(flood + 1):
        if index == flood:
            time.sleep(LATE_AFTER_S)
        name, owner = ("late", "second") if index == flood else (f"flood-{index}", "flood")
        times[name] = {"submitted": time.perf_counter()}
        job = manager.submit(spec, request(index), owner)
        threads.append(threading.Thread(target=follow, args=(name, job), daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join(600)
    job_s = statistics.median(t["end"] - t["start"] for name, t in times.items() if name != "late")
    wait_s = times["late"]["start"] - times["late"]["submitted"]
    ahead = sum(1 for name, t in times.items() if name != "late" and t["start"] < times["late"]["start"])
    return {"job_s": job_s, "late_wait_s": wait_s, "late_wait_jobs": wait_s / job_s, "flood_jobs_before": ahead}


def fairness_row(r: dict) -> tuple[str, str, str, str]:
    """The bench table's row: the second owner's wait in job times, fair share on vs off."""
    return (
        f"second owner's wait / one job's time ({r['flood']}-job flood of one owner, the second's one job "
        f"{r['late_after_s']:g} s later; {'1 Ray replica' if r.get('backend') == 'ray' else '1 CPU slot'}, "
        f"{r['model']} 64x64, {r['steps']} steps = "
        f"{r['on_job_s']:.2f} s a job): fair share vs first come, first served",
        f"{r['on_late_wait_jobs']:.2f}", f"{r['off_late_wait_jobs']:.2f}",
        f"{r['on_late_wait_jobs'] / r['off_late_wait_jobs']:.3f}",
    )
