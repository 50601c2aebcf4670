"""The Sana family adapter (Sana 1.5) on a tiny random-weight pipeline loaded through ``from_pretrained``."""

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

from studio.errors import InvalidRequest

SANA_IDS = ["sana-1.5"]


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(*SANA_IDS))


@pytest.mark.parametrize("model_id", SANA_IDS)
def test_loads_the_tiny_folder_and_draws_the_requested_size(tiny, model_id):
    check_loads_tiny_folder_and_draws_requested_size(tiny, model_id, (96, 64))


@pytest.mark.parametrize("model_id", SANA_IDS)
def test_seed_decides_the_image(tiny, model_id):
    check_seed_decides_the_image(tiny, model_id)


@pytest.mark.parametrize("model_id", SANA_IDS)
def test_two_images_come_from_one_call_and_match_single_runs(tiny, model_id):
    check_batch_is_one_call_matching_single_runs(tiny, model_id)


@pytest.mark.parametrize("model_id", SANA_IDS)
def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny, model_id):
    check_progress_and_cancellation(tiny, model_id)


@pytest.mark.parametrize("model_id", SANA_IDS)
def test_large_images_decode_in_tiles(tiny, model_id, monkeypatch):
    check_large_images_decode_in_tiles(tiny, model_id, monkeypatch, wide=(2080, 32))


def test_sizes_come_in_multiples_of_32_and_are_denoised_as_is(tiny):
    spec = tiny.spec("sana-1.5")
    pipe = tiny.pipe("sana-1.5")
    assert spec.limits.size_multiple == 32 == pipe.vae_scale_factor  # the DC-AE's 32x compression
    with pytest.raises(InvalidRequest) as error:
        tiny.request("sana-1.5", width=80)
    assert error.value.field == "width"

    # Binning would denoise 224x32 (7:1) at its nearest trained bin and resize it back.
    with DenoiserCalls(pipe.transformer) as calls:
        images = tiny.run("sana-1.5", width=224, height=32, steps=1)
    assert images[0].size == (224, 32)
    assert calls.latent_shapes == [(2, 32, 1, 7)]


def test_classifier_free_guidance_with_the_complex_human_instruction(tiny):
    spec = tiny.spec("sana-1.5")
    pipe = tiny.pipe("sana-1.5")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.prediction_type == "flow_prediction"
    gemma_lengths = []
    hook = pipe.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: gemma_lengths.append(args[0].shape[1]), with_kwargs=True
    )
    try:
        with DenoiserCalls(pipe.transformer) as calls:
            plain = tiny.run("sana-1.5", guidance=4.5, seed=2, num_images=2)[0]
    finally:
        hook.remove()
    assert pipe.guidance_scale == 4.5 and pipe.do_classifier_free_guidance
    assert calls.batches == [4, 4]  # negative and positive halves for each of the two images
    # The instruction goes before the prompt only; the transformer still sees token_limit tokens.
    prompt_length, negative_length = gemma_lengths
    assert prompt_length > spec.token_limit == negative_length
    assert calls.text_tokens == [spec.token_limit] * 2

    avoided = tiny.run("sana-1.5", guidance=4.5, seed=2, negative_prompt="blurry dark")[0]
    assert differ(plain, avoided)
