"""The FLUX family adapter (flux-schnell, flux-dev) on tiny random-weight pipelines loaded with ``from_pretrained``."""

from __future__ import annotations

import pytest
import torch
from family_checks import (
    DenoiserCalls,
    TinyModels,
    check_another_pipeline_is_refused_before_loading,
    check_batch_is_one_call_matching_single_runs,
    check_loads_tiny_folder_and_draws_requested_size,
    check_progress_and_cancellation,
    check_seed_decides_the_image,
    differ,
)

from studio.errors import InvalidRequest

FLUX_IDS = ["flux-schnell", "flux-dev"]


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(*FLUX_IDS))


@pytest.mark.parametrize("model_id", FLUX_IDS)
def test_loads_the_tiny_folder_and_draws_the_requested_size(tiny, model_id):
    check_loads_tiny_folder_and_draws_requested_size(tiny, model_id, (96, 64))


@pytest.mark.parametrize("model_id", FLUX_IDS)
def test_seed_decides_the_image(tiny, model_id):
    check_seed_decides_the_image(tiny, model_id)


@pytest.mark.parametrize("model_id", FLUX_IDS)
def test_two_images_come_from_one_call_and_match_single_runs(tiny, model_id):
    check_batch_is_one_call_matching_single_runs(tiny, model_id)


@pytest.mark.parametrize("model_id", FLUX_IDS)
def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny, model_id):
    check_progress_and_cancellation(tiny, model_id)


@pytest.mark.parametrize("model_id", FLUX_IDS)
def test_no_negative_prompt(tiny, model_id):
    with pytest.raises(InvalidRequest) as error:
        tiny.request(model_id, negative_prompt="blurry")
    assert error.value.field == "negative_prompt"


def test_schnell_is_timestep_distilled_without_guidance(tiny):
    spec = tiny.spec("flux-schnell")
    pipe = tiny.pipe("flux-schnell")
    assert not pipe.transformer.config.guidance_embeds
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert not pipe.scheduler.config.use_dynamic_shifting

    with DenoiserCalls(pipe.transformer) as calls:
        tiny.run("flux-schnell", steps=2)
    assert pipe.guidance_scale == 0.0
    assert calls.batches == [1, 1]  # one pass per step: no unconditional branch
    assert calls.guidance == [None, None]
    assert calls.text_tokens == [256, 256] == [spec.token_limit] * 2  # T5 prompt of schnell's length

    with pytest.raises(InvalidRequest) as error:
        tiny.request("flux-schnell", guidance=3.5)
    assert error.value.field == "guidance"


def test_dev_feeds_guidance_to_the_transformer_embedding(tiny):
    spec = tiny.spec("flux-dev")
    pipe = tiny.pipe("flux-dev")
    assert pipe.transformer.config.guidance_embeds
    assert pipe.scheduler.config.use_dynamic_shifting  # the schedule shifts with image size

    with DenoiserCalls(pipe.transformer) as calls:
        low = tiny.run("flux-dev", guidance=2.0, seed=5, num_images=2)[0]
    assert pipe.guidance_scale == 2.0
    assert calls.batches == [2, 2]  # guidance-distilled: no doubled batch, no second pass
    for guidance in calls.guidance:
        assert torch.equal(guidance, torch.full((2,), 2.0))
    assert calls.text_tokens == [512, 512] == [spec.token_limit] * 2

    high = tiny.run("flux-dev", guidance=7.0, seed=5)[0]
    assert differ(low, high)  # the embedding makes guidance change the image


def test_a_pipeline_class_the_adapter_does_not_run_is_refused_before_loading(tiny):
    error = check_another_pipeline_is_refused_before_loading(tiny, "flux-dev", "FluxKontextPipeline")
    assert "FluxKontextPipeline" in error.message and "FluxPipeline" in error.message
