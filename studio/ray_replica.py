"""The Ray side of ``--backend ray``: ``EngineReplica``, the Serve deployment that runs jobs, and
the ``Census`` actor where replicas report their state.

Each replica holds one ``Engine`` on one device and runs one job at a time through the same job
loop as a local worker (``studio.jobloop``): here its messages go out as the items of a streaming
call, and a cancelled call stops the job at its next step. ``studio.ray_backend.RayBackend`` (in
the app) is the other end. Runs in the Ray cluster; imports torch only inside a replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve

from studio.backend import SlotState, SlotStatus
from studio.catalog import ModelSpec
from studio.config import Settings
from studio.jobloop import engine_state, run_job
from studio.protocol import Done, Failed, Stage, Step, WorkerState
from studio.schemas import GenerationRequest, JobStage
from studio.speed import EngineOptions
from studio.worker import call_hook

log = logging.getLogger(__name__)

CENSUS = "studio-census"  # the named actor every replica reports its state to
CENSUS_NAMESPACE = "studio"
REPORT_S = 1.0  # a replica reports at least this often (and at once on each change of job or stage)
FORGET_S = 60.0  # a replica not heard from for this long leaves /health
SERVE_NAMESPACE = "serve"  # where Serve names its replica actors (by their full replica id)
MAX_ONGOING = 1  # requests a replica takes at once: one Engine runs one job (the app holds the rest)


def census():
    """The one census of the cluster, created by whoever asks first. Detached: it must outlive a
    replica that created it, and the app may come and go while the replicas run (RayService)."""
    return Census.options(name=CENSUS, namespace=CENSUS_NAMESPACE, lifetime="detached", get_if_exists=True).remote()


@ray.remote(num_cpus=0)
class Census:
    """Where replicas report their state: a busy replica cannot answer a question (Serve lets it
    run one request at a time), but it can tell. Lives as long as the app (its owner)."""

    def __init__(self):
        self._lines: dict[str, tuple[dict, float]] = {}

    def report(self, line: dict) -> None:
        self._lines[line["replica"]] = (line, time.monotonic())

    def forget(self, replica: str) -> None:
        """A replica known dead leaves at once (Serve starts another, which reports itself)."""
        self._lines.pop(replica, None)

    def job(self, job_id: str) -> dict | None:
        """The line of the replica running ``job_id``, if one does."""
        return next((line for line, _ in self._lines.values() if line["job"] == job_id), None)

    def lines(self) -> list[tuple[dict, float]]:
        """Each replica's last report and its age in seconds; long-silent ones are forgotten."""
        now = time.monotonic()
        self._lines = {key: (line, at) for key, (line, at) in self._lines.items() if now - at < FORGET_S}
        return [(line, now - at) for line, at in self._lines.values()]


def slot_status(line: dict, index: int, alive: bool, age_s: float) -> SlotStatus:
    """A replica's census line (``EngineReplica.describe``) as its slot in ``BackendStatus``."""
    return SlotStatus(
        index=index, device=line["device"], state=SlotState.READY if alive else SlotState.DEAD,
        alive=alive, last_error=None if alive else f"not heard from for {age_s:.0f} s",
        pid=line["pid"], model=line["model"], loading=line["loading"], busy=line["job"] is not None,
        job=line["job"], step=line["step"], total=line["total"], jobs_done=line["jobs_done"],
        jobs_failed=line["jobs_failed"], loads=line["loads"], cache_hits=line["cache_hits"],
        cached=tuple(line["cached"]), plan=line.get("plan"),
    )


def kill_replica(replica: str, census_actor=None) -> None:
    """Kill a replica (one stuck in a model load: no cancel reaches it); Serve starts another, and it
    leaves the census at once. ``replica``: its full id, as ``Placed`` and the census name it."""
    try:
        ray.kill(ray.get_actor(replica, namespace=SERVE_NAMESPACE), no_restart=True)
    except Exception as exc:  # already gone, or the cluster is unreachable
        log.warning("could not kill replica %s: %s: %s", replica, type(exc).__name__, exc)
    if census_actor is not None:
        census_actor.forget.remote(replica)


@dataclass(frozen=True)
class Placed:
    """The first message of a job's stream: which replica runs it."""

    replica: str
    device: str


