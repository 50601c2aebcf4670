"""Batching of compatible jobs (``--batch-window-ms``, ``--max-batch``): which jobs join a batch
(``studio.batching``, pure), the flags, and batches run end to end through the slot manager.

The pure tests turn ``Family.batches`` on for SDXL themselves, so they hold whichever families batch.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest

from studio.backend import SlotState
from studio.batching import Batch, batch_key, calls, gather
from studio.catalog import load_catalog
from studio.config import DEFAULT_MAX_BATCH, Settings
from studio.families import FAMILIES
from studio.jobs import Job
from studio.protocol import RunBatch, RunJob
from studio.routing import Estimates, Slot, plan_dispatch, room_in_s, starts_in_s
from studio.schemas import GenerationRequest, LoraUse
from studio.turns import Turns
from studio.workerslot import WorkerSlot

BASE, TURBO, PIXART = "sdxl-base", "sdxl-turbo", "pixart-sigma"
NOW = 1000.0
WINDOW_S = 0.1


@pytest.fixture(scope="module")
def presets():
    return load_catalog()


@pytest.fixture
def sdxl_batches(monkeypatch):
    monkeypatch.setitem(FAMILIES, "sdxl", dataclasses.replace(FAMILIES["sdxl"], batches=True))


@pytest.fixture
def pixart_alone(monkeypatch):
    """A family whose adapter runs no batches (every family's does now)."""
    monkeypatch.setitem(FAMILIES, "pixart", dataclasses.replace(FAMILIES["pixart"], batches=False))


def queued(presets, model: str = BASE, owner: str = "ann", waited_s: float = 0.0, seq: int = 0, loras=(),
           **fields) -> Job:
    spec, request = presets.resolve(GenerationRequest(model=model, **{"prompt": "a lighthouse at dusk", **fields}))
    request = request.model_copy(update={"loras": tuple(loras)})  # as resolved: no library needed here
    job = Job(spec, request, seq=seq, owner=owner)
    job.queued_at = NOW - waited_s
    return job


def members(batches: list[Batch]) -> list[list[Job]]:
    return [list(batch.jobs) for batch in batches]


# ---------------------------------------------------------------- which jobs are compatible


def test_jobs_that_differ_only_in_prompts_seeds_and_counts_share_a_key(presets, sdxl_batches):
    one = queued(presets, prompt="a red fox", seed=1)
    other = queued(presets, prompt="a blue whale in a very long prompt " * 5, negative_prompt="blur", seed=9,
                   num_images=3)
    assert batch_key(one) is not None and batch_key(one) == batch_key(other)


@pytest.mark.parametrize("change", [
    dict(model=TURBO), dict(width=768), dict(height=768), dict(steps=2), dict(guidance=1.5),
    dict(sampler="Euler a"), dict(loras=[LoraUse(name="style", scale=0.5)]),
])
def test_jobs_that_differ_in_what_the_call_shares_do_not_batch(presets, sdxl_batches, change):
    assert batch_key(queued(presets)) != batch_key(queued(presets, **change))


def test_a_lora_scale_is_part_of_the_key(presets, sdxl_batches):
    half, full = (queued(presets, loras=[LoraUse(name="style", scale=scale)]) for scale in (0.5, 1.0))
    assert batch_key(half) != batch_key(full)


def test_edits_and_families_without_batching_never_batch(presets, sdxl_batches, pixart_alone):
    edit = queued(presets)
    edit.request = edit.request.model_copy(update={"image": b"png", "strength": 0.5})
    assert batch_key(edit) is None
    assert batch_key(queued(presets, model=PIXART)) is None  # its adapter does not run batches


def test_no_family_batches_unless_its_adapter_turned_it_on(presets, monkeypatch):
    monkeypatch.setitem(FAMILIES, "sdxl", dataclasses.replace(FAMILIES["sdxl"], batches=False))
    assert batch_key(queued(presets)) is None


# ---------------------------------------------------------------- which jobs join, and when a batch starts


def test_without_a_window_every_job_runs_alone(presets, sdxl_batches):
    jobs = [queued(presets, seed=i) for i in range(3)]
    batches, wake_at = gather(jobs, NOW, 0.0, DEFAULT_MAX_BATCH)
    assert members(batches) == [[job] for job in jobs] and wake_at is None


def test_compatible_jobs_join_the_first_in_the_offered_order_up_to_max_images(presets, sdxl_batches):
    a, b, c, d = (queued(presets, seed=i, num_images=n, waited_s=1.0) for i, n in enumerate((1, 2, 1, 1)))
    other = queued(presets, model=TURBO, waited_s=1.0)
    batches, wake_at = gather([a, other, b, c, d], NOW, WINDOW_S, max_images=4)
    assert members(batches) == [[a, b, c], [other], [d]]  # 1 + 2 + 1 images; d starts a batch of its own
    assert batches[0].images == 4 and batches[0].request.num_images == 4 and wake_at is None


def test_a_job_too_big_for_the_rest_of_a_batch_is_passed_by_a_smaller_one(presets, sdxl_batches):
    a, big, small = (queued(presets, num_images=n, waited_s=1.0) for n in (2, 3, 1))
    batches, _ = gather([a, big, small], NOW, WINDOW_S, max_images=3)
    assert members(batches) == [[a, small], [big]]


def test_a_batch_that_is_not_full_waits_the_window_from_its_oldest_member(presets, sdxl_batches):
    older, newer = queued(presets, waited_s=0.03), queued(presets, waited_s=0.01)
    batches, wake_at = gather([older, newer], NOW, WINDOW_S, max_images=4)
    assert batches == [] and wake_at == pytest.approx(NOW - 0.03 + WINDOW_S)
    later = wake_at + 1e-6
    batches, wake_at = gather([older, newer], later, WINDOW_S, max_images=4)
    assert members(batches) == [[older, newer]] and wake_at is None


def test_a_full_batch_starts_at_once(presets, sdxl_batches):
    jobs = [queued(presets, seed=i) for i in range(4)]  # just queued: the window has not begun to run out
    batches, wake_at = gather(jobs, NOW, WINDOW_S, max_images=4)
    assert members(batches) == [jobs] and wake_at is None


def test_a_job_that_cannot_batch_never_waits_and_passes_a_waiting_batch(presets, sdxl_batches, pixart_alone):
    waiting = queued(presets)
    alone = [queued(presets, model=PIXART)]
    batches, wake_at = gather([waiting, *alone], NOW, 5.0, max_images=4)
    assert members(batches) == [alone] and wake_at == NOW + 5.0


def test_fair_share_decides_who_joins_the_first_batch(presets, sdxl_batches):
    """Owner A floods, owner B sends one job last: B's job is in the first batch, not behind the flood."""
    flood = [queued(presets, owner="a", seed=i, seq=i, waited_s=1.0) for i in range(8)]
    late = queued(presets, owner="b", seq=8, waited_s=0.5)
    settings = Settings(batch_window_ms=100, max_batch=4)
    turns = Turns(settings, Estimates())
    offered, _ = turns.order([*flood, late], [], NOW)
    batches, _ = gather(offered, NOW, settings.batch_window_ms / 1000, settings.max_batch)
    assert late in batches[0].jobs and len(batches[0].jobs) == 4
    settings.fair_share = False
    offered, _ = turns.order([*flood, late], [], NOW)
    first, _ = gather(offered, NOW, settings.batch_window_ms / 1000, settings.max_batch)
    assert late not in first[0].jobs  # first come, first served: the flood fills it


def test_a_batch_holds_no_more_of_an_owners_jobs_than_max_running_per_user(presets, sdxl_batches):
    flood = [queued(presets, owner="a", seed=i, seq=i, waited_s=1.0) for i in range(6)]
    running_elsewhere = queued(presets, owner="a", seq=99)
    turns = Turns(Settings(max_running_per_user=3), Estimates())
    offered, _ = turns.order(flood, [running_elsewhere], NOW)
    batches, _ = gather(offered, NOW, WINDOW_S, max_images=8)
    assert members(batches) == [flood[:2]]  # 3 running at most: one already runs


# ---------------------------------------------------------------- a batch's bookkeeping


def test_one_job_is_sent_as_before_and_a_batch_as_one_message(presets, sdxl_batches):
    one, two = queued(presets, seed=1), queued(presets, seed=2, num_images=3)
    assert Batch([one]).message() == RunJob(one.id, one.spec, one.request)
    assert Batch([one]).request is one.request
    message = Batch([one, two]).message()
    assert isinstance(message, RunBatch) and [run.job_id for run in message.jobs] == [one.id, two.id]
    assert [run.request.seed for run in message.jobs] == [1, 2]


def test_members_end_one_by_one_and_share_the_call_by_images(presets, sdxl_batches):
    one, three = queued(presets, seed=1), queued(presets, seed=2, num_images=3)
    batch = Batch([one, three])
    assert (batch.share(one), batch.share(three)) == (0.25, 0.75)
    assert batch.member(one.id) is one
    assert batch.end(one) is False and batch.member(one.id) is None
    assert batch.end(three) is True and batch.running == {}


# ---------------------------------------------------------------- estimates: a batch is one call


def one_and_eight_images(presets) -> Estimates:
    """SDXL measured at 1 s for one image and 3 s for one call of eight."""
    estimates, one = Estimates(), queued(presets).request
    estimates.record_run(BASE, one, 1.0)
    estimates.record_run(BASE, one.model_copy(update={"num_images": 8}), 3.0)
    return estimates


def running(jobs: list[Job], slot_type=Slot):
    """A slot that began generating ``jobs[0]`` (with a ``WorkerSlot``, all of ``jobs`` as one batch) just now."""
    slot = slot_type(0, "cpu", state=SlotState.READY, model=BASE, job=jobs[0], phase="generating",
                     phase_since=NOW, generating_at=NOW)
    if isinstance(slot, WorkerSlot):
        slot.batch = Batch(jobs)
    return slot


def test_queued_jobs_that_will_run_as_one_call_are_estimated_as_one(presets, sdxl_batches):
    """Behind a slot busy for 1 s: eight compatible jobs all start when it frees and take one call of
    eight images (3 s), not eight calls of one; the next eight start after that one call."""
    estimates, slot = one_and_eight_images(presets), running([queued(presets, seed=99)])
    eight = [queued(presets, seed=i, seq=i) for i in range(8)]
    sixteen = eight + [queued(presets, seed=i, seq=i) for i in range(8, 16)]
    on = functools.partial(calls, window_s=WINDOW_S, max_images=8)
    assert starts_in_s(eight, [slot], estimates, NOW, on) == [pytest.approx(1.0)] * 8
    assert room_in_s(eight, [slot], estimates, NOW, limit=1, calls=on) == pytest.approx(1.0)
    assert room_in_s(sixteen, [slot], estimates, NOW, limit=1, calls=on) == pytest.approx(1.0 + 3.0)
    assert room_in_s(sixteen, [slot], estimates, NOW, limit=9, calls=on) == pytest.approx(1.0)  # 8 leave at once
    # Without a window (or without ``calls``) every job is a call of its own, as before batching.
    off = functools.partial(calls, window_s=0.0, max_images=8)
    for alone in (off, None):
        assert starts_in_s(eight, [slot], estimates, NOW, alone) == [pytest.approx(1.0 + i) for i in range(8)]
        assert room_in_s(sixteen, [slot], estimates, NOW, limit=1, calls=alone) == pytest.approx(1.0 + 15)
        assert room_in_s(sixteen, [slot], estimates, NOW, limit=9, calls=alone) == pytest.approx(1.0 + 7)


def test_a_running_batch_s_time_left_counts_all_its_images(presets, sdxl_batches):
    estimates, eight = one_and_eight_images(presets), [queued(presets, seed=i, seq=i) for i in range(8)]
    assert estimates.remaining_s(running(eight, WorkerSlot), NOW + 0.5) == pytest.approx(3.0 - 0.5)
    assert estimates.remaining_s(running(eight[:1], WorkerSlot), NOW + 0.5) == pytest.approx(1.0 - 0.5)
    # Past its second step, from its live steps and the tail after them: decoding and encoding each image.
    estimates.record_tail(BASE, 0.8, images=8)  # a batch of eight took 0.8 s from its last step
    batch, alone = running(eight, WorkerSlot), running(eight[:1], WorkerSlot)
    for slot in (batch, alone):
        slot.step, slot.total, slot.first_step_at, slot.last_step_at = 2, 4, NOW + 0.2, NOW + 0.4
    assert estimates.remaining_s(batch, NOW + 0.4) == pytest.approx(2 * 0.2 + 0.8)
    assert estimates.remaining_s(alone, NOW + 0.4) == pytest.approx(2 * 0.2 + 0.1)


def test_a_batch_bound_in_a_plan_keeps_its_slot_for_the_whole_call(presets, sdxl_batches):
    """A job of the batch's model behind it waits for that slot only if the whole call (3 s) ends
    before a swap (2 s) would: it does not, so the other idle slot loads the model."""
    estimates, eight = one_and_eight_images(presets), [queued(presets, seed=i, seq=i) for i in range(8)]
    estimates.record_load(BASE, 2.0)
    later = queued(presets, seq=8, width=768, height=768)  # another size: another call
    holder, other = Slot(0, "cpu", state=SlotState.READY, model=BASE), Slot(1, "cpu", state=SlotState.READY)
    plan = plan_dispatch([eight[0], later], [holder, other], estimates, NOW, batches={eight[0]: Batch(eight)})
    assert [(binding.job, binding.slot) for binding in plan] == [(eight[0], holder), (later, other)]
    lead_only = plan_dispatch([eight[0], later], [holder, other], estimates, NOW)  # 1 s: worth the wait
    assert [(binding.job, binding.slot) for binding in lead_only] == [(eight[0], holder)]


def test_the_bench_reads_percentiles_by_nearest_rank_and_prints_both_sides():
    from studio.batchbench import batching_rows, percentile

    samples = [float(value) for value in range(1, 21)]
    assert (percentile(samples, 50), percentile(samples, 95), percentile(samples, 100)) == (10.0, 19.0, 20.0)
    result = dict(clients=8, rounds=5, model=TURBO, size="512x512", window_ms=100.0, on_jobs_per_s=0.6,
                  off_jobs_per_s=0.3, throughput_ratio=2.0, on_p50_s=1.0, on_p95_s=2.0, off_p50_s=2.0, off_p95_s=4.0)
    throughput, latency = batching_rows(result)
    assert throughput[0].startswith("jobs/s, 8 clients") and "--batch-window-ms 100" in throughput[0]
    assert throughput[1:] == ("0.60", "0.30", "2.00") and latency[1:] == ("1.00 / 2.00", "2.00 / 4.00", "0.50 / 0.50")


# ---------------------------------------------------------------- the flags


def test_flags_default_to_no_batching():
    settings = Settings.from_args([])
    assert (settings.batch_window_ms, settings.max_batch) == (0.0, DEFAULT_MAX_BATCH)
    assert Settings.from_args(["--batch-window-ms", "100", "--max-batch", "4"]).batch_window_ms == 100.0


def test_flags_take_their_environment_defaults(monkeypatch):
    monkeypatch.setenv("STUDIO_BATCH_WINDOW_MS", "50")
    monkeypatch.setenv("STUDIO_MAX_BATCH", "16")
    settings = Settings.from_args([])
    assert (settings.batch_window_ms, settings.max_batch) == (50.0, 16)


@pytest.mark.parametrize("argv, says", [
    (["--max-batch", "0"], "--max-batch"), (["--max-batch", "65"], "--max-batch"),
    (["--max-batch", "two"], "--max-batch"), (["--batch-window-ms", "-1"], "--batch-window-ms"),
    (["--batch-window-ms", "60000"], "--batch-window-ms"),
    (["--batch-window-ms", "100", "--backend", "ray"], "the Ray backend does not batch"),
])
def test_bad_flags_are_refused_naming_the_flag(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        Settings.from_args(argv)
    assert exit_.value.code == 2 and says in capsys.readouterr().err


def test_ray_without_a_window_starts_as_before():
    assert Settings.from_args(["--backend", "ray"]).batch_window_ms == 0.0


# ---------------------------------------------------------------- end to end: REST, the slot manager, a worker
#
# One server for the tests below: one CPU slot with tiny sdxl-turbo, jobs of 64x64 and 2 steps, a long
# window (members submitted one after another surely meet) and each test's own --max-batch, so that a
# batch starts as soon as its last member arrives. The slot's sent messages are recorded: a test knows
# which jobs ran as one call.

E2E_WINDOW_MS = 3000.0
JOB = dict(model=TURBO, size="64x64", steps=2)


@pytest.fixture(scope="module")
def studio(tiny_models, tmp_path_factory):
    from types import SimpleNamespace

    from studio.server import create_app
    from tests.live import serve_app

    settings = Settings(host="127.0.0.1", devices=["cpu"], models_dir=tiny_models(TURBO), preload=[TURBO],
                        fault_hook="faults:install", batch_window_ms=E2E_WINDOW_MS, max_batch=DEFAULT_MAX_BATCH,
                        max_queue=16, outputs_dir=tmp_path_factory.mktemp("outputs"))
    app = create_app(settings)
    manager = app.state.backend.backend  # the SlotManager behind the download phase
    slot, sent = manager._slots[0], []
    real_send = slot.send

    def recording(message):
        sent.append(message)
        return real_send(message)

    slot.send = recording
    with serve_app(app) as base_url:
        yield SimpleNamespace(url=base_url, manager=manager, settings=settings, sent=sent)


@pytest.fixture
def live(studio, monkeypatch):
    """The server, with whatever a test changes in its settings put back after it."""
    for name in ("batch_window_ms", "max_batch", "job_timeout_s"):
        monkeypatch.setattr(studio.settings, name, getattr(studio.settings, name))
    studio.sent.clear()
    return studio


def post(live, body: dict) -> dict:
    import httpx

    response = httpx.post(f"{live.url}/v1/images/generations", json={**JOB, "response_format": "b64_json", **body},
                          timeout=START_S)
    assert response.status_code == 200, response.text[:500]
    return response.json()


def post_all(live, bodies: list[dict]) -> list[dict]:
    """Send every body at once (one thread each); their answers in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: post(live, body), bodies))


def submit(live, owner: str = "ann", **fields) -> Job:
    spec, request = live.manager.catalog.resolve(GenerationRequest(
        model=TURBO, **{"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 2, **fields}))
    return live.manager.submit(spec, request, owner)


def batches_sent(live) -> list[list[str]]:
    """The job ids of each call the slot was sent (one id: a job alone)."""
    return [[run.job_id for run in message.jobs] if isinstance(message, RunBatch) else [message.job_id]
            for message in live.sent if isinstance(message, (RunBatch, RunJob))]


def started_after(job: Job, submitted: float) -> float:
    """Seconds from ``submitted`` until the job's slot began on it (loading or generating)."""
    import time

    for event in job.iter_events(timeout=START_S):
        if event.stage in ("loading", "generating"):
            return time.monotonic() - submitted
    raise AssertionError(f"{job} ended before it started")


START_S = 120


def png() -> bytes:
    """An input image for an edit, which never batches."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(b64: str):
    import base64
    import io

    import numpy
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return numpy.asarray(image.convert("RGB"), dtype=numpy.int16)


def test_a_batch_gives_each_job_its_own_images_and_seeds_as_unbatched(live):
    import base64

    from studio import pngmeta

    bodies = [dict(prompt="a red fox", seed=11), dict(prompt="a blue whale", seed=22, n=2),
              dict(prompt="a green lighthouse at dusk, oil on canvas, very detailed", seed=33)]
    live.settings.max_batch = 4  # the three jobs' four images fill it: it starts when the last arrives
    batched = post_all(live, bodies)
    assert [len(call) for call in batches_sent(live)] == [3]  # one call ran all three
    for body, answer in zip(bodies, batched):
        assert len(answer["data"]) == body.get("n", 1)
        for index, item in enumerate(answer["data"]):
            meta = pngmeta.read(base64.b64decode(item["b64_json"]))
            assert (meta["prompt"], meta["seed"]) == (body["prompt"], body["seed"] + index)
    live.settings.batch_window_ms = 0  # the same jobs, one by one
    alone = [post(live, body) for body in bodies]
    assert [len(call) for call in batches_sent(live)] == [3, 1, 1, 1]
    for together, single in zip(batched, alone):
        for a, b in zip(together["data"], single["data"]):
            assert abs(pixels(a["b64_json"]) - pixels(b["b64_json"])).max() <= 1  # README: within one level


def test_a_cancelled_member_does_not_fail_the_others(live):
    import faults

    from studio.errors import JobCancelled

    live.settings.max_batch = 3
    lead = submit(live, prompt=faults.SLOW, steps=4, seed=1)  # the whole call is slow: about 0.8 s
    jobs = [lead, *(submit(live, prompt=f"{faults.SLOW} member {seed}", steps=4, seed=seed) for seed in (2, 3))]
    for event in lead.iter_events(timeout=START_S):
        if event.stage == "step":
            break
    assert jobs[1].cancel()
    with pytest.raises(JobCancelled):
        jobs[1].wait(START_S)
    results = [jobs[0].wait(START_S), jobs[2].wait(START_S)]
    assert [result.seeds for result in results] == [[1], [3]] and all(len(r.images) == 1 for r in results)
    assert batches_sent(live) == [[job.id for job in jobs]]
    assert not live.manager.status().slots[0].busy


def test_an_error_fails_every_member_with_the_same_message(live):
    import faults

    from studio.errors import StudioError

    live.settings.max_batch = 2
    jobs = [submit(live, prompt=faults.FAIL, seed=1), submit(live, prompt="an innocent bystander", seed=2)]
    errors = []
    for job in jobs:
        with pytest.raises(StudioError) as failed:
            job.wait(START_S)
        errors.append(str(failed.value))
    assert errors[0] == errors[1] and "injected failure" in errors[0]
    assert batches_sent(live) == [[job.id for job in jobs]]
    live.settings.max_batch = 1  # a batch of one is full: no window to wait
    assert submit(live, seed=3).wait(START_S).seeds == [3]  # the slot serves on


def test_a_timeout_ends_every_member(live):
    import faults

    from studio.errors import JobTimeout

    live.settings.max_batch, live.settings.job_timeout_s = 2, 0.3  # the call's 4 slow steps take at least 0.8 s
    jobs = [submit(live, prompt=f"{faults.SLOW} {seed}", steps=4, seed=seed) for seed in (1, 2)]
    for job in jobs:
        with pytest.raises(JobTimeout, match="ran longer than 0.3 s"):
            job.wait(START_S)
    assert batches_sent(live) == [[job.id for job in jobs]]
    live.settings.max_batch, live.settings.job_timeout_s = 1, 600
    assert submit(live, seed=3).wait(START_S).seeds == [3]  # the worker honoured the cancels: the slot serves on


def test_fair_share_picks_the_members(live):
    """Owner A floods while the slot is busy, owner B sends one job last: B's job is in the first batch."""
    import faults

    live.settings.max_batch = 3
    blocker = submit(live, owner="c", prompt=faults.SLOW, steps=4, seed=0, image=png(), strength=1.0)  # ~1 s, alone
    for event in blocker.iter_events(timeout=START_S):
        if event.stage == "step":
            break
    flood = [submit(live, owner="a", seed=seed) for seed in range(1, 6)]  # with B's, two full batches
    late = submit(live, owner="b", seed=7)
    for job in [blocker, *flood, late]:
        job.wait(START_S)
    calls = batches_sent(live)
    assert calls[0] == [blocker.id] and late.id in calls[1] and len(calls[1]) == 3, calls


def test_a_job_that_cannot_batch_never_waits_the_window(live):
    """A batchable job alone waits the window for companions; an edit (image-to-image) sent after it
    starts at once, passing it."""
    import time

    submitted = time.monotonic()
    alone = submit(live, seed=2)
    edit = submit(live, image=png(), strength=1.0, seed=1)
    assert started_after(edit, submitted) < E2E_WINDOW_MS / 1000 / 2
    assert started_after(alone, submitted) >= E2E_WINDOW_MS / 1000 * 0.9
    edit.wait(START_S), alone.wait(START_S)
    assert batches_sent(live) == [[edit.id], [alone.id]]


def test_status_counts_every_running_member(live):
    import faults

    live.settings.max_batch = 3
    jobs = [submit(live, owner=owner, prompt=f"{faults.SLOW} {index}", steps=4, seed=index)  # slow, whoever leads
            for index, owner in enumerate(("ann", "ann", "bob"))]
    for event in jobs[0].iter_events(timeout=START_S):
        if event.stage == "step":
            break
    status = live.manager.status()
    assert set(status.slots[0].batch) == {job.id for job in jobs} and status.slots[0].job in status.slots[0].batch
    assert {(owner.owner, owner.running) for owner in status.owners} == {("ann", 2), ("bob", 1)}
    for job in jobs:
        job.wait(START_S)
