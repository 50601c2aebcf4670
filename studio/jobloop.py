"""One job on one ``Engine``, whatever carries its messages: the job loop of a local worker process
(``studio.worker``, over a pipe) and of a Ray Serve replica (``studio.ray_replica``, over a stream).

``run_job`` runs the job and reports through ``send``: ``Stage`` and ``Step`` messages (steps
throttled to ``STEP_REPORT_S``, the first and last always sent) and ``Preview`` images while it
runs. It returns ``Done`` or ``Failed`` and never raises for a job's own failure: no job may take
its worker down with it. ``as_studio_error`` is the one mapping of a job's exception to the error
its caller sees. The transports differ only in ``send`` and ``cancelled``.

Imports no torch at module level (the parent imports the worker module to name its entry point).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

from studio.errors import JobCancelled, OutOfMemory, StudioError
from studio.protocol import Done, Failed, Preview, Stage, Step, WorkerState

STEP_REPORT_S = 0.05  # at most this often a step message (a fast model makes hundreds of steps a second)

Send = Callable[[object], None]


def run_job(engine, job_id: str, spec, request, send: Send, cancelled: Callable[[], bool], where: str,
            slot: int | None = None) -> Done | Failed:
    """Run one job on ``engine``; ``where`` names the slot or replica in errors, ``slot`` goes on the result."""

    def check_cancelled() -> None:
        if cancelled():
            raise JobCancelled(f"job {job_id} was cancelled")

    def on_stage(stage: str) -> None:
        check_cancelled()
        send(Stage(job_id, stage))

    last_sent = 0.0

    def on_step(step: int, total: int) -> None:
        nonlocal last_sent
        check_cancelled()  # every step: a cancel stops the job within one
        now = time.monotonic()
        if step == total or step == 1 or now - last_sent >= STEP_REPORT_S:
            last_sent = now
            send(Step(job_id, step, total))

    def on_preview(index: int, step: int, total: int, png: bytes) -> None:
        send(Preview(job_id, index, step, total, png))

    try:
        check_cancelled()
        result = engine.run(spec, request, on_step=on_step, on_stage=on_stage, on_preview=on_preview)
        if slot is not None:
            result.slot = slot
        return Done(job_id, result, engine_state(engine))
    except (KeyboardInterrupt, SystemExit):
        raise  # the process is being stopped: not the job's failure
    except BaseException as exc:  # no job may take its worker down with it
        return Failed(job_id, as_studio_error(exc, spec, engine, where), engine_state(engine))


def as_studio_error(exc: BaseException, spec, engine, where: str) -> StudioError:
    """A picklable error that keeps its class and status. An out-of-memory the engine's own guard did
    not catch frees the device too (the pipeline is unloaded; the next job loads it again)."""
    if isinstance(exc, StudioError):
        error = exc
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        engine.unload()
        error = OutOfMemory(f"out of memory running {spec.id} on {engine.device}")
    else:
        error = StudioError(f"{spec.id} failed on {where}: {type(exc).__name__}: {exc}")
    try:
        pickle.dumps(error)
    except Exception:  # a subclass with an odd constructor: keep the message and the base class
        error = StudioError(str(error))
    return error


def engine_state(engine) -> WorkerState:
    """What the engine holds and its counters, as both transports report them."""
    plan = engine.plan.value if engine.plan else None
    return WorkerState(engine.model_id, engine.loads, engine.cache_hits, tuple(engine.cache.model_ids),
                       tuple(engine.loras.held(engine.pipe)) if engine.pipe is not None else (), plan)
