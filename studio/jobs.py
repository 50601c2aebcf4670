"""``Job``: one submitted generation, as every front end sees it, whichever backend runs it.

A front end gets a ``Job`` from ``Backend.submit`` and may cancel it, follow its ``Progress``
events and await its result. The backend drives it, only through its methods: ``move_to(position)``
while it is queued, ``emit(event)`` while it runs, ``claim_outcome()`` when it decides how the job
ends (under its own lock; the first decision wins) and ``settle``/``finish(outcome)`` once. Cancelling goes through the ``on_cancel`` callback the backend gave
the job, so the job never needs to know which backend it belongs to.

Runs in the parent process: never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

from studio.catalog import ModelSpec
from studio.errors import JobCancelled
from studio.schemas import GenerationRequest, JobResult, JobStage, Progress

log = logging.getLogger(__name__)

CancelHook = Callable[["Job"], bool]
Observer = Callable[["Job", object, float], None]  # (job, its result or exception, seconds since submitted)
ANONYMOUS = "anonymous"  # the owner of a job whose face named none (see studio.owners)


class Job:
    """One submitted generation: a handle to cancel it, follow its progress and get its result.

    Thread-safe. Sync callers use ``wait()`` and ``iter_events()``; async callers ``await
    result()`` and ``async for event in events()``; any number of either may follow one job.
    """

    def __init__(self, spec: ModelSpec, request: GenerationRequest, on_cancel: CancelHook | None = None,
                 seq: int = 0, owner: str = ANONYMOUS):
        self.id = uuid.uuid4().hex
        self.spec = spec
        self.request = request
        self.owner = owner  # an API key's name, a UI login or a client's address: fair share and limits go by it
        self.seq = seq  # submission order: a backend's queue stays sorted by it
        self.submitted_at = time.time()
        self.queued_at = time.monotonic()
        self.slot: int | None = None  # set by the backend when the job is bound to a slot (or replica)
        self._on_cancel = on_cancel
        self._position: int | None = None  # set by the backend (move_to) while queued
        self._line_length: int | None = None  # ... and how many jobs its line holds
        self._cond = threading.Condition()
        self._events: list[Progress] = []
        self._done = False
        self._ending = False  # the backend has decided the outcome (claim_outcome); settled soon
        self._outcome: JobResult | BaseException | None = None
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def __repr__(self) -> str:
        return f"<Job {self.id[:8]} {self.spec.id} {'done' if self._done else 'pending'}>"

    # -- control ---------------------------------------------------------------

    def cancel(self) -> bool:
        """Queued: leaves the queue at once. Running: stops at its next step, freeing the slot.
        The job then fails with ``JobCancelled``. False when the job had already ended."""
        if self._on_cancel is None:
            return self.finish(JobCancelled(f"job {self.id} was cancelled"))
        return self._on_cancel(self)

    @property
    def queue_position(self) -> int | None:
        """0 for the next job to start; None once running or ended."""
        return None if self._done or self.slot is not None else self._position

    def done(self) -> bool:
        return self._done

    @property
    def stage(self) -> str | None:
        """The stage of the latest progress event; None before any."""
        with self._cond:
            return self._events[-1].stage if self._events else None

    @property
    def generating(self) -> bool:
        """Past its model's download, its queue wait and its model's load: ``--job-timeout`` counts from here."""
        return self.stage not in (None, JobStage.DOWNLOADING, JobStage.QUEUED, JobStage.LOADING)

    # -- results -----------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job ends; returns its result or raises its ``StudioError``.
        ``TimeoutError`` when it is still running after ``timeout`` seconds (the job goes on)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"job {self.id} has not finished after {timeout:g} s")
        return self._unwrap()

    async def result(self) -> JobResult:
        """Await the job's end; returns its result or raises its ``StudioError``."""
        while True:
            with self._cond:
                if self._done:
                    break
                seen = len(self._events)
            await self._changed(seen)
        return self._unwrap()

    # -- progress ----------------------------------------------------------------

    async def events(self):
        """``Progress`` events from the start (queued, loading, generating, step, encoding); ends with the job."""
        seen = 0
        while True:
            with self._cond:
                batch, done = self._events[seen:], self._done
            seen += len(batch)
            for event in batch:
                yield event
            if done:
                return
            await self._changed(seen)

    def iter_events(self, timeout: float | None = None) -> Iterator[Progress]:
        """The same events for sync code (Gradio generator handlers). ``TimeoutError`` when the job
        has not ended within ``timeout`` seconds of the call (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            with self._cond:
                while len(self._events) == seen and not self._done:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"job {self.id} has not finished after {timeout:g} s")
                    self._cond.wait(left)
                batch, done = self._events[seen:], self._done
            seen += len(batch)
            yield from batch
            if done:
                return

    # -- called by the backend -----------------------------------------------------

    def move_to(self, position: int, length: int | None = None) -> bool:
        """Its place in the backend's line (0: next) of ``length`` jobs (every owner's); True when that is
        a change the job should hear of."""
        with self._cond:
            length = self._line_length if length is None else length  # not told: as it was
            moved = (self._position, self._line_length) != (position, length)
            self._position, self._line_length = position, length
            return moved

    def claim_outcome(self) -> bool:
        """The backend decides how the job ends (then settles it, perhaps after releasing its lock):
        True the first time only, so the first outcome wins; False once decided or ended."""
        with self._cond:
            if self._ending or self._done:
                return False
            self._ending = True
            return True

    @property
    def ending(self) -> bool:
        """Its outcome is decided (``claim_outcome``) or it has ended."""
        with self._cond:
            return self._ending or self._done

    def emit(self, event: Progress) -> None:
        """Add a progress event (ignored once the job ended)."""
        with self._cond:
            if self._done:
                return
            self._events.append(event)
            self._wake()

    def finish(self, outcome: JobResult | BaseException) -> bool:
        """End the job with a result or an exception; False when it had already ended."""
        with self._cond:
            if self._done:
                return False
            self._outcome, self._done = outcome, True
            self._wake()
            return True

    def settle(self, outcome: JobResult | BaseException, observers: Iterable[Observer]) -> bool:
        """``finish`` as a backend ends a job: each observer (metrics) sees the outcome first, then
        the waiters wake. A failing observer is logged; it never changes the job's outcome."""
        duration = time.time() - self.submitted_at
        for observer in observers:
            try:
                observer(self, outcome, duration)
            except Exception:
                log.exception("observer %r failed on job %s", observer, self.id)
        return self.finish(outcome)

    def _unwrap(self) -> JobResult:
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def _wake(self) -> None:
        self._cond.notify_all()
        waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that event loop is closed: its consumer is gone
                pass

    async def _changed(self, seen: int) -> None:
        """Sleep until there are more than ``seen`` events or the job ended (no polling)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if self._done or len(self._events) > seen:
                return
            self._async_waiters.append((loop, future))
        try:
            await future
        finally:
            if not future.done():  # our consumer was cancelled: drop the registration
                with self._cond:
                    if (loop, future) in self._async_waiters:
                        self._async_waiters.remove((loop, future))


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
