"""Batching of compatible jobs (``--batch-window-ms``, ``--max-batch``): which jobs join a batch
(``studio.batching``, pure), the flags, and batches run end to end through the slot manager.

The pure tests turn ``Family.batches`` on for SDXL themselves, so they hold whichever families batch.
"""

from __future__ import annotations

import dataclasses

import pytest

from studio.batching import Batch, batch_key, gather
from studio.catalog import load_catalog
from studio.config import DEFAULT_MAX_BATCH, Settings
from studio.families import FAMILIES
from studio.jobs import Job
from studio.protocol import RunBatch, RunJob
from studio.routing import Estimates
from studio.schemas import GenerationRequest, LoraUse
from studio.turns import Turns

BASE, TURBO, PIXART = "sdxl-base", "sdxl-turbo", "pixart-sigma"
NOW = 1000.0
WINDOW_S = 0.1


@pytest.fixture(scope="module")
def presets():
    return load_catalog()


@pytest.fixture
def sdxl_batches(monkeypatch):
    monkeypatch.setitem(FAMILIES, "sdxl", dataclasses.replace(FAMILIES["sdxl"], batches=True))


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


def test_edits_and_families_without_batching_never_batch(presets, sdxl_batches):
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


def test_a_job_that_cannot_batch_never_waits_and_passes_a_waiting_batch(presets, sdxl_batches):
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

