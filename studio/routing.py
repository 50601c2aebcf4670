"""Routing: which queued job starts now, and on which slot, and when the queue will have room.
Pure (no processes, no threads, no clock of its own), so every rule is tested alone;
``SlotManager`` calls ``plan_dispatch``, ``room_in_s`` and ``starts_in_s`` under its lock.

Jobs wait in one queue and are bound to a slot only when a slot is free, so the choice uses what
is true at that moment. The queue comes in priority order (arrival, or fair share's order between
owners), and each rule takes the jobs in that order:

1. a job that waited past ``starvation_s`` takes any idle slot first;
2. a job that waited its round of fair share (``due``, from ``studio.fairshare``) goes before the
   others, but model affinity still applies to it: an idle slot holding its model, else rule 4 (it
   waits for a busy slot holding its model when that is sooner than a swap). Fair share decides
   whose job goes next, never that a slot loads a model it could have waited for;
3. a job whose model an idle slot already holds goes there (no load); of several, the one holding most
   of the job's LoRAs as adapters (no LoRA load either): a preference among idle slots, never a wait;
4. a job whose model a busy slot holds (or is about to hold, this plan's bindings included)
   waits for it when that slot is expected free sooner than a swap would take, as measured: loads
   of the model (warm, from disk or from a worker's RAM cache; before any swap, a worker's first
   load of it, which pays for its imports too: a swap takes at most that long) and job durations;
   with no load of it measured, it takes the idle slot. But evicting the only resident copy of a
   model in use (one that ran in the last ``IN_USE_S``) costs two loads, this one (a guess will do)
   and the one that brings that model back for its next job (once measured), so such a swap must
   beat both: otherwise the two slots would merely exchange their models. No job waits by choice
   while others wait for a place in the queue (``crowded``): an idle slot then takes it;
5. otherwise it takes an idle slot, preferring one with the model parked in its RAM cache, then
   an empty one, then one holding a model nobody in the queue wants, then the least recently
   used; that slot swaps models.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from studio.backend import SlotState
from studio.batching import Batch
from studio.jobs import Job
from studio.schemas import GenerationRequest

STARVATION_S = 60.0  # past this wait a job takes any idle slot, whatever the estimates say
IN_USE_S = 60.0  # a model that ran this recently is in use: its only resident copy is not given up lightly

Calls = Callable[[Sequence[Job]], Sequence[Batch]]  # queued jobs as the slots will run them (``batching.calls``)


def work_units(request: GenerationRequest) -> float:
    """Megapixel-steps: what a job's duration scales with (an edit's steps x strength)."""
    return request.denoising_steps * request.num_images * request.width * request.height / 1e6


def shape(request: GenerationRequest) -> tuple:
    """What a job's duration depends on besides its model: repeated requests share it."""
    return request.denoising_steps, request.num_images, request.width, request.height


