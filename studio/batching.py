"""Batching: which queued jobs run together as one pipeline call (``--batch-window-ms``, ``--max-batch``).

Compatible jobs (the same model, task, size, steps, guidance, sampler and LoRAs with their scales;
any prompts, negative prompts, seeds and image counts) may run as one call on one slot
(``protocol.RunBatch``). Only text-to-image jobs of a family whose adapter runs batches
(``Family.batches``) batch; an edit never does.

``gather`` takes the jobs the backend would offer routing now, in fair-share order and within the
per-owner limits (``studio.turns.Turns.order``), so fair share decides who joins a batch: a batch is
the first offered job of its kind and the compatible ones behind it, in that order, up to
``--max-batch`` images. A batch that is not full waits for companions until its oldest member has
been queued ``--batch-window-ms`` (other jobs pass it meanwhile); a full batch, and a job that
cannot batch, never waits. With a window of 0 every job runs alone, as without batching. ``calls``
is that grouping without the window: the queue as the slots will run it, which routing's estimates
(queue positions, Retry-After) play forward.

``Batch`` is a slot's per-member bookkeeping while it runs: which members are still running, each
member's share of the call (fair share charges its GPU-seconds by images), and the message to send.

Pure: no threads, no clock of its own. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from studio.families import FAMILIES, TEXT_TO_IMAGE
from studio.jobs import Job
from studio.protocol import RunBatch, RunJob
from studio.schemas import GenerationRequest


def batch_key(job: Job) -> Hashable | None:
    """What a job must share with the others of its batch; None for a job that never batches."""
    request = job.request
    if request.task != TEXT_TO_IMAGE or not FAMILIES[job.spec.family].batches:
        return None
    loras = tuple((lora.name, lora._path, lora.scale) for lora in request.loras)  # in order: set as the lead sets them
    return (job.spec.id, request.task, request.width, request.height, request.steps, request.guidance,
            request.sampler, loras)


class Batch:
    """The jobs one slot runs in one call, the first (the lead) as routing sees the call; one job alone
    is a batch of one, sent as a plain ``RunJob``."""

    def __init__(self, jobs: Sequence[Job]):
        self.jobs = tuple(jobs)
        self.images = sum(job.request.num_images for job in self.jobs)
        self.running = {job.id: job for job in self.jobs}  # members that have not ended

    def __repr__(self) -> str:
        return f"<Batch {', '.join(job.id[:8] for job in self.jobs)}>"

    @property
    def lead(self) -> Job:
        return self.jobs[0]

    @property
    def request(self) -> GenerationRequest:
        """The call's shape, as estimates read it: the lead's request with every member's images."""
        if len(self.jobs) == 1:
            return self.lead.request
        return self.lead.request.model_copy(update={"num_images": self.images})

    def message(self) -> RunJob | RunBatch:
        runs = tuple(RunJob(job.id, job.spec, job.request) for job in self.jobs)
        return runs[0] if len(runs) == 1 else RunBatch(runs)

    def member(self, job_id: str) -> Job | None:
        """The running member with this id (None: not of this batch, or it already ended)."""
        return self.running.get(job_id)

    def end(self, job: Job) -> bool:
        """``job`` has had its last word; True when it was the last member running."""
        self.running.pop(job.id, None)
        return not self.running

    def share(self, job: Job) -> float:
        """``job``'s part of the call's time, by its images: what fair share charges its owner."""
        return job.request.num_images / self.images


def gather(offered: Sequence[Job], now: float, window_s: float, max_images: int) -> tuple[list[Batch], float | None]:
    """The batches that may start now, in ``offered``'s order (each by its lead), and when the
    earliest held batch's window ends (None: none is held). Jobs of a held batch are in no batch."""
    if window_s <= 0:  # no batching: nothing waits (a job queued after ``now`` was read included)
        return calls(offered, window_s, max_images), None
    batches: list[Batch] = []
    wake_at: float | None = None
    for batch in calls(offered, window_s, max_images):
        deadline = min(member.queued_at for member in batch.jobs) + window_s
        if batch_key(batch.lead) is not None and batch.images < max_images and now < deadline:
            wake_at = deadline if wake_at is None else min(wake_at, deadline)  # waits for companions
            continue
        batches.append(batch)
    return batches, wake_at


def calls(offered: Sequence[Job], window_s: float, max_images: int) -> list[Batch]:
    """``offered`` as the slots will run it, windows aside: each batch the first job of its kind and the
    compatible ones behind it, up to ``max_images`` images, in order of their leads; with a window of 0
    a job a call. What estimates play forward (queue positions, Retry-After) and what ``gather`` holds."""
    if window_s <= 0:
        return [Batch((job,)) for job in offered]
    keys = {job.id: batch_key(job) for job in offered}
    taken: set[str] = set()
    batches: list[Batch] = []
    for index, job in enumerate(offered):
        if job.id in taken:
            continue
        members, key = [job], keys[job.id]
        images = job.request.num_images
        if key is not None:
            for other in offered[index + 1:]:
                if images >= max_images:
                    break
                if other.id not in taken and keys[other.id] == key and images + other.request.num_images <= max_images:
                    members.append(other)
                    images += other.request.num_images
        taken.update(member.id for member in members)
        batches.append(Batch(members))
    return batches
