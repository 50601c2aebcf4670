"""``python -m studio.bench --only batching``: eight clients' jobs with batching against without.

The real app under uvicorn with one CPU slot and tiny sdxl-turbo; ``clients`` clients each POST one
512x512 job (turbo's default size and step) to ``/v1/images/generations`` at once, every job a prompt
and seed of its own. A round runs with ``--batch-window-ms 100`` (the slot's settings are read at every
decision, so one server serves both) and a round without (0), alternately, so a noisy neighbour hits
both alike. Throughput is the round's jobs over the time from its first request to its last answer;
latency is each client's time to its answer. Warm-up rounds of each first.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from pathlib import Path

MODEL = "sdxl-turbo"
SIZE = 512
WINDOW_MS = 100.0


def bench_batching(models_dir: Path, prompt: str, rounds: int = 5, clients: int = 8) -> dict:
    import httpx

    from studio.bench import serving
    from studio.config import Settings
    from studio.server import create_app
    from studio.tiny import build

    build(models_dir, [MODEL])
    settings = Settings(devices=["cpu"], models_dir=models_dir, preload=[MODEL], outputs_dir=models_dir / "outputs",
                        max_queue=clients, max_batch=clients)
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=600) as client:

        def one_round(window_ms: float, first_seed: int) -> dict:
            settings.batch_window_ms = window_ms
            latencies = [0.0] * clients

            def send(index: int) -> None:
                started = time.perf_counter()
                body = {"model": MODEL, "prompt": f"{prompt}, view {index}", "size": f"{SIZE}x{SIZE}",
                        "seed": first_seed + index, "response_format": "b64_json"}
                client.post("/v1/images/generations", json=body).raise_for_status()
                latencies[index] = time.perf_counter() - started

            threads = [threading.Thread(target=send, args=(index,)) for index in range(clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall_s = time.perf_counter() - started
            return {"wall_s": wall_s, "jobs_per_s": clients / wall_s, "latencies_s": latencies}

        one_round(WINDOW_MS, 0), one_round(0.0, 0)  # warm-up: allocator growth, lazy imports, batch shapes
        for index in range(rounds):  # alternate, starting with each side in turn
            for name in (("on", "off") if index % 2 == 0 else ("off", "on")):
                runs[name].append(one_round(WINDOW_MS if name == "on" else 0.0, 1000 * (index + 1)))
    result = {"model": MODEL, "size": f"{SIZE}x{SIZE}", "clients": clients, "rounds": rounds, "window_ms": WINDOW_MS}
    for name, measured in runs.items():
        latencies = sorted(latency for run in measured for latency in run["latencies_s"])
        result[f"{name}_jobs_per_s"] = statistics.median(run["jobs_per_s"] for run in measured)
        result[f"{name}_p50_s"] = percentile(latencies, 50)
        result[f"{name}_p95_s"] = percentile(latencies, 95)
        result[f"{name}_rounds"] = measured
    result["throughput_ratio"] = result["on_jobs_per_s"] / result["off_jobs_per_s"]
    return result


def percentile(ordered: list[float], percent: float) -> float:
    """The nearest-rank percentile of sorted samples."""
    return ordered[min(len(ordered), max(1, math.ceil(percent * len(ordered) / 100))) - 1]


def batching_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """The bench table's rows: throughput, then latency, with the window against without."""
    what = (f"{r['clients']} clients at once, 1 CPU slot, {r['model']} {r['size']} (median of {r['rounds']} "
            f"rounds): --batch-window-ms {r['window_ms']:g} vs no batching")
    return [
        (f"jobs/s, {what}", f"{r['on_jobs_per_s']:.2f}", f"{r['off_jobs_per_s']:.2f}", f"{r['throughput_ratio']:.2f}"),
        (f"latency p50 / p95, s, same runs ({r['clients'] * r['rounds']} jobs a side)",
         f"{r['on_p50_s']:.2f} / {r['on_p95_s']:.2f}", f"{r['off_p50_s']:.2f} / {r['off_p95_s']:.2f}",
         f"{r['on_p50_s'] / r['off_p50_s']:.2f} / {r['on_p95_s'] / r['off_p95_s']:.2f}"),
    ]
