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
that dies fails only its own job (``WorkerFailed``). Per-owner limits (``studio.turns``): past
``--max-running-per-user`` a job waits in this process until one of its owner's sent jobs ends;
``--max-queue-per-user`` counts the owner's jobs no replica has taken yet.

The FastAPI app stays one process in front (it is the Ray driver); it imports this module only
with ``--backend ray`` (``pip install "ray[serve]>=2.60,<3"``). Replicas import torch; this module's top level does not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, TaskCancelledError
from ray.serve.exceptions import RequestCancelledError

import studio
from studio.admission import Line
from studio.backend import BackendStatus, Observer, SlotStatus
from studio.catalog import Catalog, ModelSpec
from studio.config import Settings
from studio.errors import JobCancelled, JobTimeout, QueueFull, StudioError, WorkerFailed
from studio.jobs import ANONYMOUS, Job
from studio.owners import tally
from studio.turns import OwnerLimit
from studio.protocol import Done, Failed, Preview, Stage, Step
from studio.ray_replica import Placed, census, replica_application
from studio.schemas import GenerationRequest, JobStage, Progress

log = logging.getLogger(__name__)

APP_NAME = "studio"
ALIVE_S = 5.0  # a replica not heard from for this long is not alive (dead, or its machine is gone;
                # after studio.ray_replica.FORGET_S it leaves /health)
STATUS_WAIT_S = 5.0  # /health waits this long for the census
FIRST_REPORT_S = 30.0  # start() waits this long for the replicas' first reports
PLANNED_REPLICAS = 4  # before start, without --replicas: how many jobs the UI lets run at once
POLL_S = 0.25  # through Ray Client (no streaming), progress is read from the census this often
STOP_WAIT_S = 30.0  # shutdown waits this long for the jobs it cancelled to end
RETRY_AFTER_DEFAULT_S = 5  # a queue-full refusal's retry hint while no running job has made a step


AUTH_HINT = ("If the cluster uses token authentication (Ray 2.60+ turns it on for `ray start --head` when "
             "~/.ray/auth_token exists), give this machine its token: RAY_AUTH_TOKEN=<token>, or the token "
             "in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH); the studio then sets RAY_AUTH_MODE=token.")


def token_auth_for(address: str, environ) -> bool:
    """Whether joining the cluster at ``address`` should use token authentication: a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` does
    not say otherwise. Ray itself enables it only for a local cluster it finds, not an explicit address."""
    if environ.get("RAY_AUTH_MODE"):
        return environ["RAY_AUTH_MODE"].lower() == "token"
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    home = Path(environ.get("HOME") or Path.home())
    token_file = Path(environ.get("RAY_AUTH_TOKEN_PATH") or home / ".ray" / "auth_token")
    return token_file.is_file() and token_file.stat().st_size > 0


# ---------------------------------------------------------------- the backend (runs in the app)


