"""Routing on its own: which queued job starts where, from slot states and estimates (no processes)."""

from __future__ import annotations

import pytest

from studio.catalog import load_catalog
from studio.jobs import Job
from studio.routing import Estimates, Slot, backlog, plan_dispatch, room_in_s
from studio.schemas import GenerationRequest

BASE, TURBO = "sdxl-base", "sdxl-turbo"


@pytest.fixture(scope="module")
def presets():
    return load_catalog()


def queued_job(presets, model: str, waited_s: float = 0.0, now: float = 1000.0, **fields) -> Job:
    spec, request = presets.resolve(GenerationRequest(model=model, prompt="a lighthouse at dusk", seed=1, **fields))
    job = Job(spec, request)
    job.queued_at = now - waited_s
    return job


def pairs(plan) -> list[tuple]:
    """The plan as (job, slot) pairs, leaving out why each slot loads."""
    return [(binding.job, binding.slot) for binding in plan]


def busy_slot(index: int, job: Job, now: float, step: int, total: int, per_step_s: float) -> Slot:
    return Slot(index, "cpu", state="ready", model=job.spec.id, job=job, phase="step",
                generating_at=now - step * per_step_s, step=step, total=total,
                first_step_at=now - (step - 1) * per_step_s, last_step_at=now)


def test_plan_prefers_the_idle_slot_that_holds_the_model(presets):
    job = queued_job(presets, BASE)
    empty, holder = Slot(0, "cpu", state="ready"), Slot(1, "cpu", state="ready", model=BASE)
    assert pairs(plan_dispatch([job], [empty, holder], Estimates(), now=1000.0)) == [(job, holder)]


def test_plan_waits_for_a_busy_holder_only_when_that_beats_a_load(presets):
    now = 1000.0
    running = queued_job(presets, BASE)
    busy = busy_slot(0, running, now, step=5, total=10, per_step_s=0.2)  # about 1 s left
    idle = Slot(1, "cpu", state="ready", model=TURBO)
    job = queued_job(presets, BASE)
    slow_loads, fast_loads = Estimates(), Estimates()
    slow_loads.record_load(BASE, 10.0)
    fast_loads.record_load(BASE, 0.5)
    assert pairs(plan_dispatch([job], [busy, idle], slow_loads, now)) == []
    assert pairs(plan_dispatch([job], [busy, idle], fast_loads, now)) == [(job, idle)]


def test_plan_counts_the_jobs_already_waiting_for_a_busy_slot(presets):
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)  # 1 s left
    idle = Slot(1, "cpu", state="ready", model=TURBO)
    first, second = queued_job(presets, BASE, waited_s=2), queued_job(presets, BASE, waited_s=1)
    estimates = Estimates()
    estimates.record_load(BASE, 1.5)
    estimates.record_run(BASE, first.request, 1.0)  # each waiting job adds 1 s to the busy slot
    assert pairs(plan_dispatch([first, second], [busy, idle], estimates, now)) == [(second, idle)]


def test_plan_lets_a_starving_job_take_any_idle_slot(presets):
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)
    idle = Slot(1, "cpu", state="ready", model=TURBO)
    job = queued_job(presets, BASE, waited_s=61)
    estimates = Estimates()
    estimates.record_load(BASE, 10.0)
    assert pairs(plan_dispatch([job], [busy, idle], estimates, now, starvation_s=60)) == [(job, idle)]


def test_plan_binds_affinity_before_fifo_and_swaps_the_least_useful_slot(presets):
    now = 1000.0
    newcomer = queued_job(presets, "flux-schnell", waited_s=3)  # oldest, held nowhere
    turbo = queued_job(presets, TURBO, waited_s=2)
    base_slot = Slot(0, "cpu", state="ready", model=BASE, last_used=now - 5)
    turbo_slot = Slot(1, "cpu", state="ready", model=TURBO, last_used=now - 50)
    # The turbo job keeps its model's slot; the older newcomer evicts the other one, not turbo.
    assert pairs(plan_dispatch([newcomer, turbo], [base_slot, turbo_slot], Estimates(), now)) == [
        (turbo, turbo_slot), (newcomer, base_slot)
    ]
    empty = Slot(2, "cpu", state="ready")
    lru = Slot(3, "cpu", state="ready", model="pixart-sigma", last_used=now - 50)
    recent = Slot(4, "cpu", state="ready", model="sana-1.5", last_used=now - 1)
    assert pairs(plan_dispatch([newcomer], [recent, lru, empty], Estimates(), now)) == [(newcomer, empty)]
    assert pairs(plan_dispatch([newcomer], [recent, lru], Estimates(), now)) == [(newcomer, lru)]


