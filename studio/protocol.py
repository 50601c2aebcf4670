"""The worker pipe's messages: one typed definition for both ends (``worker.py`` and ``slots.py``).

Every message is a small frozen dataclass sent whole over a ``multiprocessing`` connection (it
pickles by class, so both ends must import this module; nothing here imports torch).

parent -> worker
    ``RunJob``      run one job (the request is already resolved by ``spec.check``)
    ``RunBatch``    run compatible jobs as one pipeline call (``--batch-window-ms``); each member is
                    answered as if it ran alone: its own ``Stage``/``Step``/``Preview`` messages and
                    exactly one ``Done`` or ``Failed``. A member cancelled mid-run gets its ``Failed``
                    at the next step and the others go on; an error fails every member with one message
    ``CancelJob``   stop that job at its next step (it may also be queued or already over)
    ``Stop``        cancel the running job and exit

worker -> parent
    ``Ready``       once, after preloading: pid, what it holds, each preload's load time
    ``StartFailed`` instead of ``Ready``: start-up failed, with why; the process exits
    ``Stage``       ``JobStage.LOADING``, ``GENERATING`` or ``ENCODING``
    ``Step``        after a denoising step (throttled; the first and last always go)
    ``Preview``     a preview PNG of the first image (``request.previews`` of them, spread over the run)
    ``Done``        a ``JobResult`` with PNG bytes
    ``Failed``      a picklable ``StudioError``

``Ready``, ``Done`` and ``Failed`` carry the worker's ``WorkerState``.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.catalog import ModelSpec
from studio.errors import StudioError
from studio.schemas import GenerationRequest, JobResult, JobStage, Progress


@dataclass(frozen=True)
class WorkerState:
    """What a worker holds, and its counters since it started."""

    model: str | None = None  # the resident model
    loads: int = 0  # pipelines loaded from disk
    cache_hits: int = 0  # swaps served from the RAM cache
    cached: tuple[str, ...] = ()  # models parked in the RAM cache
    loras: tuple[str, ...] = ()  # the LoRA files the resident pipeline holds as adapters (routing prefers them)
    plan: str | None = None  # the resident model's memory plan (studio/memory.py)


# ---------------------------------------------------------------- parent -> worker


@dataclass(frozen=True)
class RunJob:
    job_id: str
    spec: ModelSpec
    request: GenerationRequest


@dataclass(frozen=True)
class RunBatch:
    jobs: tuple[RunJob, ...]  # the same model, task, size, steps, guidance, sampler and LoRAs; in fair-share order


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class Stop:
    pass


# ---------------------------------------------------------------- worker -> parent


@dataclass(frozen=True)
class Ready:
    pid: int
    state: WorkerState
    timings: tuple[tuple[str, float], ...] = ()  # (model id, load seconds) of each preload


@dataclass(frozen=True)
class StartFailed:
    message: str


@dataclass(frozen=True)
class Stage:
    job_id: str
    stage: JobStage


@dataclass(frozen=True)
class Step:
    job_id: str
    step: int
    total: int


@dataclass(frozen=True)
class Preview:
    job_id: str
    index: int  # 0, 1, ... in the order they are made
    step: int
    total: int
    png: bytes  # at the latents' resolution (studio.families.preview)

    def progress(self, slot: int) -> Progress:
        """The job's event for it (``studio.streaming`` and the UI show it)."""
        return Progress(JobStage.PREVIEW, step=self.step, total=self.total, slot=slot,
                        preview_index=self.index, preview_png=self.png)


@dataclass(frozen=True)
class Done:
    job_id: str
    result: JobResult
    state: WorkerState


@dataclass(frozen=True)
class Failed:
    job_id: str
    error: StudioError
    state: WorkerState


ToWorker = RunJob | RunBatch | CancelJob | Stop
FromWorker = Ready | StartFailed | Stage | Step | Preview | Done | Failed
