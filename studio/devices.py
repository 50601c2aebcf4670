"""Device discovery in the parent, without importing torch: which devices the slots get, how
many torch threads each worker may use, and how preloads spread over the slots.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

from studio.config import Settings
from studio.errors import WorkerFailed


def visible_gpus() -> int:
    """How many CUDA devices a child process would see, without importing torch here.

    ``CUDA_VISIBLE_DEVICES`` is honoured by asking a short-lived child (torch counts MIG and
    masked devices right); ``nvidia-smi -L`` is the fallback. No NVIDIA driver: zero.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True, text=True, timeout=120,
        )
        return int(probe.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    if visible is not None:
        count = min(count, len([part for part in visible.split(",") if part.strip()]))
    return count


def resolve_devices(settings: Settings, gpu_count: Callable[[], int] = visible_gpus) -> list[str]:
    """The device of each slot: ``settings.devices``, else the first ``num_gpus`` GPUs, else every GPU, else one CPU."""
    if settings.devices:
        return list(settings.devices)
    available = gpu_count()
    if settings.num_gpus is not None:
        if settings.num_gpus > available:
            raise WorkerFailed(f"num_gpus: {settings.num_gpus} GPUs requested but {available} visible")
        if settings.num_gpus > 0:
            return [f"cuda:{index}" for index in range(settings.num_gpus)]
        return ["cpu"]
    return [f"cuda:{index}" for index in range(available)] or ["cpu"]


def preload_plan(model_ids: Sequence[str], slot_count: int) -> list[list[str]]:
    """Spread preloads over slots: fewer ids than slots repeat (every slot starts warm); more ids share slots."""
    if not model_ids:
        return [[] for _ in range(slot_count)]
    if len(model_ids) <= slot_count:
        return [[model_ids[index % len(model_ids)]] for index in range(slot_count)]
    return [list(model_ids[index::slot_count]) for index in range(slot_count)]


def cpu_threads(slot_count: int) -> int:
    """Torch threads per worker so the slots share the cores instead of fighting over them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, slot_count))

