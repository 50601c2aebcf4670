"""``SlotManager`` (the local ``Backend``): one spawned worker process per device, one central queue.

Jobs wait in one queue in the parent (in arrival order; ``studio.turns`` offers them to routing in
fair-share order between owners, within the per-owner limits) and are bound to a slot only when a
slot is free (late binding). With ``--batch-window-ms``, ``studio.batching`` gathers compatible jobs
among those offered into one call on one slot (each member ends on its own; the slot is free when
all have). Who gets a place in the queue (``--max-queue``, the waiting room of
``--queue-wait``, Retry-After) and when a load is stuck (``--load-timeout``) is the policy of
``studio.admission``, shared with the Ray backend and the download phase. Which job goes where, and
the estimates, are ``studio.routing``'s; the devices ``studio.devices``'; the messages
``studio.protocol``'s; each slot's own bookkeeping (process, counters, back-off) is
``studio.workerslot.WorkerSlot``'s. This module supervises: it holds the queue and the lock,
spawns the workers, reads their messages, enforces timeouts and restarts.

A worker that dies fails only its in-flight jobs (``WorkerFailed``) and is restarted, with a
back-off when it keeps dying (and without its preloads once a restart failed to come up). While
every slot is down (its last workers died before they were ready), jobs are refused with
``WorkerFailed`` rather than left waiting; the restarts go on, and the first worker that comes up
serves again. A job running past ``settings.job_timeout_s`` is cancelled and fails with
``JobTimeout``; a worker that ignores the cancel for ``cancel_grace_s`` is killed. A model load
(which no cancel can interrupt) past ``settings.load_timeout_s`` fails its job with
``ModelLoadFailed``, and the worker is killed and replaced.

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import atexit
import bisect
import itertools
import logging
import multiprocessing
import threading
import time
from contextlib import contextmanager
from typing import Any

from studio.admission import Admission, Line, Verdict
from studio.backend import BackendStatus, Observer, SlotState
from studio.batching import calls, gather
from studio.catalog import Catalog, ModelSpec
from studio.config import Settings
from studio.devices import cpu_threads, preload_plan, resolve_devices
from studio.errors import JobCancelled, JobTimeout, QueueFull, StudioError, WorkerFailed
from studio.jobs import ANONYMOUS, Job
from studio.owners import tally
from studio.protocol import CancelJob, Done, Failed, FromWorker, Preview, Ready, Stage, StartFailed, Step, Stop
from studio.routing import STARVATION_S, Estimates, backlog, plan_dispatch, room_in_s, starts_in_s
from studio.schemas import GenerationRequest
from studio.speed import EngineOptions
from studio.turns import OwnerLimit, Turns
from studio.worker import worker_main
from studio.workerslot import RESTART_BASE_S, RESTART_CAP_S, WorkerSlot, down_reason, kill, reap

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 10.0  # a worker gets this long to honour a timeout's cancel before it is killed
TICK_S = 0.25  # how often the supervisor looks at timeouts, restarts and waiting jobs
STOP_JOIN_S = 10.0  # shutdown waits this long for workers to exit before killing them


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
        # Queued jobs as the slots will run them (compatible ones as one call): what the estimates play forward.
        self._calls = lambda jobs: calls(jobs, settings.batch_window_ms / 1000, settings.max_batch)
        self.owner_limit = OwnerLimit(  # the download phase joins it: one count with the jobs waiting for downloads
            lambda: settings.max_queue_per_user, jobs=lambda: self._queue, lock=self._cond,
            starts_in_s=lambda owner: self.turns.owner_place_in_s(owner, self._queue, self._slots, time.monotonic(),
                                                                self._calls))
        self.admission.rules.append(self.owner_limit)
        self._seq = itertools.count()
        self._observers: list[Observer] = []
        self._ended: list[tuple[Job, Any]] = []  # finished under the lock, settled after it
        self._threads: list[threading.Thread] = []
        self._supervisor: threading.Thread | None = None
        self._phase = "new"  # new | starting | running | stopping | stopped
        self._wake_at: float | None = None  # when a batch waiting for companions (--batch-window-ms) must start

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
            self._cond.wait_for(lambda: all(slot.state != SlotState.STARTING for slot in self._slots))
            failed = [slot for slot in self._slots if slot.state != SlotState.READY]
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
            for job in self._running():
                self._end(job, JobCancelled(f"job {job.id} was cancelled: {reason}"))
            self._cond.notify_all()
        atexit.unregister(self.shutdown)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()  # after this no restart can begin
        with self._cond:
            for slot in self._slots:
                slot.send(Stop())  # also cancels the running job, at its next step
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
                slot.state = SlotState.STOPPED
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
            down = down_reason(self._slots, now)
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
            slots = tuple(slot.status(now) for slot in self._slots)
            return BackendStatus(
                slots=slots,
                queue_depth=len(self._queue),
                max_queue=self.settings.max_queue,
                waiting_room=len(self.admission.room),
                accepting=self._phase == "running",
                owners=tally(queued=[*self._queue, *self.admission.room], running=self._running()),
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

    def _running(self) -> list[Job]:
        return [job for slot in self._slots for job in slot.members]

    def _bind(self, now: float) -> None:
        offered, due = self.turns.order(self._queue, self._running(), now)  # fair share, --max-running-per-user
        batches, self._wake_at = gather(offered, now, self.settings.batch_window_ms / 1000, self.settings.max_batch)
        by_lead = {batch.lead: batch for batch in batches}  # routing places each batch by its first member
        for job, slot, why in plan_dispatch(list(by_lead), self._slots, self.estimates, now, self.starvation_s,
                                            [job for job in due if job in by_lead], crowded=len(self.admission.room),
                                            batches=by_lead):
            if why:
                log.info("slot %d (%s) loads %s for job %s (holds %s): %s",
                         slot.index, slot.device, job.spec.id, job.id[:8], slot.model or "nothing", why)
            batch = by_lead[job]
            for member in batch.jobs:
                self.turns.started(member, self._queue)
                self._queue.remove(member)
            if not slot.run(batch, now):
                # The worker died between jobs and never got these: they go back to their places.
                for member in batch.jobs:
                    bisect.insort(self._queue, member, key=lambda queued: queued.seq)

    def _renumber(self) -> None:
        """Tell each job that moved its place in line, with when it should start (``wait_s``,
        from the same estimates as Retry-After; absent while no slot is up to estimate from)."""
        now = time.monotonic()
        line = [*self.turns.line(self._queue, now), *self.admission.room]
        starts = starts_in_s(line, self._slots, self.estimates, now, self._calls)
        self.admission.announce(line, lambda position: None if starts is None else starts[position])

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
            slot = next((slot for slot in self._slots if slot.member(job.id) is job), None)
            if slot is not None:
                slot.send(CancelJob(job.id))  # the slot stays busy until the worker confirms (a batch's others go on)
        self._end(job, error)
        return True

    def _handle(self, slot: WorkerSlot, message: FromWorker, now: float) -> None:
        if isinstance(message, Ready):
            slot.ready(message, self.estimates)
            self._cond.notify_all()  # start() waits on this
            if self._phase == "running":
                log.info("slot %d (%s): worker %s ready again", slot.index, slot.device, slot.pid)
                self._dispatch(now)
            return
        if isinstance(message, StartFailed):
            slot.last_error = message.message
            return
        job = slot.member(message.job_id)
        if job is None:
            return  # a late message about a job this slot no longer runs
        if isinstance(message, Stage):
            job.emit(slot.stage(job, message.stage, now))
        elif isinstance(message, Step):
            job.emit(slot.step_done(message.step, message.total, now))
        elif isinstance(message, Preview):
            job.emit(message.progress(slot.index))
        elif isinstance(message, (Done, Failed)):
            share = slot.batch.share(job)  # a batch's time is charged to its members by their images
            outcome, free = slot.job_ended(job, message, self.estimates, now)
            self.turns.ended(job, (now - slot.job_started_at) * share, now)
            self._end(job, outcome)
            if free:
                self._dispatch(now)

    def _on_exit(self, slot: WorkerSlot, exitcode: int | None, now: float) -> None:
        """The worker process is gone: fail its job, and plan a restart unless we are stopping."""
        stopping = self._phase in ("stopping", "stopped")
        was, jobs = slot.went_down(exitcode, stopping)
        if stopping:
            for job in jobs:
                self._end(job, JobCancelled(f"job {job.id} was cancelled: the studio is shutting down"))
            return
        log.warning("slot %d (%s): %s", slot.index, slot.device, slot.last_error)
        for job in jobs:  # they were running, so last_error says how the worker ended
            self._end(job, WorkerFailed(f"slot {slot.index} ({slot.device}) failed while running this job: "
                                        f"{slot.last_error}; the slot is restarting, try again"))
        if self._phase == "starting":
            self._cond.notify_all()  # start() reports it; no restarts before the studio is up
            return
        if was == SlotState.STARTING and slot.preload:
            # Preloading is only a head start; a slot that cannot come up with it comes up empty.
            log.warning("slot %d (%s): restarting without preloading %s", slot.index, slot.device,
                        ", ".join(spec.id for spec in slot.preload))
            slot.preload = []
        delay = slot.plan_restart(now, self.restart_base_s, self.restart_cap_s)
        if delay:
            log.warning("slot %d (%s): restarting in %.0f s (%d crashes in a row)",
                        slot.index, slot.device, delay, slot.crashes_in_row)
        down = down_reason(self._slots, now)
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
            room_s = self.owner_limit.place_in_s(job.owner, line)  # its owner's own jobs, wherever they wait
        else:
            room_s = room_in_s([*self._queue, *self.admission.room], self._slots, self.estimates, now,
                               self.settings.max_queue, self._calls)
        return self.admission.refusal(job, line, room_s)

    def _expire_waiting_room(self, now: float) -> None:
        """Jobs that found no place within ``--queue-wait`` are refused, as they would have been at once."""
        expired = self.admission.expired(now)
        for job in expired:
            self._end(job, self._queue_full(job, now))
        if expired:
            self._renumber()

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
            generation = slot.attach(process, parent_conn, time.monotonic())
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
                now = time.monotonic()  # a batch waiting for companions starts at its window's end
                self._cond.wait(TICK_S if self._wake_at is None else min(TICK_S, max(0.0, self._wake_at - now)))
                if self._phase != "running":
                    return
                now = time.monotonic()
                self._enforce_timeouts(now)
                self._expire_waiting_room(now)
                for slot in self._slots:
                    if slot.state == SlotState.DEAD and slot.restart_at is not None and slot.restart_at <= now:
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
                for member in slot.members:
                    self._end(member, stuck)
                slot.killed = True
                kill(slot.process, slot.reap_lock)
            if job is None or not limit or slot.phase == "loading":
                continue  # a model's load is no part of the job's time limit: it counts from the load's end
            running_s = now - (slot.generating_at or slot.job_started_at)
            for member in slot.members if running_s >= limit else ():  # a batch's members share its time
                self._cancel(member, JobTimeout(f"job {member.id} ran longer than {limit:g} s on slot {slot.index} "
                                                f"({slot.device}) and was cancelled"), now)
            if running_s >= limit + self.cancel_grace_s and slot.process is not None and not slot.killed:
                log.warning("slot %d (%s): worker ignored the cancel of job %s for %.0f s; killing it",
                            slot.index, slot.device, job.id, self.cancel_grace_s)
                slot.killed = True
                kill(slot.process, slot.reap_lock)


LocalBackend = SlotManager  # the name ``studio.server`` chooses it by