def test_plan_sends_a_job_to_the_slot_with_its_model_in_ram(presets):
    now = 1000.0
    job = queued_job(presets, BASE)
    empty = Slot(0, "cpu", state="ready")
    parked = Slot(1, "cpu", state="ready", model=TURBO, cached=[BASE], last_used=now)
    assert pairs(plan_dispatch([job], [empty, parked], Estimates(), now)) == [(job, parked)]
    # A swap from RAM beats waiting for a busy holder that a disk load would not beat.
    busy = busy_slot(2, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.4)  # 2 s left
    estimates = Estimates()
    estimates.record_load(BASE, 10.0)
    estimates.record_load(BASE, 0.5, cached=True)
    assert pairs(plan_dispatch([job], [busy, empty], estimates, now)) == []
    assert pairs(plan_dispatch([job], [busy, empty, parked], estimates, now)) == [(job, parked)]


def test_plan_skips_dead_and_busy_slots(presets):
    job = queued_job(presets, BASE)
    dead = Slot(0, "cpu", state="dead", model=BASE)
    busy = busy_slot(1, queued_job(presets, TURBO), 1000.0, step=1, total=2, per_step_s=0.1)
    assert pairs(plan_dispatch([job], [dead, busy], Estimates(), now=1000.0)) == []


def test_plan_never_holds_a_job_on_a_load_time_nobody_measured(presets):
    """A fresh server: the holder is busy, the other slot idle, no load of the model measured (no
    worker has loaded it yet): the job takes the idle slot."""
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)  # 1 s left
    idle = Slot(1, "cpu", state="ready", model=TURBO)
    job = queued_job(presets, BASE)
    cold = Estimates(default_load_s=60.0)  # guesses only
    assert pairs(plan_dispatch([job], [busy, idle], cold, now)) == [(job, idle)]
    warm = Estimates()
    warm.record_load(BASE, 5.0)  # a measured swap is slower than the 1 s left: worth the wait
    assert pairs(plan_dispatch([job], [busy, idle], warm, now)) == []


def test_the_queue_limit_counts_only_jobs_no_slot_can_start(presets):
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)
    idle = Slot(1, "cpu", state="ready", model=TURBO)
    held = [queued_job(presets, BASE), queued_job(presets, BASE)]
    assert backlog(held, [busy, idle]) == 1  # one of them could start on the idle slot now
    assert backlog(held, [busy]) == 2
    assert backlog([], [busy, idle]) == 0


def test_a_busy_slot_s_time_left_comes_from_its_steps_after_the_first(presets):
    """The first step's time includes the prompt's encoding: the rate is read from the steps after it,
    and the tail after the last step (decode, encode) is added as measured."""
    now = 1000.0
    slot = busy_slot(0, queued_job(presets, BASE), now, step=5, total=25, per_step_s=0.2)
    slot.generating_at = now - 30.0  # a slow start (a loaded machine encoding the prompt) ...
    slot.first_step_at, slot.last_step_at = now - 0.8, now  # ... then steps 2 to 5 at 0.2 s each
    estimates = Estimates()
    assert estimates.remaining_s(slot, now) == pytest.approx(20 * 0.2)
    estimates.record_tail(BASE, 1.5)
    assert estimates.remaining_s(slot, now) == pytest.approx(20 * 0.2 + 1.5)
    assert estimates.remaining_s(slot, now + 1.0) == pytest.approx(20 * 0.2 - 1.0 + 1.5)  # a second into step 6


