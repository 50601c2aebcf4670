"""``SlotManager`` (the local ``Backend``): one spawned worker process per device, one central queue.

Jobs wait in one queue in the parent (in arrival order; ``studio.turns`` offers them to routing in
fair-share order between owners, within the per-owner limits) and are bound to a slot only when a
slot is free (late binding). Who gets a place in the queue (``--max-queue``, the waiting room of
``--queue-wait``, Retry-After) and when a load is stuck (``--load-timeout``) is
``studio.admission``'s policy, shared with the Ray backend and the download phase; the estimates
it tells are ``studio.routing``'s. Which job goes where is ``studio.routing``'s decision, the devices come from ``studio.devices``, the messages to and
from the workers are ``studio.protocol``'s. This module supervises: it spawns the workers, reads
their messages, enforces timeouts and restarts.

A worker that dies fails only its in-flight job (``WorkerFailed``) and is restarted, with a
back-off when it keeps dying (and without its preloads once a restart failed to come up).
While every slot is down (its last workers died before they were ready), jobs are refused with
``WorkerFailed`` rather than left waiting for a recovery that may never come; the restarts go
on, and the first worker that comes up serves again. A job running past ``settings.job_timeout_s`` is cancelled and
fails with ``JobTimeout``; a worker that ignores the cancel for ``cancel_grace_s`` is killed. A model
load (which no cancel can interrupt) running past ``settings.load_timeout_s`` is stuck: its job fails
with ``ModelLoadFailed`` and the worker is killed and replaced.

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import atexit
import bisect
import itertools
import logging
import multiprocessing
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from studio.backend import BackendStatus, Observer, SlotStatus
from studio.catalog import Catalog, ModelSpec
from studio.admission import Admission, Line, Verdict
from studio.config import Settings
from studio.devices import cpu_threads, preload_plan, resolve_devices
from studio.errors import JobCancelled, JobTimeout, QueueFull, StudioError, WorkerFailed
from studio.jobs import ANONYMOUS, Job
from studio.owners import tally
from studio.protocol import (
    CancelJob,
    Done,
    Failed,
    Preview,
    FromWorker,
    Ready,
    RunJob,
    Stage,
    StartFailed,
    Step,
    Stop,
    ToWorker,
    WorkerState,
)
from studio.routing import STARVATION_S, Estimates, Slot, backlog, plan_dispatch, room_in_s
from studio.schemas import GenerationRequest, JobStage, Progress
from studio.speed import EngineOptions
from studio.turns import OwnerLimit, Turns
from studio.worker import worker_main

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 10.0  # a worker gets this long to honour a timeout's cancel before it is killed
RESTART_BASE_S = 1.0  # second crash in a row waits this long, then twice as long each time ...
RESTART_CAP_S = 60.0  # ... up to this
STABLE_S = 60.0  # a worker that lived this long before dying starts its back-off afresh
DOWN_AFTER_FAILED_STARTS = 2  # a dead slot whose last two workers died before being ready is down
TICK_S = 0.25  # how often the supervisor looks at timeouts, restarts and waiting jobs
REAP_POLL_S = 0.02
STOP_JOIN_S = 10.0  # shutdown waits this long for workers to exit before killing them


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
    plan: str | None = None  # the resident model's memory plan, as the worker reports it
    reap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # see reap() and kill()
    last_error: str | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        # No process.is_alive() here: it reaps the child, racing the reader thread that wants the exit code.
        # A dead process closes its pipe, and the reader marks the slot dead at once.
        return self.state == "ready" and self.process is not None


# ---------------------------------------------------------------- the manager


class SlotManager:
    """The local ``Backend``: one worker process per device, a central queue, model-affinity routing, restarts.

    Thread-safe; never blocks the caller except in ``start()``, ``shutdown()`` and ``Job.wait()``.
    """

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        *,
        starvation_s: float = STARVATION_S,
        cancel_grace_s: float = CANCEL_GRACE_S,
        restart_base_s: float = RESTART_BASE_S,
        restart_cap_s: float = RESTART_CAP_S,
    ):
        self.settings = settings
        self.catalog = catalog
        self.starvation_s = starvation_s
        self.cancel_grace_s = cancel_grace_s
        self.restart_base_s = restart_base_s
        self.restart_cap_s = restart_cap_s
        self.devices = resolve_devices(settings)
        self.estimates = Estimates()
        self.engine_options = EngineOptions.from_settings(settings)
        self._context = multiprocessing.get_context("spawn")  # CUDA cannot live in a forked child
        self._cond = threading.Condition()
        self._slots = [WorkerSlot(index, device) for index, device in enumerate(self.devices)]
        self._queue: list[Job] = []
        self.admission = Admission.from_settings(settings)  # --max-queue, --queue-wait, --load-timeout
        self.turns = Turns(settings, self.estimates)  # fair share, --max-running-per-user
        self.owner_limit = OwnerLimit(lambda: settings.max_queue_per_user)
        self.admission.rules.append(self.owner_limit)
        self._seq = itertools.count()
        self._observers: list[Observer] = []
        self._ended: list[tuple[Job, Any]] = []  # finished under the lock, settled after it
        self._threads: list[threading.Thread] = []
        self._supervisor: threading.Thread | None = None
        self._phase = "new"  # new | starting | running | stopping | stopped

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Spawn one worker per device, preload, and wait for every READY.

        Raises ``WorkerFailed`` naming the slot, its device and the worker's own message when
        any worker fails to start (the others are stopped), ``UnknownModel`` for a bad preload id.
        There is no time limit while the workers live: a first preload may download many GB.
        """
        plan = preload_plan([self.catalog.get(model_id).id for model_id in self.settings.preload], len(self._slots))
        with self._cond:
            if self._phase != "new":
                raise WorkerFailed(f"the slot manager was already started ({self._phase})")
            self._phase = "starting"
            for slot, model_ids in zip(self._slots, plan):
                slot.preload = [self.catalog.get(model_id) for model_id in model_ids]
        atexit.register(self.shutdown)
        for slot in self._slots:
            self._spawn(slot)
        with self._cond:
            self._cond.wait_for(lambda: all(slot.state != "starting" for slot in self._slots))
            failed = [slot for slot in self._slots if slot.state != "ready"]
            if not failed:
                self._phase = "running"
        if failed:
            slot = failed[0]
            self.shutdown(join_s=0)  # the others may still be loading: no point waiting for them
            raise WorkerFailed(f"slot {slot.index} ({slot.device}) failed to start: {slot.last_error}")
        self._supervisor = threading.Thread(target=self._supervise, name="slots-supervisor", daemon=True)
        self._supervisor.start()
        log.info("slots ready: %s", ", ".join(f"{s.index}={s.device}({s.model or 'empty'})" for s in self._slots))

    def shutdown(self, join_s: float = STOP_JOIN_S) -> None:
        """Stop accepting, cancel queued and running jobs, ask workers to exit, kill the ones that do not."""
        with self._locked():
            if self._phase in ("stopping", "stopped"):
                return
            self._phase = "stopping"
            reason = "the studio is shutting down"
            for job in [*self._queue, *self.admission.clear()]:
                self._end(job, JobCancelled(f"job {job.id} was cancelled: {reason}"))
            self._queue.clear()
            for slot in self._slots:
                if slot.job is not None:
                    self._end(slot.job, JobCancelled(f"job {slot.job.id} was cancelled: {reason}"))
            self._cond.notify_all()
        atexit.unregister(self.shutdown)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()  # after this no restart can begin
        with self._cond:
            for slot in self._slots:
                self._send(slot, Stop())  # also cancels the running job, at its next step
        deadline = time.monotonic() + join_s
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            if reap(process, slot.reap_lock, max(0.0, deadline - time.monotonic())) is None:
                log.warning("slot %d (%s): worker did not exit; killing it", slot.index, slot.device)
                kill(process, slot.reap_lock)
                reap(process, slot.reap_lock, 5)
        for thread in self._threads:
            thread.join(5)
        with self._cond:
            for slot in self._slots:
                slot.state = "stopped"
                if slot.conn is not None:
                    slot.conn.close()
            self._phase = "stopped"

    # -- the public API ----------------------------------------------------------------

    def submit(self, spec: ModelSpec, request: GenerationRequest, owner: str = ANONYMOUS) -> Job:
        """Queue ``owner``'s job (``request`` already resolved by ``spec.check``); never blocks.

        Past ``settings.max_queue`` waiting jobs the job waits in the waiting room for a place (its
        ``wait()`` may then raise ``QueueFull``). Raises ``QueueFull`` when the waiting room is full
        too (it holds as many jobs as the queue) or ``settings.queue_wait_s`` is 0, and
        ``WorkerFailed`` while every slot is down.
        """
        with self._locked():
            if self._phase != "running":
                raise WorkerFailed("the studio is not running (starting up or shutting down); try again shortly")
            now = time.monotonic()
            job, refusal = Job(spec, request, self.cancel, next(self._seq), owner=owner), None
            down = self._down_reason(now)
            if down:
                refusal = WorkerFailed(down)
            else:
                verdict = self.admission.admit(job, self._line(), now)
                if verdict is Verdict.QUEUE:
                    self._queue.append(job)
                elif verdict is Verdict.REFUSE:
                    refusal = self._queue_full(job, now)
            if refusal is not None:
                self._end(job, refusal)  # ended at once, so observers (metrics) count refusals from every face
            else:
                self._dispatch(now)
        if refusal is not None:
            raise refusal  # after _locked() has settled it: observers have seen it
        return job

    def cancel(self, job: Job, error: StudioError | None = None) -> bool:
        """What ``Job.cancel()`` does; False when the job had already ended."""
        with self._locked():
            return self._cancel(job, error or JobCancelled(f"job {job.id} was cancelled"), time.monotonic())

    def add_observer(self, observer: Observer) -> None:
        """``observer(job, result_or_exception, duration_s)`` runs once per ended job, before its waiters wake."""
        with self._cond:
            self._observers.append(observer)

    def status(self) -> BackendStatus:
        """A snapshot for /health, the UI and metrics."""
        with self._cond:
            now = time.monotonic()
            slots = tuple(
                SlotStatus(
                    index=slot.index,
                    device=slot.device,
                    pid=slot.pid,
                    alive=slot.alive(),
                    state=slot.state,
                    model=slot.model,
                    plan=slot.plan if slot.model else None,
                    loading=slot.job.spec.id if slot.phase == "loading" and slot.job else None,
                    busy=slot.busy,
                    job=slot.job.id if slot.job else None,
                    step=slot.step if slot.job else 0,
                    total=slot.total if slot.job else 0,
                    jobs_done=slot.jobs_done,
                    jobs_failed=slot.jobs_failed,
                    loads=slot.loads,
                    cache_hits=slot.cache_hits,
                    cached=tuple(slot.cached),
                    restarts=slot.restarts,
                    crashes_in_row=slot.crashes_in_row,
                    restart_in_s=None if slot.restart_at is None else max(0.0, slot.restart_at - now),
                    last_error=slot.last_error,
                )
                for slot in self._slots
            )
            return BackendStatus(
                slots=slots,
                queue_depth=len(self._queue),
                max_queue=self.settings.max_queue,
                waiting_room=len(self.admission.room),
                accepting=self._phase == "running",
                owners=tally(queued=[*self._queue, *self.admission.room],
                             running=[slot.job for slot in self._slots if slot.job is not None]),
            )

    # -- locking and ending jobs ---------------------------------------------------------

    @contextmanager
    def _locked(self):
        """The manager lock; jobs ended inside are settled (observers, then waiters) after it is released."""
        try:
            with self._cond:
                yield
        finally:
            self._settle()

    def _end(self, job: Job, outcome: Any) -> None:
        """Mark ``job`` ended (under the lock); the first outcome wins."""
        if job.claim_outcome():
            self._ended.append((job, outcome))

    def _settle(self) -> None:
        with self._cond:
            ended, self._ended = self._ended, []
            observers = list(self._observers)
        for job, outcome in ended:
            job.settle(outcome, observers)

    # -- under the lock: routing, cancelling, messages -------------------------------------------

    def _dispatch(self, now: float) -> None:
        """Start what can start, let the waiting room into the queue's free places, and again."""
        self._bind(now)
        for job in self.admission.let_in(self._line):
            self._queue.append(job)
            self._bind(now)
        self._renumber()

    def _line(self) -> Line:
        return Line(self._queue, backlog(self._queue, self._slots))

    def _bind(self, now: float) -> None:
        running = [slot.job for slot in self._slots if slot.job is not None]
        offered, due = self.turns.order(self._queue, running, now)  # fair share, --max-running-per-user
        for job, slot, why in plan_dispatch(offered, self._slots, self.estimates, now, self.starvation_s, due):
            if why:
                log.info("slot %d (%s) loads %s for job %s (holds %s): %s",
                         slot.index, slot.device, job.spec.id, job.id[:8], slot.model or "nothing", why)
            self.turns.started(job, self._queue)
            self._queue.remove(job)
            slot.job, job.slot = job, slot.index
            slot.phase, slot.phase_since, slot.job_started_at = "starting", now, now
            slot.loading_at = slot.generating_at = slot.first_step_at = slot.last_step_at = None
            slot.step = slot.total = 0
            if not self._send(slot, RunJob(job.id, job.spec, job.request)):
                # The worker died between jobs and never got this one: it goes back to its place.
                slot.job, job.slot = None, None
                bisect.insort(self._queue, job, key=lambda queued: queued.seq)

    def _renumber(self) -> None:
        """Tell each job that moved its place in line, with when it should start (``wait_s``,
        from the same estimates as Retry-After; absent while no slot is up to estimate from)."""
        now = time.monotonic()
        line = [*self.turns.line(self._queue, now), *self.admission.room]
        self.admission.announce(
            line, lambda position: room_in_s(line[:position + 1], self._slots, self.estimates, now, limit=1))

    def _send(self, slot: WorkerSlot, message: ToWorker) -> bool:
        if slot.conn is None or slot.unreachable:
            return False
        try:
            slot.conn.send(message)
            return True
        except (OSError, ValueError):  # broken pipe or closed: the reader thread will see the exit
            slot.unreachable = True
            return False

    def _cancel(self, job: Job, error: StudioError, now: float) -> bool:
        if job.ending:
            return False
        if job in self._queue:
            self._queue.remove(job)
            self.turns.forget(job)
            self._renumber()
        elif self.admission.leave(job):
            self._renumber()
        else:
            slot = next((slot for slot in self._slots if slot.job is job), None)
            if slot is not None:
                self._send(slot, CancelJob(job.id))  # the slot stays busy until the worker confirms
        self._end(job, error)
        return True

    def _handle(self, slot: WorkerSlot, message: FromWorker, now: float) -> None:
        if isinstance(message, Ready):
            slot.state, slot.failed_starts = "ready", 0
            self._apply_state(slot, message.state)
            # A new worker's first load pays for its imports too: not what a swap costs later.
            for index, (model_id, seconds) in enumerate(message.timings):
                if index:
                    self.estimates.record_load(model_id, seconds)
                else:
                    self.estimates.record_first_load(model_id, seconds)
            slot.warm = bool(message.timings)
            self._cond.notify_all()  # start() waits on this
            if self._phase == "running":
                log.info("slot %d (%s): worker %s ready again", slot.index, slot.device, slot.pid)
                self._dispatch(now)
            return
        if isinstance(message, StartFailed):
            slot.last_error = message.message
            return
        job = slot.job
        if job is None or job.id != message.job_id:
            return  # a late message about a job this slot no longer runs
        if isinstance(message, Stage):
            stage = message.stage
            slot.phase, slot.phase_since = stage, now
            if stage == JobStage.LOADING:
                slot.loading_at, slot.model = now, None
            elif stage == JobStage.GENERATING:
                slot.generating_at, slot.model = now, job.spec.id
            job.emit(Progress(JobStage(stage), total=job.request.steps if stage == JobStage.GENERATING else 0,
                              slot=slot.index))
        elif isinstance(message, Step):
            slot.step, slot.total, slot.last_step_at = message.step, message.total, now
            if slot.first_step_at is None:
                slot.first_step_at = now
            job.emit(Progress(JobStage.STEP, step=slot.step, total=slot.total, slot=slot.index))
        elif isinstance(message, Preview):
            job.emit(message.progress(slot.index))
        elif isinstance(message, (Done, Failed)):
            state = message.state
            if state.model == job.spec.id and state.plan:
                self.estimates.replanned(job.spec.id, state.plan)  # before the load and run below are recorded
            if slot.loading_at is not None and slot.generating_at is not None:
                from_cache = slot.counts_before[1] + state.cache_hits > slot.cache_hits
                load_s = slot.generating_at - slot.loading_at
                if slot.warm:
                    self.estimates.record_load(job.spec.id, load_s, cached=from_cache)
                else:
                    self.estimates.record_first_load(job.spec.id, load_s)
                slot.warm = True
            slot.job, slot.last_used, slot.crashes_in_row = None, now, 0
            self.turns.ended(job, now - slot.job_started_at, now)
            self._apply_state(slot, state)
            if isinstance(message, Done):
                slot.jobs_done += 1
                if slot.generating_at is not None:
                    self.estimates.record_run(job.spec.id, job.request, now - slot.generating_at)
                if slot.last_step_at is not None:
                    self.estimates.record_tail(job.spec.id, now - slot.last_step_at)
                outcome = message.result
            else:
                slot.jobs_failed += 1
                outcome = message.error
            self._end(job, outcome)
            self._dispatch(now)

    def _apply_state(self, slot: WorkerSlot, state: WorkerState) -> None:
        """What the worker says it holds, and its counters on top of earlier incarnations'."""
        loads_before, hits_before = slot.counts_before
        slot.model, slot.cached, slot.loras = state.model, list(state.cached), state.loras
        slot.plan = state.plan
        slot.loads, slot.cache_hits = loads_before + state.loads, hits_before + state.cache_hits

    def _on_exit(self, slot: WorkerSlot, exitcode: int | None, now: float) -> None:
        """The worker process is gone: fail its job, and plan a restart unless we are stopping."""
        was = slot.state
        slot.state, slot.model, slot.cached, slot.loras = "dead", None, [], ()
        slot.counts_before = (slot.loads, slot.cache_hits)
        job, slot.job = slot.job, None
        if self._phase in ("stopping", "stopped"):
            slot.state = "stopped"
            if job is not None:
                self._end(job, JobCancelled(f"job {job.id} was cancelled: the studio is shutting down"))
            return
        how = describe_exit(exitcode)
        if was == "starting":
            slot.last_error = slot.last_error or f"the worker {how} before it was ready"
            slot.failed_starts += 1
        else:
            slot.last_error = f"the worker {how}"
        log.warning("slot %d (%s): %s", slot.index, slot.device, slot.last_error)
        if job is not None:
            slot.jobs_failed += 1
            self._end(job, WorkerFailed(
                f"slot {slot.index} ({slot.device}) failed while running this job: the worker {how}; "
                "the slot is restarting, try again"
            ))
        if self._phase == "starting":
            self._cond.notify_all()  # start() reports it; no restarts before the studio is up
            return
        if was == "starting" and slot.preload:
            # Preloading is only a head start; a slot that cannot come up with it comes up empty.
            log.warning("slot %d (%s): restarting without preloading %s", slot.index, slot.device,
                        ", ".join(spec.id for spec in slot.preload))
            slot.preload = []
        if slot.killed:
            slot.killed = False
        else:
            if now - slot.started_at >= STABLE_S:
                slot.crashes_in_row = 0
            slot.crashes_in_row += 1
        delay = restart_delay(slot.crashes_in_row, self.restart_base_s, self.restart_cap_s)
        slot.restart_at = now + delay
        if delay:
            log.warning("slot %d (%s): restarting in %.0f s (%d crashes in a row)",
                        slot.index, slot.device, delay, slot.crashes_in_row)
        down = self._down_reason(now)
        if down:
            # Nobody can serve the queue: waiting jobs learn it now instead of hanging.
            for queued in [*self._queue, *self.admission.clear()]:
                self._end(queued, WorkerFailed(down))
            self._queue.clear()
        self._cond.notify_all()

    def _queue_full(self, job: Job, now: float) -> QueueFull:
        """The refusal, with when a job arriving now would get a place (behind the waiting room);
        with no slot up to estimate from (restarting), the policy's short, honest guess."""
        line = self._line()
        if self.owner_limit.blocks(job, line) and not self.admission.limit.blocks(job, line):
            room_s = self.turns.owner_place_in_s(job.owner, self._queue, self._slots, now)  # its owner's own jobs
        else:
            room_s = room_in_s([*self._queue, *self.admission.room], self._slots, self.estimates, now,
                               self.settings.max_queue)
        return self.admission.refusal(job, line, room_s)

    def _expire_waiting_room(self, now: float) -> None:
        """Jobs that found no place within ``--queue-wait`` are refused, as they would have been at once."""
        expired = self.admission.expired(now)
        for job in expired:
            self._end(job, self._queue_full(job, now))
        if expired:
            self._renumber()

    def _down_reason(self, now: float) -> str | None:
        """Why no job can run now (every slot's workers keep dying at start), or None while one could.

        A job that crashes its worker does not count: the next worker comes up, and the jobs behind it run.
        """
        if not all(slot.state == "dead" and slot.failed_starts >= DOWN_AFTER_FAILED_STARTS for slot in self._slots):
            return None
        slots = "; ".join(
            f"slot {slot.index} ({slot.device}): {slot.last_error}, next restart in "
            f"{max(0.0, (slot.restart_at or now) - now):.0f} s"
            for slot in self._slots
        )
        return f"no slot can run jobs, every worker keeps failing ({slots}); try again later"

    # -- threads ------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        """Start a worker process for ``slot`` and the thread that reads its messages."""
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            name=f"studio-slot-{slot.index}",
            args=(slot.index, slot.device, child_conn, slot.preload),
            kwargs={
                "fault_hook": self.settings.fault_hook,
                "threads": cpu_threads(len(self._slots)),
                "engine_options": self.engine_options,
            },
        )
        with self._cond:
            slot.generation += 1
            generation = slot.generation
            slot.state, slot.started_at, slot.restart_at = "starting", time.monotonic(), None
            slot.process, slot.conn, slot.unreachable, slot.last_error = process, parent_conn, False, None
            slot.warm = False
        try:
            process.start()
        except Exception as exc:  # out of processes, unpicklable preload ...
            child_conn.close()
            with self._locked():
                slot.process = None
                slot.last_error = f"could not start the worker process: {exc}"
                if slot.generation == generation:
                    self._on_exit(slot, None, time.monotonic())
            return
        child_conn.close()  # the child holds its end now; ours must go so its death reads as EOF
        reader = threading.Thread(
            target=self._read, args=(slot, generation, process, parent_conn),
            name=f"slot-{slot.index}-reader", daemon=True,
        )
        self._threads = [thread for thread in self._threads if thread.is_alive()] + [reader]
        reader.start()

    def _read(self, slot: WorkerSlot, generation: int, process, conn) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # one message that did not unpickle must not deafen the slot
                log.exception("slot %d: unreadable message from the worker", slot.index)
                continue
            with self._locked():
                if slot.generation == generation:
                    self._handle(slot, message, time.monotonic())
        reap(process, slot.reap_lock, 5)  # for the exit code
        with self._locked():
            if slot.generation == generation:
                self._on_exit(slot, process.exitcode, time.monotonic())

    def _supervise(self) -> None:
        """Timeouts, restarts, and waiting jobs whose best choice changes with time."""
        while True:
            restart = []
            with self._locked():
                self._cond.wait(TICK_S)
                if self._phase != "running":
                    return
                now = time.monotonic()
                self._enforce_timeouts(now)
                self._expire_waiting_room(now)
                for slot in self._slots:
                    if slot.state == "dead" and slot.restart_at is not None and slot.restart_at <= now:
                        slot.restart_at = None
                        slot.restarts += 1
                        restart.append(slot)
                self._dispatch(now)
            for slot in restart:
                log.info("slot %d (%s): starting a new worker", slot.index, slot.device)
                self._spawn(slot)

    def _enforce_timeouts(self, now: float) -> None:
        limit = self.settings.job_timeout_s  # read at every check: a changed setting applies at once
        for slot in self._slots:
            job = slot.job
            stuck = (self.admission.load_stuck(job, slot.loading_at, now, f"slot {slot.index} ({slot.device})",
                                               "the slot restarts")
                     if job is not None and slot.phase == "loading" and slot.process is not None and not slot.killed
                     else None)
            if stuck is not None:
                log.warning("slot %d (%s): loading %s took longer than %g s; killing the worker",
                            slot.index, slot.device, job.spec.id, self.settings.load_timeout_s)
                self._end(job, stuck)
                slot.killed = True
                kill(slot.process, slot.reap_lock)
            if job is None or not limit or slot.phase == "loading":
                continue  # a model's load is no part of the job's time limit: it counts from the load's end
            running_s = now - (slot.generating_at or slot.job_started_at)
            if running_s >= limit:
                self._cancel(job, JobTimeout(
                    f"job {job.id} ran longer than {limit:g} s on slot {slot.index} ({slot.device}) and was cancelled"
                ), now)
            if running_s >= limit + self.cancel_grace_s and slot.process is not None and not slot.killed:
                log.warning("slot %d (%s): worker ignored the cancel of job %s for %.0f s; killing it",
                            slot.index, slot.device, job.id, self.cancel_grace_s)
                slot.killed = True
                kill(slot.process, slot.reap_lock)


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



LocalBackend = SlotManager  # the name ``studio.server`` chooses it by
