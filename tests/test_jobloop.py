"""The one job loop (studio.jobloop) on a real Engine with a tiny model: what it sends, what it returns."""

from __future__ import annotations

import pickle

import pytest

from studio.errors import JobCancelled, OutOfMemory, StudioError
from studio.jobloop import as_studio_error, run_job
from studio.protocol import Done, Failed, Preview, Stage, Step
from studio.schemas import GenerationRequest

BASE = "sdxl-base"


@pytest.fixture(scope="module")
def engine_and_spec(tiny_catalog):
    from studio.engine import Engine

    spec = tiny_catalog(BASE).get(BASE)
    return Engine("cpu"), spec


def resolved(spec, **fields):
    return spec.check(GenerationRequest(prompt="a fox", seed=1, **fields))


def test_a_job_sends_its_stages_and_first_and_last_steps_and_ends_done(engine_and_spec):
    engine, spec = engine_and_spec
    sent = []
    outcome = run_job(engine, "j1", spec, resolved(spec, steps=6, previews=2), sent.append, lambda: False,
                      where="slot 3 (cpu)", slot=3)
    assert isinstance(outcome, Done) and outcome.result.slot == 3 and len(outcome.result.images) == 1
    assert outcome.state.model == BASE
    stages = [message.stage for message in sent if isinstance(message, Stage)]
    assert stages[-2:] == ["generating", "encoding"]
    steps = [message.step for message in sent if isinstance(message, Step)]
    assert steps[0] == 1 and steps[-1] == 6 and steps == sorted(steps)
    assert [message.index for message in sent if isinstance(message, Preview)] == [0, 1]


def test_a_cancel_fails_the_job_within_one_step_and_the_engine_lives(engine_and_spec):
    engine, spec = engine_and_spec
    sent = []
    outcome = run_job(engine, "j2", spec, resolved(spec, steps=20), sent.append,
                      lambda: any(isinstance(message, Step) for message in sent), where="slot 0 (cpu)")
    assert isinstance(outcome, Failed) and isinstance(outcome.error, JobCancelled)
    assert max(message.step for message in sent if isinstance(message, Step)) == 1
    assert isinstance(run_job(engine, "j3", spec, resolved(spec), sent.append, lambda: False, "slot 0"), Done)


def test_the_error_mapper_keeps_studio_errors_and_frees_memory_on_an_out_of_memory(engine_and_spec):
    engine, spec = engine_and_spec
    engine.ensure(spec)
    kept = JobCancelled("stop")
    assert as_studio_error(kept, spec, engine, "slot 0") is kept
    error = as_studio_error(MemoryError(), spec, engine, "slot 0")
    assert isinstance(error, OutOfMemory) and error.status == 503 and engine.model_id is None
    error = as_studio_error(ValueError("odd"), spec, engine, "replica-1/cpu")
    assert type(error) is StudioError and error.message == f"{BASE} failed on replica-1/cpu: ValueError: odd"
    assert pickle.loads(pickle.dumps(error)).message == error.message


def test_a_stop_signal_is_not_a_job_failure(engine_and_spec):
    engine, spec = engine_and_spec

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(engine, "j4", spec, resolved(spec), lambda message: None, interrupted, "slot 0")