def test_a_job_s_duration_is_measured_per_shape_before_it_is_scaled(presets):
    """A small job's fixed costs make megapixel-steps a poor scale: a shape seen once is used as measured."""
    small = queued_job(presets, TURBO, width=256, height=256, steps=1).request
    large = queued_job(presets, TURBO, width=512, height=512, steps=4).request
    estimates = Estimates()
    estimates.record_run(TURBO, small, 0.3)
    assert estimates.job_s(TURBO, small) == pytest.approx(0.3)
    assert estimates.job_s(TURBO, large) > estimates.job_s(TURBO, small)  # another shape: scaled
    estimates.record_run(TURBO, large, 0.9)
    assert estimates.job_s(TURBO, large) == pytest.approx(0.9)
    assert estimates.job_s(TURBO, small) == pytest.approx(0.3)


def test_room_in_the_queue_comes_when_enough_jobs_have_left_it(presets):
    """Retry-After's source: the busy slots played forward, each taking the next job as it frees."""
    now = 1000.0
    one_s_left = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)
    queue = [queued_job(presets, BASE) for _ in range(3)]
    estimates = Estimates()
    estimates.record_run(BASE, queue[0].request, 2.0)
    assert room_in_s(queue[:1], [one_s_left], estimates, now, limit=2) == 0.0  # a place is free now
    assert room_in_s(queue[:2], [one_s_left], estimates, now, limit=2) == pytest.approx(1.0)
    assert room_in_s(queue, [one_s_left], estimates, now, limit=2) == pytest.approx(3.0)
    three_s_left = busy_slot(1, queued_job(presets, BASE), now, step=2, total=5, per_step_s=1.0)
    # Two slots, free at 1 s and 3 s; the first is free again at 3 s, then both at 5 s.
    both = [one_s_left, three_s_left]
    assert [room_in_s(queue + queue[:extra], both, estimates, now, limit=2) for extra in range(3)] == [
        pytest.approx(3.0), pytest.approx(3.0), pytest.approx(5.0)]
    assert room_in_s(queue, [Slot(0, "cpu", state="dead")], estimates, now, limit=2) is None


def test_plan_does_not_merely_exchange_models_between_slots(presets):
    """Two slots, each holding one of two models in use: a job for the busy one's model waits for it
    rather than evicting the other model's only copy (which the next job would load back)."""
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)  # 1 s left
    job = queued_job(presets, BASE)
    in_use = Slot(1, "cpu", state="ready", model=TURBO, last_used=now - 5)
    assert pairs(plan_dispatch([job], [busy, in_use], Estimates(), now)) == []
    # Free to take: never used (a preload), used long ago, a second copy, or a wait longer than a load.
    never_used = Slot(1, "cpu", state="ready", model=TURBO)
    long_ago = Slot(1, "cpu", state="ready", model=TURBO, last_used=now - 600)
    assert pairs(plan_dispatch([job], [busy, never_used], Estimates(), now)) == [(job, never_used)]
    assert pairs(plan_dispatch([job], [busy, long_ago], Estimates(), now)) == [(job, long_ago)]
    other_copy = Slot(2, "cpu", state="ready", model=TURBO, job=queued_job(presets, TURBO), phase="step")
    assert pairs(plan_dispatch([job], [busy, in_use, other_copy], Estimates(), now)) == [(job, in_use)]
    assert pairs(plan_dispatch([job], [busy, in_use], Estimates(default_load_s=0.5), now)) == [(job, in_use)]


def test_an_exchange_must_beat_both_loads_it_costs(presets):
    """Evicting the only copy of a model in use costs this load and the load back: a wait shorter
    than the two together is cheaper, even when it is longer than one of them."""
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)  # 1 s left
    job = queued_job(presets, BASE)
    in_use = Slot(1, "cpu", state="ready", model=TURBO, last_used=now - 5)
    estimates = Estimates()
    estimates.record_load(BASE, 0.8)
    estimates.record_load(TURBO, 0.8)
    assert pairs(plan_dispatch([job], [busy, in_use], estimates, now)) == []  # 1 s < 0.8 + 0.8
    estimates.record_load(TURBO, 0.1)
    estimates.record_load(TURBO, 0.1)  # smoothed: about 0.45 s now
    plan = plan_dispatch([job], [busy, in_use], estimates, now)
    assert pairs(plan) == []  # 1 s < 0.8 + 0.45
    slow = busy_slot(0, queued_job(presets, BASE), now, step=2, total=12, per_step_s=0.2)  # 2 s left
    plan = plan_dispatch([job], [slow, in_use], estimates, now)
    assert pairs(plan) == [(job, in_use)]
    assert plan[0].why.startswith(f"slot 0 with {BASE} frees in ~2.0 s; {BASE}'s load plus {TURBO}'s load back")