class EngineReplica:
    """One ``Engine`` on one device, serving one job at a time (``max_ongoing_requests=MAX_ONGOING``)."""

    def __init__(self, engine_options: EngineOptions, threads: int, fault_hook: str | None = None):
        import torch

        from studio.engine import Engine
        from studio.terminal import quiet_libraries

        gpus = ray.get_gpu_ids()
        device = "cuda" if gpus else "cpu"  # Ray already narrowed CUDA_VISIBLE_DEVICES to our GPU
        if fault_hook:  # test-only: see Settings.fault_hook
            call_hook(fault_hook, 0, device)
        if threads:
            torch.set_num_threads(threads)  # CPU replicas on one machine share its cores
        quiet_libraries()  # as in a local worker: no library warnings or bars in the replica's log
        self.engine = Engine(device, engine_options)
        context = serve.get_replica_context()
        self.replica = context.replica_id.to_full_id_str()
        self.device = f"{socket.gethostname()}/{'cuda:' + str(gpus[0]) if gpus else 'cpu'}"
        self.pid = os.getpid()
        self.job: str | None = None
        self.loading: str | None = None
        self.step = self.total = 0
        self.jobs_done = self.jobs_failed = 0
        self.census = census()
        self.changed = threading.Event()
        self.changed.set()  # the first report goes at once
        threading.Thread(target=self._report_loop, name="census-reporter", daemon=True).start()

    @serve.multiplexed(max_num_models_per_replica=1)
    async def resident(self, model_id: str) -> str:
        """Serve's record of the model this replica holds (the Engine loads it inside the job,
        with progress); one id at a time, so Serve's affinity is the resident model."""
        return model_id

    async def generate(self, job_id: str, spec: ModelSpec, request: GenerationRequest):
        await self.resident(serve.get_multiplexed_model_id())
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def send(message) -> None:
            if isinstance(message, Stage):
                self.loading = spec.id if message.stage == JobStage.LOADING else None
                self.changed.set()
            elif isinstance(message, Step):
                self.step, self.total = message.step, message.total
                self.changed.set()
            loop.call_soon_threadsafe(messages.put_nowait, message)

        def run() -> Done | Failed:
            outcome = run_job(self.engine, job_id, spec, request, send, cancelled.is_set, where=self.device)
            if isinstance(outcome, Done):
                self.jobs_done += 1
            else:
                self.jobs_failed += 1
            return outcome

        self.job, self.step, self.total = job_id, 0, 0
        self.changed.set()
        yield Placed(self.replica, self.device)
        running = loop.run_in_executor(None, run)
        try:
            while not running.done() or not messages.empty():
                getter = asyncio.ensure_future(messages.get())
                await asyncio.wait({getter, running}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield running.result()
        finally:
            # Cancelled by the caller (or the caller is gone): the Engine stops at its next step,
            # and this replica takes no other job until it has.
            cancelled.set()
            await asyncio.shield(running)
            self.job, self.loading, self.step, self.total = None, None, 0, 0
            self.changed.set()

    async def run(self, job_id: str, spec: ModelSpec, request: GenerationRequest) -> Done | Failed:
        """The whole job in one answer, for callers that cannot stream (Ray Client): they follow
        its progress in the census, where this replica reports every step it sends."""
        outcome = None
        async for message in self.generate(job_id, spec, request):
            outcome = message
        return outcome

    def state(self) -> WorkerState:
        return engine_state(self.engine)

    def _report_loop(self) -> None:
        while True:
            self.changed.wait(REPORT_S)
            self.changed.clear()
            try:
                self.census.report.remote(self.describe())
            except Exception:  # the app (and its census) is gone or restarting: report again later
                pass

    def describe(self) -> dict:
        """This replica's line of ``/health``."""
        state = self.state()
        return dict(replica=self.replica, device=self.device, pid=self.pid, model=state.model,
                    loading=self.loading, job=self.job, step=self.step if self.job else 0,
                    total=self.total if self.job else 0, jobs_done=self.jobs_done,
                    jobs_failed=self.jobs_failed, loads=state.loads, cache_hits=state.cache_hits,
                    cached=state.cached, plan=state.plan)


def replica_application(settings: Settings):
    """The deployment of ``EngineReplica`` for ``settings``: replica count, GPUs or CPUs each."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    replicas = settings.replicas or gpus or 1
    options: dict[str, Any] = dict(
        name="EngineReplica",
        max_ongoing_requests=MAX_ONGOING,  # the app sends no more (studio.rayqueue): fair share is its
        max_queued_requests=-1,  # admission is the app's (settings.max_queue), as on the local backend
        health_check_period_s=2,
    )
    most = replicas
    if settings.min_replicas is not None or settings.max_replicas is not None:
        low = settings.min_replicas or 1
        most = max(low, settings.max_replicas or replicas)
        options["autoscaling_config"] = dict(min_replicas=low, max_replicas=most, target_ongoing_requests=1)
    else:
        options["num_replicas"] = replicas
    # A GPU each; without GPUs the cluster's cores are shared out, as local CPU slots share a machine's.
    threads = 0 if gpus else max(1, cpus // most)
    options["ray_actor_options"] = {"num_gpus": 1} if gpus else {"num_gpus": 0, "num_cpus": threads}
    deployment = serve.deployment(EngineReplica).options(**options)
    return deployment.bind(EngineOptions.from_settings(settings), threads, settings.fault_hook)


def build_app(args: dict):
    """Serve's application builder (``import_path: studio.ray_replica:build_app``), for a RayService
    that owns the replicas; ``args`` are the app's flags without dashes (``replicas``,
    ``ram_cache_gb``, ...). The app then finds the running application and uses it."""
    flags = []
    for key, value in (args or {}).items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [] if value is False else [flag, str(value)]
    return replica_application(Settings.from_args(flags))