class RayBackend:
    """Jobs go to a Ray Serve deployment of ``EngineReplica``; see the module docstring."""

    def __init__(self, settings: Settings, catalog: Catalog):
        self.settings = settings
        self.catalog = catalog
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)  # --max-running-per-user: a held job waits for its turn
        self._sent: Counter[str] = Counter()  # each owner's jobs sent to Serve (running or in Serve's queue)
        self.owner_limit = OwnerLimit(lambda: settings.max_queue_per_user)
        self._observers: list[Observer] = []
        self._running: dict[str, tuple[Job, Any]] = {}  # job id -> (job, its streaming call once sent)
        self._steps: dict[str, tuple[float, int, int]] = {}  # running job id -> (generating since, step, total)
        self._replicas: dict[str, int] = {}  # replica id -> its slot index, in order of first sight
        self._handle = None
        self._owns_app = False  # this backend deployed the replicas (else it found them running)
        self._connected = False  # this backend called ray.init
        self._own_ray = False  # ... and that started a local Ray instance, not a connection to a cluster
        self._ray_released = threading.Event()  # ends the thread that started Ray (see _init_ray)
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
                self._init_ray(address)
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
        # Serve says the replicas are up; wait (briefly) until they have reported, so /health lists them.
        deadline = time.monotonic() + FIRST_REPORT_S
        while not (slots := self.status().slots) and time.monotonic() < deadline:
            time.sleep(0.1)
        log.info("ray backend ready: %s", ", ".join(f"{s.index}={s.device}" for s in slots) or "no replica reported")

    def _init_ray(self, address: str | None) -> None:
        """``ray.init`` from a thread of this backend that lives until ``shutdown``. The kernel kills
        a local Ray's GCS and raylet (started with PR_SET_PDEATHSIG) when the *thread* that started
        them ends, and ``start`` may run on a server's pool thread that ends once idle: the cluster
        would vanish under the replicas, and the driver (this process) exit a minute later."""
        ready: Future = Future()

        if address and token_auth_for(address, os.environ):
            os.environ["RAY_AUTH_MODE"] = "token"  # Ray turns it on by itself only for a cluster it finds
            log.info("ray backend: joining %s with token authentication (a token is set)", address)

        def own_ray() -> None:
            try:
                # The replicas run this same code, shipped with the job: other machines need only the
                # requirements (and the models, in their HF cache or a shared one).
                ray.init(address=address, runtime_env={"py_modules": [str(Path(studio.__file__).parent)]},
                         namespace="studio", log_to_driver=False, include_dashboard=False)
            except BaseException as exc:
                if address and isinstance(exc, (ConnectionError, RuntimeError)):
                    exc = ConnectionError(f"{exc} {AUTH_HINT}")
                ready.set_exception(exc)
                return
            ready.set_result(None)
            self._ray_released.wait()

        threading.Thread(target=own_ray, name="ray-owner", daemon=True).start()
        ready.result()

    def shutdown(self) -> None:
        """Cancel every job, remove the deployment, and stop Ray when this process started it."""
        with self._lock:
            if self._phase in ("stopping", "stopped", "new"):
                self._phase = "stopped"
                return
            self._phase = "stopping"
            running = list(self._running.values())
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
        """Send ``owner``'s job to the deployment; ``QueueFull`` when ``settings.max_queue`` jobs already wait."""
        job = Job(spec, request, on_cancel=self.cancel, owner=owner)
        with self._lock:
            refusal = None
            if self._phase != "running":
                refusal = WorkerFailed("the studio is not running (starting up or shutting down); try again shortly")
            else:
                waiting = len(self._running) - self._capacity()
                # --max-queue-per-user counts the owner's jobs no replica has taken yet (held here or in Serve's queue).
                held = self.owner_limit.blocks(job, Line([each for each, _ in self._running.values()
                                                          if each.slot is None], waiting))
                if waiting >= self.settings.max_queue:
                    refusal = QueueFull.retry_in(
                        f"the queue is full: {waiting} jobs are waiting (limit {self.settings.max_queue})",
                        self._queue_place_in_s(), RETRY_AFTER_DEFAULT_S)
                elif held:
                    refusal = QueueFull.retry_in(held, self._queue_place_in_s(job.owner), RETRY_AFTER_DEFAULT_S)
            if refusal is None:
                self._running[job.id] = (job, None)
                position = max(0, len(self._running) - 1 - self._capacity())
        if refusal is not None:
            self._end(job, refusal)
            raise refusal
        job.emit(Progress(JobStage.QUEUED, queue_position=position))
        threading.Thread(target=self._follow, args=(job,), name=f"ray-job-{job.id[:8]}", daemon=True).start()
        return job

    def cancel(self, job: Job, error: StudioError | None = None) -> bool:
        """What ``Job.cancel()`` does; False when the job had already ended."""
        return self._cancel(job, error or JobCancelled(f"job {job.id} was cancelled"))

    def add_observer(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)

    def status(self) -> BackendStatus:
        """One line per replica, from what each last reported, and the jobs waiting in Serve's queue."""
        with self._lock:
            census, phase = self._census, self._phase
            in_flight = len(self._running)
            jobs = [job for job, _ in self._running.values()]
        # A job is running once a replica has taken it (its slot is known), else waiting in Serve's queue.
        owners = tally(queued=[job for job in jobs if job.slot is None], running=[job for job in jobs if job.slot is not None])
        if phase in ("new", "starting"):  # not connected yet: the replicas that are planned
            planned = self.settings.max_replicas or self.settings.replicas or PLANNED_REPLICAS
            slots = tuple(SlotStatus(index, "ray", "starting", alive=False) for index in range(planned))
            return BackendStatus(slots=slots, max_queue=self.settings.max_queue)
        lines = []
        if census is not None and phase == "running":
            try:
                lines = ray.get(census.lines.remote(), timeout=STATUS_WAIT_S)
            except Exception as exc:  # the cluster is unreachable: no replica to show
                log.warning("ray backend: no census: %s: %s", type(exc).__name__, exc)
        slots = tuple(sorted((self._slot_status(line, age) for line, age in lines), key=lambda slot: slot.index))
        alive = [slot for slot in slots if slot.alive]
        if alive:
            self._replica_count = len(alive)
        busy = sum(1 for slot in alive if slot.busy)
        return BackendStatus(slots=slots, queue_depth=max(0, in_flight - busy),
                             max_queue=self.settings.max_queue, accepting=phase == "running", owners=owners)

    # -- following one job ---------------------------------------------------------

    def _follow(self, job: Job) -> None:
        """Send ``job`` to the deployment (once its owner is under ``--max-running-per-user``) and relay
        its stream: progress, then its outcome."""
        with self._turn:
            while not job.done() and 0 < self.settings.max_running_per_user <= self._sent[job.owner]:
                self._turn.wait(POLL_S)  # woken when one of the owner's jobs ends; polls for a cancel
            if job.done():
                return
            self._sent[job.owner] += 1
        try:
            self._send_and_relay(job)
        finally:
            with self._turn:
                self._sent[job.owner] -= 1
                self._turn.notify_all()

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
        placed: list[str] = []
        try:
            outcome = self._relay(job, call, placed) if self._streaming else self._poll(job, call, placed)
        except (RequestCancelledError, TaskCancelledError, asyncio.CancelledError):
            outcome = JobCancelled(f"job {job.id} was cancelled")  # the cancel already set the outcome
        except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
            if placed and self._census is not None:
                self._census.forget.remote(placed[0])
            outcome = WorkerFailed(f"the replica running job {job.id} failed: {type(exc).__name__}; "
                                   "Serve is replacing it, try again")
        except Exception as exc:  # noqa: BLE001 - anything else from Ray still ends the job, once
            outcome = WorkerFailed(f"the Ray backend lost job {job.id}: {type(exc).__name__}: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
        self._end(job, outcome)

    def _relay(self, job: Job, call: Iterator, placed: list[str]) -> Any:
        """Turn the replica's messages into ``job``'s events; returns its outcome. ``placed`` gets the replica's id."""
        for message in call:
            if isinstance(message, Placed):
                placed.append(message.replica)
                job.slot = self._slot_index(message.replica)
            elif isinstance(message, Stage):
                total = job.request.steps if message.stage == JobStage.GENERATING else 0
                self._progress(job, Progress(JobStage(message.stage), total=total, slot=job.slot))
            elif isinstance(message, Step):
                self._progress(job, Progress(JobStage.STEP, step=message.step, total=message.total, slot=job.slot))
            elif isinstance(message, Preview):
                job.emit(message.progress(job.slot or 0))
            else:
                return self._outcome(job, message)
        return self._outcome(job, None)

    def _poll(self, job: Job, call, placed: list[str]) -> Any:
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
                placed.append(line["replica"])
                job.slot = self._slot_index(line["replica"])
            stage = JobStage.LOADING if line["loading"] else JobStage.GENERATING if line["total"] else None
            current = (line["replica"], stage, line["step"])
            if stage and stage != seen[1]:
                self._progress(job, Progress(stage, total=job.request.steps if stage == JobStage.GENERATING else 0,
                                             slot=job.slot))
            if line["step"] and line["step"] != seen[2]:
                self._progress(job, Progress(JobStage.STEP, step=line["step"], total=line["total"], slot=job.slot))
            seen = current

    def _progress(self, job: Job, progress: Progress) -> None:
        """Emit ``progress``; its steps also tell when the job should end (``_queue_place_in_s``)."""
        if progress.stage in (JobStage.GENERATING, JobStage.STEP):
            now = time.monotonic()
            with self._lock:
                if job.id in self._running:  # a late message of an ended job leaves nothing behind
                    since = now if progress.stage == JobStage.GENERATING else self._steps.get(job.id, (now,))[0]
                    self._steps[job.id] = (since, progress.step, progress.total)
        job.emit(progress)

    def _queue_place_in_s(self, owner: str | None = None) -> int | None:
        """Whole seconds (rounded up) until a place in the full queue frees: the first running job to end
        lets a waiting one start (of ``owner``'s own jobs, when given: its limit's place). Estimated from each
        job's pace so far (called under ``self._lock``); None while nothing has made a step yet (loading, or starting)."""
        now = time.monotonic()
        mine = {job.id for job, _ in self._running.values() if owner is None or job.owner == owner}
        paces = [(job_id in mine, (now - since) / step * (total - step))
                 for job_id, (since, step, total) in self._steps.items() if step]
        remaining = [left for own, left in paces if own] or [left for _, left in paces]
        return math.ceil(min(remaining)) if remaining else None

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
            if job.id not in self._running or job._ending:
                return False
            _, call = self._running[job.id]
        if call is not None:
            call.cancel()
        return self._end(job, error)

    def _end(self, job: Job, outcome: Any) -> bool:
        """The first outcome wins: observers see it, then the job's waiters."""
        with self._lock:
            if job._ending:
                return False
            job._ending = True
            self._running.pop(job.id, None)
            self._steps.pop(job.id, None)
            observers = list(self._observers)
        return job.settle(outcome, observers)

    # -- slots ---------------------------------------------------------------------

    def _capacity(self) -> int:
        return max(1, self._replica_count)

    def _slot_index(self, replica: str) -> int:
        with self._lock:
            return self._replicas.setdefault(replica, len(self._replicas))

    def _slot_status(self, line: dict, age_s: float) -> SlotStatus:
        alive = age_s < ALIVE_S
        return SlotStatus(
            index=self._slot_index(line["replica"]), device=line["device"], state="ready" if alive else "dead",
            alive=alive, last_error=None if alive else f"not heard from for {age_s:.0f} s",
            pid=line["pid"], model=line["model"], loading=line["loading"], busy=line["job"] is not None,
            job=line["job"], step=line["step"], total=line["total"], jobs_done=line["jobs_done"],
            jobs_failed=line["jobs_failed"], loads=line["loads"], cache_hits=line["cache_hits"],
            cached=tuple(line["cached"]), plan=line.get("plan"),
        )
