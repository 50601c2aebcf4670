"""The worker process: one device, one ``Engine``, jobs from the parent over a pipe.

``worker_main`` is the process entry; ``SlotManager`` spawns it with the "spawn" start method.
This module stays torch-free at import time (the parent imports it to name the entry point);
torch and the engine are imported inside the child only.

The messages over the pipe are defined once, in ``studio.protocol``.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import OrderedDict

from studio.jobloop import engine_state, run_batch, run_job
from studio.protocol import CancelJob, Ready, RunBatch, RunJob, StartFailed, Stop, WorkerState
from studio.schemas import GenerationRequest
from studio.terminal import quiet_libraries

WARM_UP_PROMPT = "warm-up"
REMEMBERED_CANCELS = 64  # cancels can arrive before their job or after it ended; keep a few


def worker_main(
    slot_index: int,
    device: str,
    conn,
    preload_specs=(),
    fault_hook: str | None = None,
    threads: int | None = None,
    engine_options=None,
) -> None:
    """Process entry: set up the device, preload and warm, hand-shake, then serve jobs until told to stop."""
    # The parent alone ends us (a Stop message, or a kill once its grace is over). A Ctrl+C or a
    # service manager's SIGTERM reaches the whole process group: it must not end running jobs
    # before the server's graceful shutdown, nor look like a crash that the parent restarts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if fault_hook:  # test-only: see Settings.fault_hook
            call_hook(fault_hook, slot_index, device)
        quiet_libraries()  # before any pipeline loads: no library warnings or bars in the server's terminal
        engine, timings = start_engine(device, preload_specs, threads, engine_options)
    except BaseException as exc:  # anything at all: the parent must hear why, not just see an exit
        conn.send(StartFailed(f"{type(exc).__name__}: {exc}"))
        conn.close()
        raise SystemExit(1) from None
    worker = Worker(slot_index, engine, conn)
    conn.send(Ready(os.getpid(), worker.state(), tuple(timings)))
    worker.serve()
    # Told to stop, with nothing left to send: leave at once. The interpreter's teardown of torch and a resident
    # pipeline takes seconds on a busy machine, and every stop of the server (and every test server) waited.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def call_hook(spec: str, slot_index: int, device: str) -> None:
    """Call ``"module:function"`` with ``(slot_index, device)``."""
    module_name, _, function_name = spec.partition(":")
    getattr(importlib.import_module(module_name), function_name)(slot_index, device)


def start_engine(device: str, preload_specs, threads: int | None, options=None):
    """An Engine on ``device`` holding the last of ``preload_specs``, each loaded and warmed once
    (with a RAM cache, the others stay parked there)."""
    import torch

    from studio.engine import Engine

    if threads:
        torch.set_num_threads(threads)  # several CPU slots share the cores; oversubscription is slower
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and torch_device.index is not None:
        torch.cuda.set_device(torch_device)  # fails clearly on a missing GPU, before any model loads
    engine = Engine(device, options)
    timings = []
    for spec in preload_specs:
        started = time.perf_counter()
        engine.ensure(spec)
        timings.append((spec.id, time.perf_counter() - started))
        # One step at the default size: the first call pays for kernel selection and allocator growth.
        request = spec.check(GenerationRequest(prompt=WARM_UP_PROMPT, steps=1, seed=0))
        engine.run(spec, request)
    return engine, timings


class RecentIds:
    """A small thread-safe set that forgets its oldest ids."""

    def __init__(self, capacity: int = REMEMBERED_CANCELS):
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def add(self, item: str) -> None:
        with self._lock:
            self._ids[item] = None
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def discard(self, item: str) -> None:
        with self._lock:
            self._ids.pop(item, None)

    def __contains__(self, item: str) -> bool:
        with self._lock:
            return item in self._ids


class Worker:
    """The job loop. A listener thread reads the pipe so a cancel lands while a job runs."""

    def __init__(self, slot_index: int, engine, conn):
        self.slot_index = slot_index
        self.engine = engine
        self.conn = conn
        self.jobs: queue.Queue = queue.Queue()
        self.cancelled = RecentIds()
        self.current: tuple[str, ...] = ()  # the running job's id, or a running batch's

    def serve(self) -> None:
        threading.Thread(target=self.listen, name="worker-listener", daemon=True).start()
        while (message := self.jobs.get()) is not None:
            if isinstance(message, RunBatch):
                self.run_batch(message.jobs)
            else:
                self.run_job(message.job_id, message.spec, message.request)
        self.conn.close()

    def listen(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                # The parent is gone (killed, crashed): nobody will read our results; leave now.
                os._exit(0)
            if isinstance(message, (RunJob, RunBatch)):
                self.jobs.put(message)
            elif isinstance(message, CancelJob):
                self.cancelled.add(message.job_id)
            elif isinstance(message, Stop):
                for job_id in self.current:
                    self.cancelled.add(job_id)
                self.jobs.put(None)
                return

    def run_job(self, job_id: str, spec, request) -> None:
        self.current = (job_id,)
        try:
            outcome = run_job(self.engine, job_id, spec, request, send=self.conn.send,
                              cancelled=lambda: job_id in self.cancelled, where=self.where, slot=self.slot_index)
        finally:
            self.current = ()
            self.cancelled.discard(job_id)
        self.conn.send(outcome)

    def run_batch(self, jobs: tuple[RunJob, ...]) -> None:
        """Compatible jobs as one call; ``run_batch`` sends each member's outcome itself."""
        self.current = tuple(job.job_id for job in jobs)
        try:
            run_batch(self.engine, list(jobs), send=self.conn.send, cancelled=self.cancelled.__contains__,
                      where=self.where, slot=self.slot_index)
        finally:
            self.current = ()
            for job in jobs:
                self.cancelled.discard(job.job_id)

    @property
    def where(self) -> str:
        """How errors name this worker."""
        return f"slot {self.slot_index} ({self.engine.device})"

    def state(self) -> WorkerState:
        return engine_state(self.engine)
