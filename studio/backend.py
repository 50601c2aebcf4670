"""``Backend``: what the front ends (REST, UI, metrics, /health) may ask of whatever runs the jobs.

``studio.server.make_backend`` picks the backend (``studio.slots.SlotManager``: worker processes on
this machine, or ``studio.ray_backend.RayBackend``: Ray Serve replicas); nothing else names one.
A backend:

- ``start()`` blocks until it can run jobs (or raises ``WorkerFailed``); ``shutdown()`` cancels
  what is queued and running and releases everything; both are idempotent enough to call twice.
- ``submit(spec, request, owner) -> Job`` takes a request already resolved by ``spec.check`` and
  the job's owner (``studio.owners``), and never blocks; it raises ``QueueFull`` / ``WorkerFailed`` when it refuses (observers see refusals too).
- ``status() -> BackendStatus`` is a typed snapshot; ``as_dict()`` is the JSON of ``/health`` and
  of the Gradio ``/status`` endpoint.
- ``add_observer(observer)``: ``observer(job, result_or_exception, duration_s)`` runs once per
  ended job, refusals included, before the job's waiters wake.

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from studio.catalog import ModelSpec
from studio.jobs import ANONYMOUS, Job, Observer
from studio.schemas import GenerationRequest


class SlotState(StrEnum):
    """Where a slot (a local worker process, a Ray replica) is in its life (a ``str``: JSON shows the word)."""

    STARTING = "starting"  # its worker is starting (imports, preloads)
    READY = "ready"  # up: it can take jobs
    DEAD = "dead"  # its worker died (a restart is planned), or a replica went silent
    STOPPED = "stopped"  # not started yet, or shut down


@dataclass(frozen=True)
class SlotStatus:
    """One place a job can run (a local worker process, a Ray replica) as the front ends see it."""

    index: int
    device: str
    state: SlotState
    alive: bool  # up and able to take jobs
    pid: int | None = None
    model: str | None = None  # the resident model
    plan: str | None = None  # its memory plan (studio/memory.py): full, offload-encoders, fp8, ...
    loading: str | None = None  # the model being loaded for the running job
    busy: bool = False
    job: str | None = None  # the running job's id (a batch's: its first member's)
    batch: tuple[str, ...] = ()  # a running batch's members not ended yet (``--batch-window-ms``); () for one job
    step: int = 0  # of ``total``, while the job generates
    total: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    loads: int = 0  # pipelines loaded from disk (preloads and swaps), all incarnations together
    cache_hits: int = 0  # swaps served from the RAM cache
    cached: tuple[str, ...] = ()  # models parked in the RAM cache
    restarts: int = 0
    crashes_in_row: int = 0
    restart_in_s: float | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class DownloadStatus:
    """A model's download under way, as the download phase (``studio.downloads``) reports it."""

    model: str
    bytes_done: int
    bytes_total: int
    bytes_per_s: int  # smoothed
    eta_s: float | None  # None while the speed is not known
    jobs_waiting: int  # jobs waiting for this download

    @classmethod
    def of(cls, progress, jobs_waiting: int) -> DownloadStatus:
        """From ``studio.hub.Progress``."""
        eta = progress.eta_s
        return cls(progress.model, progress.done, progress.total, round(progress.speed),
                   None if eta is None else round(eta, 1), jobs_waiting)


@dataclass(frozen=True)
class ModelError:
    """A model's last failed download or load, until one of its jobs works."""

    model: str
    error: str


@dataclass(frozen=True)
class OwnerStatus:
    """One owner's jobs (``studio.owners``): how many wait in the queue, run, or wait for a download."""

    owner: str
    queued: int = 0
    running: int = 0
    downloading: int = 0


@dataclass(frozen=True)
class BackendStatus:
    """A snapshot of the backend: its slots and its queue."""

    slots: tuple[SlotStatus, ...] = ()
    queue_depth: int = 0  # jobs admitted and waiting for a slot
    max_queue: int = 0
    waiting_room: int = 0  # jobs over max_queue waiting (up to --queue-wait) for a place in the queue
    accepting: bool = False  # running (not starting up or shutting down)
    owners: tuple[OwnerStatus, ...] = ()  # each owner with jobs queued, running or downloading
    # Filled by the download phase in front of the backend (studio.downloads.DownloadGate):
    downloads: tuple[DownloadStatus, ...] = ()
    model_errors: tuple[ModelError, ...] = ()

    @property
    def alive(self) -> int:
        """How many slots can take jobs now."""
        return sum(1 for slot in self.slots if slot.alive)

    def as_dict(self) -> dict:
        """Plain JSON-ready data (lists, not tuples): the body of ``/health`` and the Gradio ``/status``."""
        data = asdict(self)
        for slot in data["slots"]:
            slot["cached"], slot["batch"] = list(slot["cached"]), list(slot["batch"])
        data["slots"] = list(data["slots"])
        data["downloads"], data["model_errors"] = list(data["downloads"]), list(data["model_errors"])
        data["owners"] = list(data["owners"])
        return data

    def without_owners(self) -> dict:
        """``as_dict`` for viewers who may not see who is using the studio."""
        data = self.as_dict()
        del data["owners"]
        return data


@runtime_checkable
class Backend(Protocol):
    """Runs jobs somewhere: local worker processes, or a Ray Serve deployment."""

    def start(self) -> None: ...

    def shutdown(self) -> None: ...

    def submit(self, spec: ModelSpec, request: GenerationRequest, owner: str = ANONYMOUS) -> Job: ...

    def status(self) -> BackendStatus: ...

    def add_observer(self, observer: Observer) -> None: ...
