"""One job on one ``Engine``, whatever carries its messages: the job loop of a local worker process
(``studio.worker``, over a pipe) and of a Ray Serve replica (``studio.ray_replica``, over a stream).

``run_job`` runs the job and reports through ``send``: ``Stage`` and ``Step`` messages (steps
throttled to ``STEP_REPORT_S``, the first and last always sent) and ``Preview`` images while it
runs. It returns ``Done`` or ``Failed`` and never raises for a job's own failure: no job may take
its worker down with it. ``run_batch`` runs compatible jobs as one call (``RunBatch``), each
answered as if it ran alone; it sends every member's ``Done`` or ``Failed`` itself, since a member
cancelled mid-run hears at the next step while the others go on. ``as_studio_error`` is the one
mapping of a job's exception to the error its caller sees. The transports differ only in ``send`` and ``cancelled``.

Imports no torch at module level (the parent imports the worker module to name its entry point).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

from studio.errors import JobCancelled, OutOfMemory, StudioError
from studio.protocol import Done, Failed, Preview, RunJob, Stage, Step, WorkerState

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

    throttle = StepThrottle()

    def on_step(step: int, total: int) -> None:
        check_cancelled()  # every step: a cancel stops the job within one
        if throttle(step, total):
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


def run_batch(engine, members: list[RunJob], send: Send, cancelled: Callable[[str], bool], where: str,
              slot: int | None = None) -> list[Done | Failed]:
    """Run compatible jobs (one model) as one call on ``engine``; each member gets its own messages and
    exactly one ``Done`` or ``Failed``, sent through ``send`` (and returned, in member order). A member
    whose ``cancelled(job_id)`` turns true fails at the next stage or step while the others go on; when
    none is left the call stops. An error fails every member still running with one message."""
    spec = members[0].spec
    outcomes: dict[str, Done | Failed] = {}

    def finish(outcome: Done | Failed) -> None:
        outcomes[outcome.job_id] = outcome
        send(outcome)

    def running() -> list[RunJob]:
        """The members still to answer; the cancelled ones answered first (the call stops when none is left)."""
        for member in members:
            if member.job_id not in outcomes and cancelled(member.job_id):
                finish(Failed(member.job_id, JobCancelled(f"job {member.job_id} was cancelled"), engine_state(engine)))
        left = [member for member in members if member.job_id not in outcomes]
        if not left:
            raise JobCancelled("every job of the batch was cancelled")
        return left

    def on_stage(stage: str) -> None:
        for member in running():
            send(Stage(member.job_id, stage))

    throttle = StepThrottle()

    def on_step(step: int, total: int) -> None:
        left = running()  # every step: a cancel takes its member out within one
        if throttle(step, total):
            for member in left:
                send(Step(member.job_id, step, total))

    def on_preview(member: int, index: int, step: int, total: int, png: bytes) -> None:
        job_id = batch[member].job_id
        if job_id not in outcomes:
            send(Preview(job_id, index, step, total, png))

    try:
        batch = running()  # members cancelled while queued never join the call
        results = engine.run_batch(spec, [member.request for member in batch], on_step=on_step,
                                   on_stage=on_stage, on_preview=on_preview)
        for member, result in zip(batch, results):
            if member.job_id not in outcomes:  # a member cancelled mid-run has its Failed: its images are dropped
                if slot is not None:
                    result.slot = slot
                finish(Done(member.job_id, result, engine_state(engine)))
    except (KeyboardInterrupt, SystemExit):
        raise  # the process is being stopped: not the jobs' failure
    except BaseException as exc:  # no batch may take its worker down with it
        error = as_studio_error(exc, spec, engine, where)
        for member in members:
            if member.job_id not in outcomes:
                finish(Failed(member.job_id, error, engine_state(engine)))
    return [outcomes[member.job_id] for member in members]


class StepThrottle:
    """Whether a step's message goes: the first and the last always, the others at most every ``STEP_REPORT_S``."""

    def __init__(self):
        self.last_sent = 0.0

    def __call__(self, step: int, total: int) -> bool:
        now = time.monotonic()
        if step == total or step == 1 or now - self.last_sent >= STEP_REPORT_S:
            self.last_sent = now
            return True
        return False


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