class Estimates:
    """Per-model moving averages, for routing and for Retry-After: swap times (from disk, or from a
    worker's RAM cache), job durations by request shape, seconds per megapixel-step for shapes not
    seen yet, and a job's tail after its last step (decoding, encoding). Guesses stand in until
    something was measured."""

    SMOOTHING = 0.3

    def __init__(self, default_load_s: float = 20.0, default_cached_load_s: float = 3.0,
                 default_unit_s: float = 0.5):
        self.default_load_s = default_load_s
        self.default_cached_load_s = default_cached_load_s
        self.default_unit_s = default_unit_s
        self._load_s: dict[tuple[str, bool], float] = {}
        self._unit_s: dict[str, float] = {}
        self._shape_s: dict[tuple[str, tuple], float] = {}
        self._tail_s: dict[str, float] = {}
        self._first_load_s: dict[str, float] = {}
        self._plans: dict[str, str] = {}  # model -> the memory plan its times were measured on

    def load_s(self, model_id: str, cached: bool = False) -> float:
        """A swap's expected time: as measured warm, else a worker's first load of it (imports
        included: too long, but measured), else a guess."""
        measured = self._load_s.get((model_id, cached))
        if measured is not None:
            return measured
        if cached:
            return self.default_cached_load_s
        return self._first_load_s.get(model_id, self.default_load_s)

    def measured_load_s(self, model_id: str, cached: bool = False) -> float | None:
        """A load time that was really measured, else None: no guess ever makes a job wait. Warm; else,
        from disk, a worker's first load of the model (a fresh server knows it from its preloads): its
        imports included, so a swap takes at most that long."""
        measured = self._load_s.get((model_id, cached))
        if measured is None and not cached:
            return self._first_load_s.get(model_id)
        return measured

    def load_words(self, model_id: str, cached: bool = False) -> str:
        """The swap time that decided a load, in words with its figure, for the log line of the load."""
        source = " from RAM" if cached else ""
        warm = self._load_s.get((model_id, cached))
        if warm is not None:
            return f"a measured load of {model_id}{source} (~{warm:.1f} s)"
        first = self._first_load_s.get(model_id)
        if first is not None and not cached:
            return f"{model_id}'s first load on a worker (~{first:.1f} s, imports included)"
        return f"no load of {model_id}{source} measured (guessed ~{self.load_s(model_id, cached):.1f} s)"

    def job_s(self, model_id: str, request: GenerationRequest) -> float:
        """From its load's end to its result: as measured for this shape, else scaled by megapixel-steps
        (which leaves out a small job's fixed costs, so a shape seen once is worth more than the scale)."""
        seen = self._shape_s.get((model_id, shape(request)))
        if seen is not None:
            return seen
        return work_units(request) * self._unit_s.get(model_id, self.default_unit_s)

    def replanned(self, model_id: str, plan: str) -> None:
        """A model loads on ``plan`` (studio/memory.py) from now on: when that is another plan than its
        times were measured on (an out-of-memory moved it to a smaller one), those times go."""
        if self._plans.setdefault(model_id, plan) == plan:
            return
        self._plans[model_id] = plan
        for table in (self._load_s, self._shape_s):
            for key in [key for key in table if key[0] == model_id]:
                del table[key]
        for table in (self._unit_s, self._tail_s, self._first_load_s):
            table.pop(model_id, None)

    def record_load(self, model_id: str, seconds: float, cached: bool = False) -> None:
        key = (model_id, cached)
        self._load_s[key] = self._blend(self._load_s.get(key), seconds)

    def record_first_load(self, model_id: str, seconds: float) -> None:
        """A worker's first load, which pays for its imports too: a stand-in until a warm one is measured."""
        self._first_load_s[model_id] = self._blend(self._first_load_s.get(model_id), seconds)

    def record_run(self, model_id: str, request: GenerationRequest, seconds: float) -> None:
        key = (model_id, shape(request))
        self._shape_s[key] = self._blend(self._shape_s.get(key), seconds)
        units = work_units(request)
        if units > 0:
            self._unit_s[model_id] = self._blend(self._unit_s.get(model_id), seconds / units)

    def record_tail(self, model_id: str, seconds: float, images: int = 1) -> None:
        """The time from a call's last step to its result, kept per image (each is decoded and encoded):
        a batch's tail then tells a single job's, and the other way round."""
        self._tail_s[model_id] = self._blend(self._tail_s.get(model_id), seconds / max(1, images))

    def remaining_s(self, slot: Slot, now: float) -> float:
        """How long until the busy ``slot`` finishes its job: from its live steps once it has two
        (the first step's time includes the prompt's encoding), else from the job's estimate."""
        job = slot.job
        if job is None:
            return 0.0
        model = job.spec.id
        if slot.step >= 2 and slot.total > 0 and slot.first_step_at is not None and slot.last_step_at is not None:
            per_step = (slot.last_step_at - slot.first_step_at) / (slot.step - 1)
            steps_s = per_step * max(0, slot.total - slot.step) - (now - slot.last_step_at)
            return max(0.0, steps_s) + self._tail_s.get(model, 0.0) * slot.work.num_images
        if slot.generating_at is None and (slot.phase == "loading" or slot.model != model):  # a swap first
            swap_s = self.load_s(model, cached=model in slot.cached)
            return max(0.0, swap_s - (now - slot.phase_since)) + self.job_s(model, slot.work)
        started = slot.generating_at if slot.generating_at is not None else slot.phase_since
        return max(0.0, self.job_s(model, slot.work) - (now - started))

    def _blend(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.SMOOTHING * (new - old)


@dataclass(eq=False)
class Slot:
    """What routing knows of one slot: its state, its models and the job it runs.

    A backend subclasses it with what it needs to supervise the slot (``workerslot.WorkerSlot``).
    """

    index: int
    device: str
    state: SlotState = SlotState.STOPPED
    model: str | None = None  # resident model
    cached: list[str] = field(default_factory=list)  # models parked in the worker's RAM cache
    loras: tuple[str, ...] = ()  # the LoRA files its resident pipeline holds as adapters
    job: Job | None = None  # the job the worker is running (it may already be cancelled)
    phase: str = ""  # "starting" (sent), then the worker's stages
    phase_since: float = 0.0
    generating_at: float | None = None
    step: int = 0
    total: int = 0
    first_step_at: float | None = None  # when the running job reported its first step
    last_step_at: float | None = None  # ... and its latest
    last_used: float = 0.0  # when its last job ended (0: none yet)
    unreachable: bool = False  # a send failed: the process is on its way out

    @property
    def available(self) -> bool:
        return self.state == SlotState.READY and self.job is None and not self.unreachable

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def work(self) -> GenerationRequest | None:
        """The running call's request: its job's (a batch's: the lead's, with every member's images)."""
        return self.job.request if self.job is not None else None

    @property
    def next_model(self) -> str | None:
        """The model the slot will hold once its current job is done."""
        return self.job.spec.id if self.job is not None else self.model


class Binding(NamedTuple):
    """A queued job bound to a slot; ``why`` says why the slot loads a model for it ("" when it holds it)."""

    job: Job
    slot: Slot
    why: str = ""


def plan_dispatch(
    queue: Sequence[Job], slots: Sequence[Slot], estimates: Estimates, now: float, starvation_s: float = STARVATION_S,
    due: Collection[Job] = (), crowded: int = 0, batches: Mapping[Job, Batch] | None = None,
) -> list[Binding]:
    """Which queued jobs start now, and where (see the module docstring for the rules); ``crowded``:
    how many jobs wait for a place in the queue; ``batches``: the call each job of ``queue`` leads (a
    batch's lead stands for every member: the slot's time is the call's, all its images)."""
    idle = [slot for slot in slots if slot.available]
    if not idle or not queue:
        return []
    busy = [slot for slot in slots if slot.state == SlotState.READY and slot.job is not None and not slot.unreachable]
    # What each slot will hold next and when it frees: the busy ones, then the ones this plan binds
    # (a slot bound a moment ago holds its job's model as surely as a busy one).
    holds = {slot.index: slot.next_model for slot in busy}
    free_at = {slot.index: now + estimates.remaining_s(slot, now) for slot in busy}
    plan: list[Binding] = []
    waiting = list(queue)

    def work(job: Job) -> GenerationRequest:
        batch = (batches or {}).get(job)
        return batch.request if batch is not None else job.request

    def bind(job: Job, slot: Slot, why: str = "") -> None:
        model = job.spec.id
        load_s = 0.0 if slot.model == model else estimates.load_s(model, model in slot.cached)
        plan.append(Binding(job, slot, why if slot.model != model else ""))
        holds[slot.index], free_at[slot.index] = model, now + load_s + estimates.job_s(model, work(job))
        idle.remove(slot)
        waiting.remove(job)

    def place(job: Job, turn: str = "") -> None:
        """No idle slot holds ``job``'s model: an idle slot swaps to it, unless a busy slot that holds
        it (or is about to) frees sooner than the swap would take; then the job waits for that slot."""
        model = job.spec.id
        victim = _victim(idle, waiting, model)
        holders = [index for index, next_model in holds.items() if next_model == model]
        if not holders:
            bind(job, victim, f"no slot holds {model}{turn}")
            return
        soonest = min(holders, key=free_at.__getitem__)
        wait_s = free_at[soonest] - now
        cached = model in victim.cached
        if _gives_up_a_model_in_use(victim, slots, holds, now):
            # Evicting the only copy of a model in use merely exchanges the two models: this load (a
            # guess will do) and, once measured, the one that brings the evicted model back.
            swap_s = estimates.load_s(model, cached) + (estimates.measured_load_s(victim.model) or 0.0)
            swap = f"{model}'s load plus {victim.model}'s load back (~{swap_s:.1f} s)"
        else:
            swap_s = estimates.measured_load_s(model, cached)  # only a measured load may make a job wait
            swap = estimates.load_words(model, cached)
        worth_waiting = swap_s is not None and wait_s < swap_s
        if worth_waiting and not crowded:
            free_at[soonest] += estimates.job_s(model, work(job))
            held.append(job)
            return
        door = f"; {crowded} more wait for a place in the queue" if worth_waiting else ""  # the idle slot works
        bind(job, victim, f"slot {soonest} with {model} frees in ~{wait_s:.1f} s; {swap}{door}{turn}")

    held: list[Job] = []  # jobs that wait for a busy slot holding their model
    for job in [job for job in waiting if now - job.queued_at >= starvation_s]:
        if not idle:
            return plan
        bind(job, _same_model(idle, job) or _victim(idle, waiting, job.spec.id),
             f"it waited {now - job.queued_at:.0f} s, past {starvation_s:.0f} s: any idle slot")
    for job in [job for job in waiting if job in due]:  # before the others, but never a needless load
        if not idle:
            return plan
        match = _same_model(idle, job)
        if match:
            bind(job, match)
        else:
            place(job, " (it waited its round of fair share)")
    for job in list(waiting):
        match = _same_model(idle, job)
        if match:
            bind(job, match)
    for job in [job for job in waiting if job not in held]:
        if not idle:
            break
        place(job)
    return plan


def room_in_s(sequence: Sequence[Job], slots: Sequence[Slot], estimates: Estimates, now: float,
              limit: int, calls: Calls | None = None) -> float | None:
    """Seconds until one more job fits under a ``limit`` of ``backlog``, when the jobs of ``sequence``
    (the queue, then any waiting for a place) are ahead of it; None when no slot is up.

    Plays the slots forward (``_played``): each call that starts takes its jobs out of the queue, so
    makes places; with batching (``calls``) a call takes every job of its batch at once.
    """
    ready = _ready(slots)
    if not ready:
        return None
    leaves = [at for at, batch in _played(sequence, ready, estimates, now, calls) for _ in batch.jobs]
    needed = len(sequence) - limit + 1  # jobs that must leave the queue first
    if needed <= 0 or len(leaves) < needed:  # (fewer: no busy slot takes the rest, the idle ones took theirs)
        return 0.0
    return max(0.0, leaves[needed - 1] - now)


def starts_in_s(sequence: Sequence[Job], slots: Sequence[Slot], estimates: Estimates, now: float,
                calls: Calls | None = None) -> list[float] | None:
    """Seconds until each job of ``sequence`` (the line in the order its jobs start) should start: when
    its call starts, the slots played forward (``_played``); None when no slot is up."""
    ready = _ready(slots)
    if not ready:
        return None
    starts = {job.id: max(0.0, at - now) for at, batch in _played(sequence, ready, estimates, now, calls)
              for job in batch.jobs}
    return [starts.get(job.id, 0.0) for job in sequence]  # none busy to take it: an idle slot's


def _ready(slots: Sequence[Slot]) -> list[Slot]:
    return [slot for slot in slots if slot.state == SlotState.READY and not slot.unreachable]


def _played(sequence: Sequence[Job], ready: Sequence[Slot], estimates: Estimates, now: float,
            calls: Calls | None) -> Iterator[tuple[float, Batch]]:
    """The calls the slots will run ``sequence`` as (``calls``: batches, else a job a call), in order,
    each with when it should start: the idle slots take the first ones now, then each time the first
    busy slot frees it takes the next (a swap first if it holds another model), for as long as the
    call's estimate (a batch's: its images in one call). Calls that no busy slot is there to take
    (every slot idle) are left out."""
    batches = calls(sequence) if calls is not None else [Batch((job,)) for job in sequence]
    idle = sum(1 for slot in ready if slot.available)
    frees = [(now + estimates.remaining_s(slot, now), slot.index, slot.next_model) for slot in ready if slot.busy]
    heapq.heapify(frees)
    for number, batch in enumerate(batches):
        if number < idle:
            yield now, batch
            continue
        if not frees:
            return
        at, index, model = heapq.heappop(frees)
        lead = batch.lead.spec.id
        load_s = 0.0 if model == lead else estimates.load_s(lead)
        heapq.heappush(frees, (at + load_s + estimates.job_s(lead, batch.request), index, lead))
        yield at, batch


def backlog(queue: Sequence[Job], slots: Sequence[Slot]) -> int:
    """Queued jobs that no slot can start now: what ``--max-queue`` limits.

    Jobs held back for a busy slot that holds their model are not counted while an idle slot
    could take them: they wait by choice, not for lack of room.
    """
    return max(0, len(queue) - sum(1 for slot in slots if slot.available))


def _same_model(idle: list[Slot], job: Job) -> Slot | None:
    """An idle slot holding the job's model: of several, the one holding most of its LoRAs."""
    holders = [slot for slot in idle if slot.model == job.spec.id]
    return max(holders, key=lambda slot: adapters_held(slot, job.request), default=None)


def adapters_held(slot: Slot, request: GenerationRequest) -> int:
    """How many of the request's LoRAs the slot's pipeline already holds."""
    return sum(1 for lora in request.loras if lora._path in slot.loras)


def _gives_up_a_model_in_use(slot: Slot, slots: Sequence[Slot], holds: dict[int, str | None], now: float) -> bool:
    """Swapping ``slot`` would drop the only resident copy of a model that ran lately (``holds``: what
    each busy or just-bound slot will hold next)."""
    if slot.model is None or now - slot.last_used > IN_USE_S or slot.last_used == 0.0:
        return False
    return not any(other.model == slot.model or holds.get(other.index) == slot.model
                   for other in slots if other is not slot and other.state == SlotState.READY)


def _victim(idle: list[Slot], waiting: list[Job], model: str) -> Slot:
    """The idle slot to swap to ``model``: one with it in its RAM cache, else the one whose
    resident model is cheapest to give up: none, unwanted, least recently used."""
    wanted = {job.spec.id for job in waiting}
    return min(idle, key=lambda slot: (
        model not in slot.cached, slot.model is not None, slot.model in wanted, slot.last_used,
    ))
