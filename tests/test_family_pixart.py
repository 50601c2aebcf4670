"""The PixArt-Sigma family adapter on a tiny random-weight pipeline loaded through ``from_pretrained``."""

from __future__ import annotations

import pytest
from family_checks import (
    DenoiserCalls,
    TinyModels,
    check_batch_is_one_call_matching_single_runs,
    check_large_images_decode_in_tiles,
    check_loads_tiny_folder_and_draws_requested_size,
    check_progress_and_cancellation,
    check_seed_decides_the_image,
    differ,
)

PIXART_IDS = ["pixart-sigma"]


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(*PIXART_IDS))


@pytest.mark.parametrize("model_id", PIXART_IDS)
def test_loads_the_tiny_folder_and_draws_the_requested_size(tiny, model_id):
    check_loads_tiny_folder_and_draws_requested_size(tiny, model_id, (96, 64))


@pytest.mark.parametrize("model_id", PIXART_IDS)
def test_seed_decides_the_image(tiny, model_id):
    check_seed_decides_the_image(tiny, model_id)


@pytest.mark.parametrize("model_id", PIXART_IDS)
def test_two_images_come_from_one_call_and_match_single_runs(tiny, model_id):
    check_batch_is_one_call_matching_single_runs(tiny, model_id)


@pytest.mark.parametrize("model_id", PIXART_IDS)
def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny, model_id):
    check_progress_and_cancellation(tiny, model_id)


@pytest.mark.parametrize("model_id", PIXART_IDS)
def test_large_images_decode_in_tiles(tiny, model_id, monkeypatch):
    check_large_images_decode_in_tiles(tiny, model_id, monkeypatch, wide=(2064, 32))


def test_the_requested_size_is_denoised_as_is_not_binned(tiny):
    # With resolution binning 176x48 would be denoised at its nearest trained bin (far
    # from 11:3) and resized back; without it the latents are exactly the request / 8.
    with DenoiserCalls(tiny.pipe("pixart-sigma").transformer) as calls:
        images = tiny.run("pixart-sigma", width=176, height=48, steps=1)
    assert images[0].size == (176, 48)
    assert calls.latent_shapes == [(2, 4, 6, 22)]


def test_classifier_free_guidance_with_the_negative_prompt(tiny):
    spec = tiny.spec("pixart-sigma")
    pipe = tiny.pipe("pixart-sigma")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    with DenoiserCalls(pipe.transformer) as calls:
        plain = tiny.run("pixart-sigma", guidance=4.5, seed=2, num_images=2)[0]
    assert calls.batches == [4, 4]  # negative and positive halves for each of the two images
    assert calls.text_tokens == [spec.token_limit] * 2  # T5 prompt of 300 tokens

    avoided = tiny.run("pixart-sigma", guidance=4.5, seed=2, negative_prompt="blurry dark")[0]
    assert differ(plain, avoided)

    with DenoiserCalls(pipe.transformer) as calls:
        tiny.run("pixart-sigma", guidance=1.0, steps=2)
    assert calls.batches == [1, 1]  # guidance 1 is no guidance: the pipeline skips the negative half
