"""The Chroma family adapter (Chroma1-HD) on a tiny random-weight pipeline loaded through ``from_pretrained``."""

from __future__ import annotations

import pytest
from family_checks import (
    DenoiserCalls,
    TinyModels,
    check_batch_is_one_call_matching_single_runs,
    check_loads_tiny_folder_and_draws_requested_size,
    check_progress_and_cancellation,
    check_seed_decides_the_image,
    differ,
)

CHROMA_IDS = ["chroma"]


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(*CHROMA_IDS))


@pytest.mark.parametrize("model_id", CHROMA_IDS)
def test_loads_the_tiny_folder_and_draws_the_requested_size(tiny, model_id):
    check_loads_tiny_folder_and_draws_requested_size(tiny, model_id, (64, 96))


@pytest.mark.parametrize("model_id", CHROMA_IDS)
def test_seed_decides_the_image(tiny, model_id):
    check_seed_decides_the_image(tiny, model_id)


@pytest.mark.parametrize("model_id", CHROMA_IDS)
def test_two_images_come_from_one_call_and_match_single_runs(tiny, model_id):
    check_batch_is_one_call_matching_single_runs(tiny, model_id)


@pytest.mark.parametrize("model_id", CHROMA_IDS)
def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny, model_id):
    # Guidance runs the negative prompt as a call of its own: two calls per step.
    check_progress_and_cancellation(tiny, model_id, calls_per_step=2)


def test_t5_is_the_only_text_encoder(tiny):
    pipe = tiny.pipe("chroma")
    assert type(pipe.text_encoder).__name__ == "T5EncoderModel"
    assert not hasattr(pipe, "text_encoder_2")
    assert type(pipe.transformer).__name__ == "ChromaTransformer2DModel"
    assert pipe.vae.config.latent_channels == 16  # FLUX's VAE


def test_runs_real_classifier_free_guidance_with_the_negative_prompt(tiny):
    spec = tiny.spec("chroma")
    pipe = tiny.pipe("chroma")
    with DenoiserCalls(pipe.transformer) as calls:
        plain = tiny.run("chroma", guidance=4.0, seed=3, steps=2)[0]
    assert pipe.guidance_scale == 4.0
    assert pipe.do_classifier_free_guidance
    assert calls.batches == [1, 1, 1, 1]  # prompt and negative passes at each of the two steps
    assert calls.text_tokens == [spec.token_limit] * 4

    avoided = tiny.run("chroma", guidance=4.0, seed=3, steps=2, negative_prompt="blurry dark")[0]
    assert differ(plain, avoided)


def test_guidance_one_skips_the_unconditional_pass(tiny):
    pipe = tiny.pipe("chroma")
    with DenoiserCalls(pipe.transformer) as calls:
        tiny.run("chroma", guidance=1.0, steps=2)
    assert not pipe.do_classifier_free_guidance
    assert calls.batches == [1, 1]