def test_a_slot_bound_in_the_same_plan_holds_its_model(presets):
    """Two jobs of one model, its holder idle and the other slot holding a model in use: the second
    job waits for the holder (bound a moment ago) instead of evicting the other model."""
    now = 1000.0
    first, second = queued_job(presets, BASE), queued_job(presets, BASE)
    holder = Slot(0, "cpu", state="ready", model=BASE, last_used=now - 2)
    in_use = Slot(1, "cpu", state="ready", model=TURBO, last_used=now - 2)
    assert pairs(plan_dispatch([first, second], [holder, in_use], Estimates(), now)) == [(first, holder)]


def test_a_load_says_why(presets):
    now = 1000.0
    job = queued_job(presets, TURBO)
    plan = plan_dispatch([job], [Slot(0, "cpu", state="ready", model=BASE)], Estimates(), now)
    assert plan == [(job, plan[0].slot, f"no slot holds {TURBO}")]
    holder = Slot(0, "cpu", state="ready", model=TURBO)
    assert plan_dispatch([job], [holder], Estimates(), now)[0].why == ""  # no load, nothing to say



def test_a_job_due_its_turn_of_fair_share_waits_for_its_model_rather_than_load_it(presets):
    """Fair share decides whose job goes next, never that a slot loads: a due job whose model's slot frees
    in about a second waits for it rather than evict the other model in use (the next job would load it
    back); it still goes before the others."""
    now = 1000.0
    busy = busy_slot(0, queued_job(presets, BASE), now, step=5, total=10, per_step_s=0.2)  # 1 s left
    in_use = Slot(1, "cpu", state="ready", model=TURBO, last_used=now - 2)
    due = queued_job(presets, BASE, waited_s=5)
    assert pairs(plan_dispatch([due], [busy, in_use], Estimates(), now, due=[due])) == []
    turbo = queued_job(presets, TURBO, waited_s=1)
    assert pairs(plan_dispatch([due, turbo], [busy, in_use], Estimates(), now, due=[due])) == [(turbo, in_use)]
    other_turbo = queued_job(presets, TURBO, waited_s=9)
    assert pairs(plan_dispatch([other_turbo, turbo], [in_use], Estimates(), now, due=[turbo])) == [(turbo, in_use)]
    # A holder busy for longer than both loads: the due job takes the idle slot, and says why in numbers.
    slow = busy_slot(0, queued_job(presets, BASE), now, step=2, total=502, per_step_s=0.2)  # 100 s left
    plan = plan_dispatch([due], [slow, in_use], Estimates(), now, due=[due])
    assert pairs(plan) == [(due, in_use)]
    assert plan[0].why == (f"slot 0 with {BASE} frees in ~100.0 s; {BASE}'s load plus {TURBO}'s load back (~20.0 s)"
                           " (it waited its round of fair share)")



def test_a_fresh_server_waits_on_a_first_load_measured_at_start_up(presets):
    """Before any swap, the preloads' first loads (imports included: a swap takes at most that long) are
    measured: a job whose model's slot frees at once waits for it rather than evict an idle preload
    (the bench's burst of two models loaded twice at start-up this way, an exchange of the two)."""
    now = 1000.0
    holder = busy_slot(0, queued_job(presets, BASE), now, step=2, total=3, per_step_s=0.05)  # about to free
    preload = Slot(1, "cpu", state="ready", model=TURBO)  # never used
    job = queued_job(presets, BASE)
    estimates = Estimates()
    estimates.record_first_load(BASE, 5.0)
    estimates.record_first_load(TURBO, 5.0)
    assert pairs(plan_dispatch([job], [holder, preload], estimates, now)) == []
    slow = busy_slot(0, queued_job(presets, BASE), now, step=2, total=52, per_step_s=0.2)  # 10 s left
    plan = plan_dispatch([job], [slow, preload], estimates, now)
    assert pairs(plan) == [(job, preload)]
    assert plan[0].why == f"slot 0 with {BASE} frees in ~10.0 s; {BASE}'s first load on a worker (~5.0 s, imports included)"
    estimates.record_load(BASE, 12.0)  # a warm load measured: it decides from now on
    assert pairs(plan_dispatch([job], [slow, preload], estimates, now)) == []


