"""The download phase: a model missing from the cache is fetched once, before its jobs reach the backend.

``DownloadGate`` wraps any ``Backend`` (local worker processes, Ray) and is one itself. A job for
a model whose files are all in the Hugging Face cache (or in ``--models-dir``) goes straight
to the backend. Any other job waits here in the ``downloading`` stage, with byte progress, while
one download per model runs in a thread of this process (huggingface_hub, no torch), however many
jobs, slots or faces want it; then each waiting job is handed to the backend, whose own
``--job-timeout`` therefore never counts the download. A job cancelled while it waits leaves the
download running for the others. Offline (``HF_HUB_OFFLINE=1`` or ``--offline``) a model not on
disk is refused at once; a failed download (gated, missing repo, no hub) fails every job waiting
on it with the plain message of ``studio.hub.explain``, and the next job for that model tries again.
At most ``max_waiting`` jobs (``--max-queue``) wait for downloads (a model's or a hub LoRA's): past
that a job is refused with 429 and a Retry-After of the download's expected time left
(``studio.admission``'s policy, as in the backends' queues; this line has no waiting room). The
per-owner limit (``--max-queue-per-user``, ``studio.turns.OwnerLimit``) is one count with the
backend's queue: the gate joins its rule to the backend's ``owner_limit``, so an owner's jobs
waiting here and those queued there add up to the limit, not twice it.

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from studio import hub, hublora, weights
from studio.admission import Admission, Line, Verdict
from studio.backend import Backend, BackendStatus, DownloadStatus, ModelError, Observer
from studio.catalog import Catalog, ModelSpec
from studio.errors import JobCancelled, ModelLoadFailed, ModelUnavailable, QueueFull, StudioError
from studio.jobs import ANONYMOUS, Job
from studio.memory import Weights
from studio.owners import tally
from studio.turns import OwnerLimit
from studio.schemas import GenerationRequest, JobResult, JobStage, Progress

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often waiting jobs hear of a download's progress
RETRY_AFTER_UNKNOWN_S = 30  # a refusal's Retry-After while the download's speed is not known yet


@dataclass
class Download:
    """One model's download and the jobs waiting for it."""

    spec: ModelSpec
    progress: hub.Progress
    waiting: list[Job] = field(default_factory=list)
    planned: bool = False  # the hub has told the sizes

    def event(self) -> Progress:
        """The ``downloading`` event every waiting job sees: its bytes, and the download in words."""
        detail = self.progress.describe() if self.planned else f"Looking up {self.spec.label} on the hub"
        return Progress(JobStage.DOWNLOADING, detail=detail, bytes_done=self.progress.done,
                        bytes_total=self.progress.total)


