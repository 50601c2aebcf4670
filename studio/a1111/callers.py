"""What the A1111 face remembers per caller (``auth.Caller``): the default checkpoint (POST options) and the
jobs it submitted, followed for GET progress and stopped by POST interrupt and skip.

A1111 holds one global state; with keys each owner has their own here (the multi-user reading of it).
Runs in the parent's event loop: never imports torch.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from studio.jobs import Job
from studio.schemas import JobStage


@dataclass
class Followed:
    """One submitted job and what its progress events said last."""

    job: Job
    submitted: float = field(default_factory=time.time)
    generating_since: float | None = None  # monotonic: when its first denoising step began
    step: int = 0
    total: int = 0
    preview: bytes | None = None  # the latest preview PNG (latent resolution)
    stage: JobStage = JobStage.QUEUED
    interrupted: bool = False  # stopped by its caller's interrupt or skip (its answer is then empty, as A1111's)
    watcher: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        """On a slot: loading its model or generating (not downloading or queued)."""
        return self.stage not in (JobStage.DOWNLOADING, JobStage.QUEUED)

    @property
    def progress(self) -> float:
        """0..1: denoising steps done; 0 while queued or loading."""
        return self.step / self.total if self.total else 0.0

    @property
    def eta_relative(self) -> float:
        """Seconds left, from the time the steps so far took (A1111's estimate)."""
        if self.generating_since is None or not self.progress:
            return 0.0
        elapsed = time.monotonic() - self.generating_since
        return max(0.0, elapsed / self.progress - elapsed)


class Callers:
    """Per-caller checkpoints and jobs; one per app (``app.state.a1111``)."""

    def __init__(self):
        self.checkpoints: dict[str, str] = {}
        self.jobs: dict[str, list[Followed]] = {}

    def follow(self, caller: str, job: Job) -> Followed:
        """Remember ``job`` as ``caller``'s until it ends, reading its progress events."""
        followed = Followed(job)
        self.jobs.setdefault(caller, []).append(followed)
        followed.watcher = asyncio.get_running_loop().create_task(self._watch(caller, followed))
        return followed

    async def _watch(self, caller: str, followed: Followed) -> None:
        try:
            async for event in followed.job.events():
                followed.stage = event.stage
                if event.stage == JobStage.GENERATING and followed.generating_since is None:
                    followed.generating_since = time.monotonic()
                elif event.stage == JobStage.STEP:
                    followed.step, followed.total = event.step, event.total
                elif event.stage == JobStage.PREVIEW and event.preview_png:
                    followed.preview = event.preview_png
        finally:
            mine = self.jobs.get(caller, [])
            if followed in mine:
                mine.remove(followed)
            if not mine:
                self.jobs.pop(caller, None)

    def pending(self, caller: str) -> list[Followed]:
        """The caller's jobs not yet ended, oldest first."""
        return [followed for followed in self.jobs.get(caller, []) if not followed.job.done()]

    def current(self, caller: str) -> Followed | None:
        """The caller's job that is furthest along: running before queued, then the oldest."""
        pending = self.pending(caller)
        running = [followed for followed in pending if followed.running]
        return (running or pending or [None])[0]

    def stop(self, caller: str, running_only: bool = False) -> int:
        """Cancel the caller's jobs (``running_only``: those on a slot, as skip does); how many were stopped."""
        stopped = 0
        for followed in self.pending(caller):
            if running_only and not followed.running:
                continue
            followed.interrupted = True
            stopped += bool(followed.job.cancel())
        return stopped
