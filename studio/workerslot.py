"""``WorkerSlot``: one slot of the local backend (``studio.slots.SlotManager``), its worker process and
what that process has told: a routing ``Slot`` plus the process, its pipe, the batch it runs (one job
is a batch of one: ``studio.batching.Batch``), its counters (which never go back across restarts), its
restart back-off, and the timings it feeds ``Estimates``.
Also the helpers that wait on, kill and describe a worker process, and say when every slot is down.

The manager owns the queue, the threads and the lock: each method here runs under its lock.
Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from studio.backend import SlotState, SlotStatus
from studio.batching import Batch
from studio.catalog import ModelSpec
from studio.jobs import Job
from studio.protocol import Done, Failed, Ready, ToWorker, WorkerState
from studio.routing import Estimates, Slot
from studio.schemas import GenerationRequest, JobStage, Progress

log = logging.getLogger(__name__)

RESTART_BASE_S = 1.0  # second crash in a row waits this long, then twice as long each time ...
RESTART_CAP_S = 60.0  # ... up to this
STABLE_S = 60.0  # a worker that lived this long before dying starts its back-off afresh
DOWN_AFTER_FAILED_STARTS = 2  # a dead slot whose last two workers died before being ready is down
REAP_POLL_S = 0.02


def restart_delay(crashes_in_row: int, base_s: float = RESTART_BASE_S, cap_s: float = RESTART_CAP_S) -> float:
    """The first crash restarts at once; each further one in a row doubles the wait, up to ``cap_s``."""
    if crashes_in_row <= 1:
        return 0.0
    return min(cap_s, base_s * 2 ** (crashes_in_row - 2))


@dataclass(eq=False)
class WorkerSlot(Slot):
    """A routing ``Slot`` plus what supervising its worker process takes."""

    preload: list[ModelSpec] = field(default_factory=list)
    process: Any = None
    conn: Any = None
    generation: int = 0  # which process incarnation messages must come from
    started_at: float = 0.0
    loading_at: float | None = None
    job_started_at: float = 0.0
    jobs_done: int = 0
    jobs_failed: int = 0
    loads: int = 0
    cache_hits: int = 0
    counts_before: tuple[int, int] = (0, 0)  # loads and cache hits of earlier incarnations: counts never go back
    restarts: int = 0
    crashes_in_row: int = 0
    failed_starts: int = 0  # workers in a row that died before their handshake
    restart_at: float | None = None
    killed: bool = False  # we killed it (a job ignored its timeout): not a crash
    warm: bool = False  # this worker has loaded a model: its next load is a swap, not the imports too
    reap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # see reap() and kill()
    last_error: str | None = None
    plan: str | None = None  # the resident model's memory plan, as the worker reports it
    batch: Batch | None = None  # what the worker runs; ``job`` is its lead (routing reads it) until every member ended

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def work(self) -> GenerationRequest | None:
        return self.batch.request if self.batch is not None else None

    @property
    def members(self) -> list[Job]:
        """The jobs running here (a batch's members that have not had their last word; cancelled ones too)."""
        return list(self.batch.running.values()) if self.batch is not None else []

    def member(self, job_id: str) -> Job | None:
        return self.batch.member(job_id) if self.batch is not None else None

    def alive(self) -> bool:
        # No process.is_alive() here: it reaps the child, racing the reader thread that wants the exit code.
        # A dead process closes its pipe, and the reader marks the slot dead at once.
        return self.state == SlotState.READY and self.process is not None

    def status(self, now: float) -> SlotStatus:
        """This slot in ``BackendStatus``."""
        return SlotStatus(
            index=self.index, device=self.device, pid=self.pid, alive=self.alive(), state=self.state,
            model=self.model, plan=self.plan if self.model else None, loading=self.job.spec.id if self.phase == JobStage.LOADING and self.job else None,
            busy=self.busy, job=self.job.id if self.job else None,
            batch=tuple(job.id for job in self.members) if self.batch and len(self.batch.jobs) > 1 else (),
            step=self.step if self.job else 0,
            total=self.total if self.job else 0, jobs_done=self.jobs_done, jobs_failed=self.jobs_failed,
            loads=self.loads, cache_hits=self.cache_hits, cached=tuple(self.cached), restarts=self.restarts,
            crashes_in_row=self.crashes_in_row,
            restart_in_s=None if self.restart_at is None else max(0.0, self.restart_at - now),
            last_error=self.last_error,
        )

    # -- the worker process ---------------------------------------------------------------

    def attach(self, process, conn, now: float) -> int:
        """A new worker process (not started yet) for this slot; returns its incarnation."""
        self.generation += 1
        self.state, self.started_at, self.restart_at = SlotState.STARTING, now, None
        self.process, self.conn, self.unreachable, self.last_error, self.warm = process, conn, False, None, False
        return self.generation

    def send(self, message: ToWorker) -> bool:
        """False when the worker cannot hear it (its pipe is broken: the reader thread will see the exit)."""
        if self.conn is None or self.unreachable:
            return False
        try:
            self.conn.send(message)
            return True
        except (OSError, ValueError):
            self.unreachable = True
            return False

    def ready(self, message: Ready, estimates: Estimates) -> None:
        """The worker's handshake: up, with its preloads (whose timings teach the estimates)."""
        self.state, self.failed_starts = SlotState.READY, 0
        self.apply_state(message.state)
        # A new worker's first load pays for its imports too: not what a swap costs later.
        for index, (model_id, seconds) in enumerate(message.timings):
            if index:
                estimates.record_load(model_id, seconds)
            else:
                estimates.record_first_load(model_id, seconds)
        self.warm = bool(message.timings)

    def apply_state(self, state: WorkerState) -> None:
        """What the worker says it holds, and its counters on top of earlier incarnations'."""
        loads_before, hits_before = self.counts_before
        self.model, self.cached, self.loras, self.plan = state.model, list(state.cached), state.loras, state.plan
        self.loads, self.cache_hits = loads_before + state.loads, hits_before + state.cache_hits

    # -- its job ------------------------------------------------------------------------------

    def run(self, batch: Batch, now: float) -> bool:
        """Send ``batch`` to the worker; False (and the slot stays free) when the worker died between jobs."""
        self.batch, self.job = batch, batch.lead
        for job in batch.jobs:
            job.slot = self.index
        self.phase, self.phase_since, self.job_started_at = "starting", now, now
        self.loading_at = self.generating_at = self.first_step_at = self.last_step_at = None
        self.step = self.total = 0
        if self.send(batch.message()):
            return True
        self.batch = self.job = None
        for job in batch.jobs:
            job.slot = None
        return False

    def stage(self, job: Job, stage: str, now: float) -> Progress:
        """The worker's job (a member of the batch) entered ``stage``: the event the job hears. The slot
        enters it with the first member that does (each member hears each stage)."""
        if stage != self.phase:
            self.phase, self.phase_since = stage, now
            if stage == JobStage.LOADING:
                self.loading_at, self.model = now, None
            elif stage == JobStage.GENERATING:
                self.generating_at, self.model = now, job.spec.id
        return Progress(JobStage(stage), total=job.request.steps if stage == JobStage.GENERATING else 0,
                        slot=self.index)

    def step_done(self, step: int, total: int, now: float) -> Progress:
        self.step, self.total, self.last_step_at = step, total, now
        if self.first_step_at is None:
            self.first_step_at = now
        return Progress(JobStage.STEP, step=step, total=total, slot=self.index)

    def job_ended(self, job: Job, message: Done | Failed, estimates: Estimates, now: float) -> tuple[object, bool]:
        """The worker's last word on one member: its outcome (its result or its error), and whether the
        slot is free now (every member ended; the estimates then learn the call's timings, and the slot
        what the worker holds)."""
        if isinstance(message, Failed):
            self.jobs_failed += 1
        else:
            self.jobs_done += 1
        outcome = message.error if isinstance(message, Failed) else message.result
        if not self.batch.end(job):
            return outcome, False
        self._call_ended(message, estimates, now)
        return outcome, True

    def _call_ended(self, message: Done | Failed, estimates: Estimates, now: float) -> None:
        job, request, state = self.job, self.work, message.state
        if state.model == job.spec.id and state.plan:
            estimates.replanned(job.spec.id, state.plan)  # before the load and run below are recorded
        if self.loading_at is not None and self.generating_at is not None:
            from_cache = self.counts_before[1] + state.cache_hits > self.cache_hits
            load_s = self.generating_at - self.loading_at
            if self.warm:
                estimates.record_load(job.spec.id, load_s, cached=from_cache)
            else:
                estimates.record_first_load(job.spec.id, load_s)
            self.warm = True
        self.job, self.batch, self.last_used, self.crashes_in_row = None, None, now, 0
        self.apply_state(state)
        if isinstance(message, Failed):
            return
        if self.generating_at is not None:
            estimates.record_run(job.spec.id, request, now - self.generating_at)
        if self.last_step_at is not None:
            estimates.record_tail(job.spec.id, now - self.last_step_at, request.num_images)

    # -- its death and restart -----------------------------------------------------------------

    def went_down(self, exitcode: int | None, stopping: bool) -> tuple[SlotState, list[Job]]:
        """The worker process is gone: the state it was in, and the jobs it took with it. Unless the
        studio is stopping, ``last_error`` says how it ended."""
        was = self.state
        self.state = SlotState.STOPPED if stopping else SlotState.DEAD
        self.model, self.cached, self.loras = None, [], ()
        self.counts_before = (self.loads, self.cache_hits)
        jobs, self.job, self.batch = self.members, None, None
        if stopping:
            return was, jobs
        how = describe_exit(exitcode)
        if was == SlotState.STARTING:
            self.last_error = self.last_error or f"the worker {how} before it was ready"
            self.failed_starts += 1
        else:
            self.last_error = f"the worker {how}"
        self.jobs_failed += len(jobs)
        return was, jobs

    def plan_restart(self, now: float, base_s: float, cap_s: float) -> float:
        """When the next worker starts: at once after a first crash (or our own kill), later after each
        further crash in a row; returns the delay."""
        if self.killed:
            self.killed = False
        else:
            if now - self.started_at >= STABLE_S:
                self.crashes_in_row = 0
            self.crashes_in_row += 1
        delay = restart_delay(self.crashes_in_row, base_s, cap_s)
        self.restart_at = now + delay
        return delay


def down_reason(slots: list[WorkerSlot], now: float) -> str | None:
    """Why no job can run now (every slot's workers keep dying at start), or None while one could.

    A job that crashes its worker does not count: the next worker comes up, and the jobs behind it run.
    """
    if not all(slot.state == SlotState.DEAD and slot.failed_starts >= DOWN_AFTER_FAILED_STARTS for slot in slots):
        return None
    described = "; ".join(
        f"slot {slot.index} ({slot.device}): {slot.last_error}, next restart in "
        f"{max(0.0, (slot.restart_at or now) - now):.0f} s"
        for slot in slots
    )
    return f"no slot can run jobs, every worker keeps failing ({described}); try again later"


def reap(process, lock: threading.Lock, timeout_s: float) -> int | None:
    """Wait up to ``timeout_s`` for a worker to end; its exit code, or None while it runs.

    Every wait on a worker goes through here: a non-blocking poll under the slot's lock, so two
    threads (the slot's reader and ``shutdown``) never both wait on the pid, where the loser sees
    "no such child" and takes a reaped worker for a hung one.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        with lock:
            code = process.exitcode  # polls: reaps an ended child, never blocks
        if code is not None or time.monotonic() >= deadline:
            return code
        time.sleep(REAP_POLL_S)


def kill(process, lock: threading.Lock) -> bool:
    """SIGKILL a worker that has not been reaped; a reaped one's pid may already belong to another process."""
    with lock:
        if process.exitcode is not None:
            return False
        process.kill()
        return True


def describe_exit(exitcode: int | None) -> str:
    """``"was killed by SIGKILL"``, ``"exited with code 3"``: how a worker process ended."""
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