class DownloadGate:
    """A ``Backend`` in front of a ``Backend``: the download phase, then the backend's own queue."""

    def __init__(self, backend: Backend, catalog: Catalog, offline: bool | None = None,
                 preload: list[str] | None = None, max_waiting: int | None = None, max_waiting_per_owner: int = 0):
        """``preload`` is the backend's own list of models to load at start (``settings.preload``):
        ``start()`` takes the models not on disk out of it, since a worker would download them
        unseen inside its start-up, and downloads them here instead (the first job loads them)."""
        self.backend = backend
        self.catalog = catalog
        self.offline = hub.offline() if offline is None else offline
        self.preload = preload if preload is not None else []
        self.max_waiting = max_waiting  # None: no limit
        self.admission = Admission(lambda: self.max_waiting, waiting_for=" for model downloads",
                                   unknown_retry_s=RETRY_AFTER_UNKNOWN_S)
        self.max_waiting_per_owner = max_waiting_per_owner  # --max-queue-per-user; 0: no limit
        self._phase: tuple[tuple[Job, hub.Progress | None], ...] = ()  # see _publish
        self.owner_limit = OwnerLimit(lambda: self.max_waiting_per_owner, waiting="waiting for model downloads",
                                      jobs=lambda: [job for job, _ in self._phase], starts_in_s=self._download_in_s)
        self.admission.rules.append(self.owner_limit)
        if getattr(backend, "owner_limit", None) is not None:
            self.owner_limit.join(backend.owner_limit)
        self._lock = threading.Lock()
        self._downloads: dict[str, Download] = {}
        self._complete: set[str] = set()  # models known to be all on disk
        self._handed: dict[str, Job] = {}  # our job's id -> the backend's job it now follows
        self._errors: dict[str, str] = {}  # model -> the last download or load failure, until it works
        self._observers: list[Observer] = []
        self._lora_downloads: dict[str, list[Job]] = {}  # hub LoRA name -> the jobs waiting for its file
        self._resumed: set[str] = set()  # jobs whose hub LoRAs all arrived (each goes on once)
        self._disk: dict[str, dict] = {}  # model -> on disk / download size, from the start-up survey
        self._weights: dict[str, Weights] = {}  # model -> its component sizes, from its files where known
        backend.add_observer(self._remember_outcome)

    # -- the Backend protocol -------------------------------------------------------

    def start(self) -> None:
        for model_id in list(self.preload):
            try:
                spec = self.catalog.get(model_id)
            except StudioError:
                continue  # the backend's start names the unknown id
            if self._on_disk(spec):
                continue
            self.preload.remove(model_id)
            if self.offline:
                log.warning("not preloading %s: %s", spec.id, hub.explain(FileNotFoundError(), spec, online=False))
            else:
                log.info("%s is not on disk: downloading it now; the first job loads it", spec.id)
                self._join(spec)
        self.backend.start()
        threading.Thread(target=self.survey, name="download-survey", daemon=True).start()

    def shutdown(self) -> None:
        with self._lock:
            waiting = [job for job, _ in self._phase]
            self._downloads.clear()
            self._lora_downloads.clear()
            self._publish()
        for job in waiting:  # the download threads are daemons: an unfinished file resumes next time
            self._end(job, JobCancelled("the studio is shutting down"))
        self.backend.shutdown()

    def add_observer(self, observer: Observer) -> None:
        with self._lock:
            self._observers.append(observer)
        self.backend.add_observer(observer)

    def submit(self, spec: ModelSpec, request: GenerationRequest, owner: str = ANONYMOUS) -> Job:
        pending = [lora.name for lora in request.loras if lora._path is None]  # hub LoRAs not in the cache
        if pending:
            return self._fetch_loras(Job(spec, request, on_cancel=self._cancel, owner=owner), pending)
        if self._on_disk(spec):
            return self.backend.submit(spec, request, owner)
        job = Job(spec, request, on_cancel=self._cancel, owner=owner)
        if self.offline:
            error = hub.explain(FileNotFoundError(spec.id), spec, online=False)
            self._record_error(spec.id, error.message)
            self._end(job, error)
            raise error
        refusal = self._join(spec, job)
        if refusal is not None:
            self._end(job, refusal)  # observers (metrics) count it, as the backend's own refusals
            raise refusal
        return job

    def _join(self, spec: ModelSpec, job: Job | None = None) -> QueueFull | None:
        """Add ``job`` to the model's download, starting it if none runs; the refusal when too many wait."""
        with self._lock:
            download = self._downloads.get(spec.id)
            if job is not None and (refusal := self._refusal(job, download)) is not None:
                return refusal
            if download is None:
                download = Download(spec, hub.Progress(spec.id, spec.label))
                self._downloads[spec.id] = download
                threading.Thread(target=self._download, args=(download,), name=f"download-{spec.id}",
                                 daemon=True).start()
            if job is not None:
                download.waiting.append(job)
                self._publish()
                job.emit(download.event())
        return None

    def _refusal(self, job: Job, download: Download | None) -> QueueFull | None:
        """Under the lock: None when ``job`` may wait in the download phase, else its 429 (no waiting room here)."""
        waiting = [each for each, _ in self._phase]
        line = Line(waiting, len(waiting))
        if self.admission.admit(job, line, time.monotonic()) is Verdict.QUEUE:
            return None
        self.admission.leave(job)
        eta = download.progress.eta_s if download is not None else None
        if self.owner_limit.blocks(job, line) and not self.admission.limit.blocks(job, line):
            eta = self.owner_limit.place_in_s(job.owner, line)  # when one of the owner's own jobs should start
        return self.admission.refusal(job, line, eta)

    def _publish(self) -> None:
        """Under the lock: the jobs in the download phase, each once, with its model download's progress (None
        while it waits for a LoRA), as a snapshot the backend's owner count reads without taking our lock."""
        phase = {job: download.progress for download in self._downloads.values() for job in download.waiting}
        for jobs in self._lora_downloads.values():
            phase.update((job, None) for job in jobs if job not in phase)
        self._phase = tuple(phase.items())

    def _download_in_s(self, owner: str) -> float | None:
        """When the soonest of ``owner``'s model downloads should end (from the snapshot: no lock)."""
        etas = [progress.eta_s for job, progress in self._phase if job.owner == owner and progress is not None]
        return min((eta for eta in etas if eta is not None), default=None)

    def status(self) -> BackendStatus:
        """The backend's status, plus the downloads under way and each model's last failure."""
        status = self.backend.status()
        with self._lock:
            downloads = tuple(DownloadStatus.of(d.progress, jobs_waiting=len(d.waiting)) for d in self._downloads.values())
            errors = tuple(ModelError(model, message) for model, message in self._errors.items())
            waiting = [job for job, _ in self._phase]
        return dataclasses.replace(status, downloads=downloads, model_errors=errors,
                                   owners=tally(downloading=waiting, also=status.owners))

    # -- what the catalog's models need --------------------------------------------------

    def disk_status(self, model_id: str) -> dict:
        """``{"on_disk": bool | None, "download_bytes": int | None}`` (None: not known yet, or no hub)."""
        with self._lock:
            if model_id in self._complete:
                return {"on_disk": True, "download_bytes": 0}
            known = self._disk.get(model_id)
        if known is not None:
            return dict(known)
        on_disk = self._on_disk(self.catalog.get(model_id))  # before the survey: what the cache alone says
        return {"on_disk": on_disk, "download_bytes": 0 if on_disk else None}

    def weights(self, model_id: str) -> Weights:
        """The model's weight bytes per component: from its files (the survey's hub listing, the disk after a
        download), else the catalog's estimate."""
        with self._lock:
            known = self._weights.get(model_id)
        if known is None:
            known = weights.measure(self.catalog.get(model_id))
            with self._lock:
                self._weights[model_id] = known
        return known

    def models_on_disk(self) -> list[str]:
        """Ids of the models that load without a download, as ``disk_status`` says (the start-up banner's list)."""
        return [spec.id for spec in self.catalog if self.disk_status(spec.id)["on_disk"]]

    def survey(self) -> None:
        """Learn which models are on disk and which would download, and how much (the hub is asked
        unless offline); the answers feed ``disk_status`` for the banner, ``/v1/models`` and the Models
        tab. Logs what would download: the banner already says what is on disk."""
        specs = list(self.catalog)
        with ThreadPoolExecutor(max_workers=8) as pool:
            plans = list(pool.map(self._plan_quietly, specs))
        to_fetch, unknown = [], []
        for spec, plan in zip(specs, plans):
            if spec.local_dir is not None or (plan is not None and plan.missing() == 0):
                entry = {"on_disk": True, "download_bytes": 0}
            elif plan is not None:
                entry = {"on_disk": False, "download_bytes": plan.missing()}
                to_fetch.append(f"{spec.id} ({hub.format_size(plan.missing())})")
            else:
                entry = {"on_disk": False, "download_bytes": None}
                unknown.append(spec.id)
            with self._lock:
                self._disk[spec.id] = entry
                self._weights[spec.id] = weights.measure(spec, plan)
        if to_fetch:
            log.info("models that download on first use (or `python -m studio pull ID`): %s", ", ".join(to_fetch))
        if unknown:
            where = "offline" if self.offline else "the hub did not answer"
            log.info("models not on disk, size unknown (%s): %s", where, ", ".join(unknown))

    def _plan_quietly(self, spec: ModelSpec) -> hub.ModelPlan | None:
        if spec.local_dir is not None:
            return None
        for online in ([] if self.offline else [True]) + [False]:
            try:
                return hub.plan_model(spec, online=online)
            except StudioError:
                continue
        return None

    def _on_disk(self, spec: ModelSpec) -> bool:
        """True when the backend can load the model without the hub: a models folder, or every file cached."""
        if spec.local_dir is not None or spec.id in self._complete:
            return True
        try:
            complete = hub.plan_model(spec, online=False).missing() == 0
        except StudioError:  # no listing cached: never fully downloaded by huggingface_hub 2.x
            complete = False
        if complete:
            with self._lock:
                self._complete.add(spec.id)
        return complete

    # -- the download thread ---------------------------------------------------------------

    def _download(self, download: Download) -> None:
        spec = download.spec
        try:
            plan = hub.plan_model(spec, online=True)
            with self._lock:
                download.progress.total = plan.total
                download.progress.done = plan.on_disk()
                download.planned = True
            self._tell(download)
            log.info("downloading %s: %s", spec.id, hub.format_bytes(plan.missing(), plan.total))
            hub.download(spec, plan, lambda progress: self._tell(download), poll_s=POLL_S)
        except Exception as exc:  # noqa: BLE001 - every failure reaches the waiting jobs in words
            error = exc if isinstance(exc, StudioError) else hub.explain(exc, spec)
            log.warning("download of %s failed: %s", spec.id, error.message)
            self._record_error(spec.id, error.message)
            for job in self._release(download):
                self._end(job, error)
            return
        log.info("%s is on disk (%s)", spec.id, hub.format_size(download.progress.total))
        with self._lock:
            self._complete.add(spec.id)
            self._disk[spec.id] = {"on_disk": True, "download_bytes": 0}
            self._weights.pop(spec.id, None)  # measured again from the files now on disk
            self._errors.pop(spec.id, None)
        for job in self._release(download):
            self._hand_over(job)

    def _tell(self, download: Download) -> None:
        with self._lock:
            event, waiting = download.event(), list(download.waiting)
        for job in waiting:
            job.emit(event)

    def _release(self, download: Download) -> list[Job]:
        with self._lock:
            if self._downloads.get(download.spec.id) is download:
                del self._downloads[download.spec.id]
            waiting, download.waiting = download.waiting, []
            self._publish()
        return waiting

    def _hand_over(self, job: Job) -> None:
        """Submit the waiting job to the backend and relay the backend's job to it, events and outcome."""
        if job.done():  # cancelled as its download ended
            return
        try:
            inner = self.backend.submit(job.spec, job.request, job.owner)
        except StudioError as exc:  # the backend's observers have counted this refusal
            job.finish(exc)
            return
        with self._lock:
            self._handed[job.id] = inner  # Job.cancel() now reaches the backend's job
        if job.done():
            inner.cancel()

        def relay():
            for event in inner.iter_events():
                job.slot = event.slot if event.slot is not None else job.slot
                job.emit(event)
            try:
                job.finish(inner.wait())
            except StudioError as exc:
                job.finish(exc)
            finally:
                with self._lock:
                    self._handed.pop(job.id, None)

        threading.Thread(target=relay, name=f"relay-{job.id[:8]}", daemon=True).start()

    # -- hub LoRAs -----------------------------------------------------------------------

    def _fetch_loras(self, job: Job, names: list[str]) -> Job:
        """Each hub LoRA file downloads once, however many jobs name it; when a job's last one is in the cache,
        the job resolves again (the family check) and goes on: to its model's download, or the backend."""
        if self.offline:
            error = hublora.offline_error(names[0])
            self._end(job, error)
            raise error
        with self._lock:
            refusal = self._refusal(job, None)
        if refusal is not None:
            self._end(job, refusal)
            raise refusal
        for name in names:
            with self._lock:
                waiting = self._lora_downloads.setdefault(name, [])
                first = not waiting
                waiting.append(job)
                self._publish()
            job.emit(Progress(JobStage.DOWNLOADING, detail=f"Downloading the LoRA {name} from the hub"))
            if first:
                threading.Thread(target=self._download_lora, args=(name,), name="lora-download", daemon=True).start()
        return job

    def _download_lora(self, name: str) -> None:
        try:
            hublora.download(*hublora.parse(name))
            error = None
            log.info("LoRA %s is on disk", name)
        except Exception as exc:  # noqa: BLE001 - every failure reaches the waiting jobs in words
            error = hublora.explain(exc, name)
            log.warning("download of the LoRA %s failed: %s", name, error.message)
        with self._lock:
            waiting = self._lora_downloads.pop(name, [])
            self._publish()
        for job in waiting:
            if error is not None:
                self._end(job, error)
                continue
            try:
                request = self.catalog.check_loras(job.spec, job.request)
            except StudioError as exc:  # made for another family, corrupt...
                self._end(job, exc)
                continue
            with self._lock:
                if any(lora._path is None for lora in request.loras) or job.id in self._resumed or job.done():
                    continue  # another of its LoRAs is still coming (or it already went on)
                self._resumed.add(job.id)
            job.request = request
            if self._on_disk(job.spec):
                self._hand_over(job)
            elif (refusal := self._join(job.spec, job)) is not None:
                self._end(job, refusal)

    # -- ending jobs --------------------------------------------------------------------

    def _cancel(self, job: Job) -> bool:
        with self._lock:
            inner = self._handed.get(job.id)
        if inner is not None:
            return inner.cancel()
        with self._lock:
            for waiting in [download.waiting for download in self._downloads.values()] + list(
                    self._lora_downloads.values()):
                if job in waiting:
                    waiting.remove(job)  # the download goes on for the others
            self._publish()
        return self._end(job, JobCancelled(f"job {job.id} was cancelled"))

    def _end(self, job: Job, outcome: JobResult | BaseException) -> bool:
        """End a job that never reached the backend: observers first (metrics count it), then waiters."""
        if job.done():
            return False
        with self._lock:
            observers = list(self._observers)
        return job.settle(outcome, observers)

    def _record_error(self, model_id: str, message: str) -> None:
        with self._lock:
            self._errors[model_id] = message

    def _remember_outcome(self, job: Job, outcome, duration_s: float) -> None:
        """A model's last load failure stays in ``status()`` until one of its jobs succeeds."""
        if isinstance(outcome, (ModelLoadFailed, ModelUnavailable)):
            self._record_error(job.spec.id, outcome.message)
        elif isinstance(outcome, JobResult):
            with self._lock:
                self._errors.pop(job.spec.id, None)
