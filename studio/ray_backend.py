"""``RayBackend``: the ``Backend`` for many GPUs on many machines, on Ray Serve.

One Serve deployment, ``EngineReplica`` (``studio.ray_replica``): each replica holds one ``Engine`` on one GPU
(``ray_actor_options={"num_gpus": 1}``), or on the CPU when the cluster has no GPU. Serve places
the replicas anywhere in the cluster, restarts the ones that die, and scales their number between
``--min-replicas`` and ``--max-replicas``. Affinity is Serve's model multiplexing: every job is
sent with ``multiplexed_model_id=<model id>``, and a replica keeps one model resident (the
multiplexed LRU has room for one; the Engine's RAM cache parks the others as on a local slot), so
Serve routes a job to a replica that already holds its model when one is free.

A job is one streaming call: the replica yields the worker protocol's ``Stage`` and ``Step``
messages while it runs and ends with ``Done`` or ``Failed``; the parent turns them into the same
``Progress`` events and errors as the local backend. Cancelling cancels the call: Serve raises
``CancelledError`` in the replica's generator, which stops the Engine at its next step. A job
past ``settings.job_timeout_s`` is cancelled the same way and fails with ``JobTimeout``; a replica
that dies fails only its own job (``WorkerFailed``).

Admission is the local backend's policy (``studio.admission``): past ``--max-queue`` (or its owner's
``--max-queue-per-user``, counted with her jobs waiting for downloads) a job waits up to ``--queue-wait``
in this process for a place, or is refused with a Retry-After from the running jobs' pace; a load past
``--load-timeout`` fails its job and its replica is killed (Serve replaces it). Admitted jobs wait in
this process too (``studio.rayqueue.RayQueue``) while every replica is busy, and are sent one per free
replica in fair-share order (``studio.turns``, ``--max-running-per-user`` included), since Serve's own
queue is first come, first served.

The FastAPI app stays one process in front (it is the Ray driver); it imports this module only
with ``--backend ray`` (``pip install "ray[serve]>=2.60,<3"``). Replicas import torch; this module's top level does not.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, TaskCancelledError
from ray.serve.exceptions import RequestCancelledError

from studio.admission import Admission, Line, Verdict
from studio.backend import BackendStatus, Observer, SlotState, SlotStatus
from studio.catalog import Catalog, ModelSpec
from studio.config import Settings
from studio.errors import JobCancelled, JobTimeout, QueueFull, StudioError, WorkerFailed
from studio.jobs import ANONYMOUS, Job
from studio.owners import tally
from studio.protocol import Done, Failed, Preview, Stage, Step
from studio.rayauth import join_ray
from studio.ray_replica import Placed, census, kill_replica, replica_application, slot_status
from studio.rayqueue import RayQueue
from studio.schemas import GenerationRequest, JobStage, Progress
from studio.turns import OwnerLimit

log = logging.getLogger(__name__)

APP_NAME = "studio"
ALIVE_S = 5.0  # a replica not heard from for this long is not alive (dead, or its machine is gone;
                # after studio.ray_replica.FORGET_S it leaves /health)
STATUS_WAIT_S = 5.0  # /health waits this long for the census
FIRST_REPORT_S = 30.0  # start() waits this long for the replicas' first reports
PLANNED_REPLICAS = 4  # before start, without --replicas: how many jobs the UI lets run at once
POLL_S = 0.25  # through Ray Client (no streaming), progress is read from the census this often
STOP_WAIT_S = 30.0  # shutdown waits this long for the jobs it cancelled to end
TICK_S = 0.25  # how often the waiting room's deadlines and the loads' timeouts are looked at
CENSUS_TICKS = 8  # ... and every this many ticks, how many replicas are alive


# ---------------------------------------------------------------- the backend (runs in the app)


class RayBackend:
    """Jobs go to a Ray Serve deployment of ``EngineReplica``; see the module docstring."""

    def __init__(self, settings: Settings, catalog: Catalog):
        self.settings = settings
        self.catalog = catalog
        self._lock = threading.Lock()
        self._observers: list[Observer] = []
        self._running: dict[str, tuple[Job, Any]] = {}  # job id -> (job, its streaming call once sent): admitted jobs
        self.queue = RayQueue(settings)  # those held in this process, those sent, and their pace
        self._loading: dict[str, tuple[float, Placed]] = {}  # job id -> (loading since, where) while its model loads
        self.admission = Admission.from_settings(settings)  # --max-queue, --queue-wait, --load-timeout
        self.owner_limit = OwnerLimit(  # the download phase joins it: one count with the jobs waiting for downloads
            lambda: settings.max_queue_per_user, jobs=lambda: self._line().queued, lock=self._lock,
            starts_in_s=lambda owner: self.queue.owner_starts_in_s(owner, self._waiting(), self._idle(),
                                                                   time.monotonic()))
        self.admission.rules.append(self.owner_limit)
        self._seq = itertools.count()
        self._replicas: dict[str, int] = {}  # replica id -> its slot index, in order of first sight
        self._handle = None
        self._owns_app = False  # this backend deployed the replicas (else it found them running)
        self._connected = False  # this backend called ray.init
        self._own_ray = False  # ... and that started a local Ray instance, not a connection to a cluster
        self._ray_released = threading.Event()  # ends the thread that started Ray (see rayauth.join_ray)
        self._phase = "new"  # new | starting | running | stopping | stopped
        self._census = None  # the Census actor, once Ray is up
        self._streaming = not (settings.ray_address or "").startswith("ray://")  # Ray Client cannot stream
        self._replica_count = settings.replicas or 1  # from the last census: how many jobs run at once

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Connect to (or start) Ray, deploy the replicas and wait until they are all up."""
        with self._lock:
            if self._phase != "new":
                raise WorkerFailed(f"the Ray backend was already started ({self._phase})")
            self._phase = "starting"
        try:
            if not ray.is_initialized():
                address = self.settings.ray_address
                join_ray(address, self._ray_released)
                self._connected = True
                self._own_ray = address is None and not os.environ.get("RAY_ADDRESS")  # started just now: ours to stop
            self._census = census()
            if APP_NAME in serve.status().applications:
                # Deployed by someone else (a KubeRay RayService, another studio): use it as it is.
                self._handle = serve.get_app_handle(APP_NAME)
                log.info("ray backend: using the running '%s' application", APP_NAME)
            else:
                serve.start(proxy_location="Disabled")
                self._handle = serve.run(replica_application(self.settings), name=APP_NAME, route_prefix=None)
                self._owns_app = True
        except Exception as exc:
            self._phase = "stopped"
            raise WorkerFailed(f"the Ray backend could not start: {type(exc).__name__}: {exc}") from exc
        self._phase = "running"
        threading.Thread(target=self._supervise, name="ray-supervisor", daemon=True).start()
        # Serve says the replicas are up; wait (briefly) until they have reported, so /health lists them.
        deadline = time.monotonic() + FIRST_REPORT_S
        while not (slots := self.status().slots) and time.monotonic() < deadline:
            time.sleep(0.1)
        log.info("ray backend ready: %s", ", ".join(f"{s.index}={s.device}" for s in slots) or "no replica reported")

    def shutdown(self) -> None:
        """Cancel every job, remove the deployment, and stop Ray when this process started it."""
        with self._lock:
            if self._phase in ("stopping", "stopped", "new"):
                self._phase = "stopped"
                return
            self._phase = "stopping"
            running = list(self._running.values())
            waiting = self.admission.clear()
        for job in waiting:
            self._end(job, JobCancelled(f"job {job.id} was cancelled: the studio is shutting down"))
        for job, _ in running:
            self._cancel(job, JobCancelled(f"job {job.id} was cancelled: the studio is shutting down"))
        deadline = time.monotonic() + STOP_WAIT_S
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            if self._owns_app:
                serve.delete(APP_NAME)
                if self._census is not None:
                    ray.kill(self._census)
            if self._own_ray:
                serve.shutdown()
            if self._connected:
                ray.shutdown()
        except Exception:  # the cluster may already be gone
            log.exception("ray backend: shutting down")
        finally:
            self._ray_released.set()
        self._phase = "stopped"

    # -- the public API ------------------------------------------------------------

    def submit(self, spec: ModelSpec, request: GenerationRequest, owner: str = ANONYMOUS) -> Job:
        """Send ``owner``'s job to the deployment, or to the waiting room past ``settings.max_queue`` waiting jobs
        (its ``wait()`` may then raise ``QueueFull``); ``QueueFull`` at once when the room is full too."""
        job = Job(spec, request, on_cancel=self.cancel, seq=next(self._seq), owner=owner)
        with self._lock:
            refusal = None
            if self._phase != "running":
                refusal = WorkerFailed("the studio is not running (starting up or shutting down); try again shortly")
            else:
                verdict = self.admission.admit(job, self._line(), time.monotonic())
                if verdict is Verdict.REFUSE:
                    refusal = self._queue_full(job)
                elif verdict is Verdict.QUEUE:
                    self._running[job.id] = (job, None)
                    self.queue.hold(job)
        if refusal is not None:
            self._end(job, refusal)  # observers (metrics) count refusals from every face
            raise refusal
        self._renumber()
        self._release()
        return job

    def _release(self) -> None:
        """Send held jobs to Serve while a replica has room for them, each the next in fair-share order."""
        with self._lock:
            if self._phase != "running":
                return
            jobs = self.queue.release(self.queue.places(self._replica_count), time.monotonic())
        for job in jobs:
            threading.Thread(target=self._follow, args=(job,), name=f"ray-job-{job.id[:8]}", daemon=True).start()
        if jobs:
            self._renumber()

    def cancel(self, job: Job, error: StudioError | None = None) -> bool:
        """What ``Job.cancel()`` does; False when the job had already ended."""
        return self._cancel(job, error or JobCancelled(f"job {job.id} was cancelled"))

    def add_observer(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)

    def status(self) -> BackendStatus:
        """One line per replica, from what each last reported, and the jobs waiting in Serve's queue."""
        with self._lock:
            census, phase, in_flight, waiting = self._census, self._phase, len(self._running), len(self.admission.room)
            jobs = [job for job, _ in self._running.values()]
            # A job is running once a replica has taken it (its slot is known), else waiting (in Serve's queue or ours).
            owners = tally(queued=[job for job in jobs if job.slot is None] + list(self.admission.room),
                           running=[job for job in jobs if job.slot is not None])
        if phase in ("new", "starting"):  # not connected yet: the replicas that are planned
            planned = self.settings.max_replicas or self.settings.replicas or PLANNED_REPLICAS
            slots = tuple(SlotStatus(index, "ray", SlotState.STARTING, alive=False) for index in range(planned))
            return BackendStatus(slots=slots, max_queue=self.settings.max_queue)
        lines = []
        if census is not None and phase == "running":
            try:
                lines = ray.get(census.lines.remote(), timeout=STATUS_WAIT_S)
            except Exception as exc:  # the cluster is unreachable: no replica to show
                log.warning("ray backend: no census: %s: %s", type(exc).__name__, exc)
        slots = tuple(sorted((slot_status(line, self._slot_index(line["replica"]), age < ALIVE_S, age)
                              for line, age in lines), key=lambda slot: slot.index))
        alive = [slot for slot in slots if slot.alive]
        if alive:
            self._replica_count = len(alive)
            self.queue.resident = {slot.index: slot.model for slot in alive if slot.model}  # what the replicas say
        busy = sum(1 for slot in alive if slot.busy)
        return BackendStatus(slots=slots, queue_depth=max(0, in_flight - busy), max_queue=self.settings.max_queue,
                             waiting_room=waiting, accepting=phase == "running", owners=owners)

    # -- following one job ---------------------------------------------------------

    def _follow(self, job: Job) -> None:
        """Send ``job`` to the deployment and relay its stream: progress, then its outcome. Its place
        frees once the call has ended (for a cancelled job: once its replica has stopped it)."""
        try:
            if not job.done():
                self._send_and_relay(job)
        finally:
            with self._lock:
                self.queue.ended(job, time.monotonic())
            self._release()

    def _send_and_relay(self, job: Job) -> None:
        if self._streaming:
            call = self._handle.options(stream=True, multiplexed_model_id=job.spec.id).generate.remote(
                job.id, job.spec, job.request)
        else:  # Ray Client cannot stream: one call, and the progress from the census
            call = self._handle.options(multiplexed_model_id=job.spec.id).run.remote(job.id, job.spec, job.request)
        with self._lock:
            if job.id not in self._running:  # cancelled before it was sent
                call.cancel()
                return
            self._running[job.id] = (job, call)
        limit = self.settings.job_timeout_s
        timer = threading.Timer(limit, self._cancel, args=(job, JobTimeout(
            f"job {job.id} ran longer than {limit:g} s and was cancelled"))) if limit else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        placed: list[Placed] = []
        try:
            outcome = self._relay(job, call, placed) if self._streaming else self._poll(job, call, placed)
        except (RequestCancelledError, TaskCancelledError, asyncio.CancelledError):
            outcome = JobCancelled(f"job {job.id} was cancelled")  # the cancel already set the outcome
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if placed and self._census is not None:
                self._census.forget.remote(placed[0].replica)
            outcome = WorkerFailed(f"the replica running job {job.id} failed: {type(exc).__name__}; "
                                   "Serve is replacing it, try again")
        except Exception as exc:  # noqa: BLE001 - anything else from Ray still ends the job, once
            outcome = WorkerFailed(f"the Ray backend lost job {job.id}: {type(exc).__name__}: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
        self._end(job, outcome)

    def _relay(self, job: Job, call: Iterator, placed: list[Placed]) -> Any:
        """Turn the replica's messages into ``job``'s events; returns its outcome. ``placed`` gets where it runs."""
        for message in call:
            if isinstance(message, Placed):
                self._place(job, message, placed)
            elif isinstance(message, Stage):
                total = job.request.steps if message.stage == JobStage.GENERATING else 0
                self._progress(job, Progress(JobStage(message.stage), total=total, slot=job.slot), placed)
            elif isinstance(message, Step):
                self._progress(job, Progress(JobStage.STEP, step=message.step, total=message.total, slot=job.slot))
            elif isinstance(message, Preview):
                job.emit(message.progress(job.slot or 0))
            else:
                return self._outcome(job, message)
        return self._outcome(job, None)

    def _place(self, job: Job, where: Placed, placed: list[Placed]) -> None:
        """A replica took ``job``: its slot, the model that replica holds now, and everyone behind moves up."""
        placed.append(where)
        job.slot = self._slot_index(where.replica)
        with self._lock:
            self.queue.resident[job.slot] = job.spec.id
        self._renumber()

    def _poll(self, job: Job, call, placed: list[Placed]) -> Any:
        """``_relay`` for a call that cannot stream: the replica's census line, a few times a second."""
        seen: tuple = (None, None, 0)
        while True:
            try:
                return self._outcome(job, call.result(timeout_s=POLL_S))
            except TimeoutError:
                pass
            line = ray.get(self._census.job.remote(job.id), timeout=STATUS_WAIT_S)
            if line is None:
                continue
            if not placed:
                self._place(job, Placed(line["replica"], line["device"]), placed)
            stage = JobStage.LOADING if line["loading"] else JobStage.GENERATING if line["total"] else None
            current = (line["replica"], stage, line["step"])
            if stage and stage != seen[1]:
                self._progress(job, Progress(stage, total=job.request.steps if stage == JobStage.GENERATING else 0,
                                             slot=job.slot), placed)
            if line["step"] and line["step"] != seen[2]:
                self._progress(job, Progress(JobStage.STEP, step=line["step"], total=line["total"], slot=job.slot))
            seen = current

    def _progress(self, job: Job, progress: Progress, placed: list[Placed] | None = None) -> None:
        """Emit ``progress``; a load's start arms ``--load-timeout``, and the steps tell when the job
        should end (``RayQueue.ends_in_s``)."""
        now = time.monotonic()
        with self._lock:
            if job.id in self._running:  # a late message of an ended job leaves nothing behind
                if progress.stage == JobStage.LOADING and placed:
                    self._loading[job.id] = (now, placed[0])
                elif progress.stage in (JobStage.GENERATING, JobStage.STEP):
                    self._loading.pop(job.id, None)
                    self.queue.paced(job, progress, now)
        job.emit(progress)

    # -- admission -------------------------------------------------------------------

    def _line(self) -> Line:
        """The admitted jobs no replica has taken yet: held here or sent (under ``self._lock``)."""
        queued = [job for job, _ in self._running.values() if job.slot is None]
        return Line(queued, max(0, len(self._running) - self._capacity()))

    def _waiting(self) -> list[Job]:
        """The admitted jobs no replica has taken yet, in the order they should start: those sent to Serve,
        then those held here in fair-share order (under ``self._lock``)."""
        sent = [job for job in self.queue.sent if job.slot is None and job.id in self._running]
        return [*sent, *self.queue.line(time.monotonic())]

    def _idle(self) -> int:
        """Replicas running nothing of ours (under ``self._lock``)."""
        return max(0, self._capacity() - sum(1 for job, _ in self._running.values() if job.slot is not None))

    def _queue_full(self, job: Job) -> QueueFull:
        """The refusal, with when a job arriving now would get a place: once as many running jobs have
        ended as wait in the room before it, and one more; past its owner's limit, once her first waiting
        job starts (under ``self._lock``)."""
        line = self._line()
        if self.owner_limit.blocks(job, line) and not self.admission.limit.blocks(job, line):
            return self.admission.refusal(job, line, self.owner_limit.place_in_s(job.owner, line))
        return self.admission.refusal(job, line, self.queue.ends_in_s(len(self.admission.room) + 1, time.monotonic()))

    def _renumber(self) -> None:
        """Tell each waiting job its place and when it should start (a replica is free, or running jobs end)."""
        with self._lock:
            line, idle, now = [*self._waiting(), *self.admission.room], self._idle(), time.monotonic()
            self.admission.announce(line, lambda position: self.queue.ends_in_s(position + 1 - idle, now))

    def _supervise(self) -> None:
        """Let waiting jobs into free places, refuse those whose wait is over, fail stuck loads, and count
        the replicas alive (how many jobs go to Serve at once) from the census every few seconds."""
        for tick in itertools.count(1):
            if self._phase != "running":
                return
            time.sleep(TICK_S)
            if tick % CENSUS_TICKS == 0:
                self.status()
            self._tick(time.monotonic())

    def _tick(self, now: float) -> None:
        with self._lock:
            refusals = [(job, self._queue_full(job)) for job in self.admission.expired(now)]
            loads = [(self._running[job_id][0], since, where) for job_id, (since, where) in self._loading.items()]
        for job, refusal in refusals:
            self._end(job, refusal)
        for job, since, where in loads:
            error = self.admission.load_stuck(job, since, now, f"replica {job.slot} ({where.device})",
                                              "its replica is replaced")
            if error is None:
                continue
            log.warning("replica %s: loading %s took longer than %g s; killing the replica",
                        where.replica, job.spec.id, self.settings.load_timeout_s)
            self._cancel(job, error)
            kill_replica(where.replica, self._census)
        self._let_in()

    def _let_in(self) -> None:
        """Admit the waiting room's jobs that now have a place, in the order they came, and send what may go."""
        with self._lock:
            if self._phase != "running":
                return
            admitted = []
            for job in self.admission.let_in(self._line):  # asks the line again after each is placed
                self._running[job.id] = (job, None)
                self.queue.hold(job)
                admitted.append(job)
        self._release()
        if admitted:
            self._renumber()

    def _outcome(self, job: Job, message) -> Any:
        """The job's result or error from the replica's last message."""
        if isinstance(message, Done):
            message.result.slot = job.slot or 0
            return message.result
        if isinstance(message, Failed):
            return message.error
        return WorkerFailed(f"the replica ended job {job.id} without a result")

    # -- ending jobs ---------------------------------------------------------------

    def _cancel(self, job: Job, error: StudioError) -> bool:
        with self._lock:
            if job.ending:
                return False
            if self.admission.leave(job):  # in the waiting room: never sent
                call = None
            elif job.id in self._running:
                _, call = self._running[job.id]
            else:
                return False
        if call is not None:
            call.cancel()
        return self._end(job, error)

    def _end(self, job: Job, outcome: Any) -> bool:
        """The first outcome wins: observers see it, then the job's waiters; a freed place goes to the next."""
        with self._lock:
            if not job.claim_outcome():
                return False
            freed = self._running.pop(job.id, None) is not None
            self.queue.drop(job)
            self._loading.pop(job.id, None)
            observers = list(self._observers)
        settled = job.settle(outcome, observers)
        if freed:
            self._let_in()
            self._renumber()
        return settled

    # -- slots ---------------------------------------------------------------------

    def _capacity(self) -> int:
        return max(1, self._replica_count)

    def _slot_index(self, replica: str) -> int:
        with self._lock:
            return self._replicas.setdefault(replica, len(self._replicas))