def test_no_job_waits_by_choice_while_others_wait_for_a_place(presets):
    """Waiting for the busy slot with its model would be quicker for the job, but it would keep jobs
    out of a full queue while a slot idles: the idle slot takes it."""
    now = 1000.0
    holder = busy_slot(0, queued_job(presets, BASE), now, step=2, total=4, per_step_s=0.05)  # 0.1 s left
    preload = Slot(1, "cpu", state="ready", model=TURBO)
    job = queued_job(presets, BASE)
    estimates = Estimates()
    estimates.record_load(BASE, 5.0)
    assert pairs(plan_dispatch([job], [holder, preload], estimates, now, crowded=0)) == []
    plan = plan_dispatch([job], [holder, preload], estimates, now, crowded=3)
    assert pairs(plan) == [(job, preload)]
    assert plan[0].why == (f"slot 0 with {BASE} frees in ~0.1 s; a measured load of {BASE} (~5.0 s); "
                           "3 more wait for a place in the queue")


# ---------------------------------------------------------------- LoRAs: a preference, never a wait


@pytest.fixture(scope="module")
def lora_catalog(lora_models):
    return load_catalog(lora_models, lora_dir=lora_models / "loras")


def lora_job(catalog, *names: str) -> Job:
    spec, request = catalog.resolve(GenerationRequest(model=BASE, prompt="a fox", seed=1, loras=list(names)))
    job = Job(spec, request)
    job.queued_at = 1000.0
    return job


def test_of_the_idle_slots_holding_the_model_the_one_with_the_job_s_loras_is_chosen(lora_catalog):
    job = lora_job(lora_catalog, "tiny-sdxl-kohya", "tiny-sdxl-diffusers")
    kohya, diffusers_format = (lora._path for lora in job.request.loras)
    plain = Slot(0, "cpu", state="ready", model=BASE)
    one = Slot(1, "cpu", state="ready", model=BASE, loras=(kohya,))
    both = Slot(2, "cpu", state="ready", model=BASE, loras=(diffusers_format, kohya))
    assert pairs(plan_dispatch([job], [plain, one, both], Estimates(), now=1000.0)) == [(job, both)]
    assert pairs(plan_dispatch([job], [plain, one], Estimates(), now=1000.0)) == [(job, one)]
    plain_job = lora_job(lora_catalog)  # no LoRAs: the first holder, as before
    assert pairs(plan_dispatch([plain_job], [one, plain], Estimates(), now=1000.0)) == [(plain_job, one)]


def test_a_job_never_waits_for_the_busy_slot_with_its_loras_while_a_holder_is_idle(lora_catalog):
    now = 1000.0
    job = lora_job(lora_catalog, "tiny-sdxl-kohya")
    running = lora_job(lora_catalog, "tiny-sdxl-kohya")
    busy = busy_slot(0, running, now, step=9, total=10, per_step_s=0.01)  # about to free, with the adapter
    busy.loras = tuple(lora._path for lora in running.request.loras)
    idle = Slot(1, "cpu", state="ready", model=BASE)
    estimates = Estimates()
    estimates.record_load(BASE, 30.0)
    assert pairs(plan_dispatch([job], [busy, idle], estimates, now)) == [(job, idle)]


def test_times_measured_on_another_memory_plan_are_forgotten():
    estimates = Estimates()
    estimates.replanned("flux-dev", "full")
    estimates.record_load("flux-dev", 9.0)
    estimates.record_load("sdxl-base", 4.0)
    estimates.replanned("flux-dev", "full")  # the same plan: the times stand
    assert estimates.measured_load_s("flux-dev") == 9.0
    estimates.replanned("flux-dev", "fp8")  # an out-of-memory moved it: its full-plan times no longer hold
    assert estimates.measured_load_s("flux-dev") is None and estimates.load_s("flux-dev") == estimates.default_load_s
    assert estimates.measured_load_s("sdxl-base") == 4.0  # other models keep theirs
