"""The Lumina-Next adapter on its tiny random-weight pipeline, loaded through ``from_pretrained``."""

from __future__ import annotations

import pytest
from family_checks import (
    DenoiserCalls,
    TinyModels,
    check_another_pipeline_is_refused_before_loading,
    check_batch_is_one_call_matching_single_runs,
    check_draws_requested_size,
    check_loads_tiny_folder,
    check_progress_and_cancellation,
    check_seed_decides_the_image,
    differ,
)

MODEL_ID = "lumina-next"


@pytest.fixture(scope="module")
def tiny(tiny_catalog):
    return TinyModels(tiny_catalog(MODEL_ID))


@pytest.fixture(scope="module")
def spec(tiny):
    return tiny.spec(MODEL_ID)


@pytest.fixture(scope="module")
def pipe(tiny):
    return tiny.pipe(MODEL_ID)


def test_loads_the_tiny_folder_with_the_real_components(tiny, spec, pipe):
    check_loads_tiny_folder(tiny, MODEL_ID)
    assert spec.pipeline == "LuminaPipeline"
    assert type(pipe.text_encoder).__name__ == "GemmaModel"
    assert type(pipe.tokenizer).__name__ == "GemmaTokenizer"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert type(pipe.transformer).__name__ == "LuminaNextDiT2DModel"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_draws_the_requested_size(tiny, spec, pipe):
    # A NaN image would still have the right size: check every transformer output is finite.
    finite = []
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: finite.append(output[0].isfinite().all()))
    try:
        check_draws_requested_size(tiny, MODEL_ID, (96, 64))  # the requested size, then the default
    finally:
        handle.remove()
    assert len(finite) == 2 * spec.defaults.steps and all(finite)


def test_the_empty_negative_prompt_keeps_a_token(pipe):
    # Gemma starts every sequence with <bos>; without it the empty negative prompt's caption
    # pooling divides by zero and the whole image turns to NaN.
    assert pipe.tokenizer("").input_ids == [pipe.tokenizer.bos_token_id]


def test_seed_decides_the_image(tiny):
    check_seed_decides_the_image(tiny, MODEL_ID)


def test_two_images_come_from_one_call_and_match_single_runs(tiny):
    # (prompt, negative) x 2 images in each of the two steps' calls.
    check_batch_is_one_call_matching_single_runs(tiny, MODEL_ID, denoiser_batches={"transformer": [4, 4]})


def test_progress_reports_every_step_and_cancellation_stops_the_job(tiny):
    check_progress_and_cancellation(tiny, MODEL_ID)


def test_guidance_above_one_runs_the_negative_prompt(tiny, pipe):
    with DenoiserCalls(pipe.transformer) as transformer:
        tiny.run(MODEL_ID, guidance=1.0)
    assert transformer.batches == [1, 1]

    plain = tiny.run(MODEL_ID, seed=3, guidance=4.0)[0]
    negative = tiny.run(MODEL_ID, seed=3, guidance=4.0, negative_prompt="dark night city")[0]
    assert differ(plain, negative)


def test_long_prompts_stop_at_the_token_limit(tiny, spec, pipe):
    long_prompt = " ".join(["a red fox in a dark forest at golden hour"] * 20)
    assert len(pipe.tokenizer(long_prompt).input_ids) > spec.token_limit
    with DenoiserCalls(pipe.transformer) as transformer:
        tiny.run(MODEL_ID, prompt=long_prompt, negative_prompt="blurry")
    assert transformer.text_tokens[0] == spec.token_limit == 256


def test_the_prompt_is_not_cleaned_even_where_caption_cleaning_is_installed(tiny, pipe, monkeypatch):
    from diffusers.pipelines.lumina import pipeline_lumina

    # Where bs4 and ftfy are installed the pipeline's default would strip the URL and the
    # punctuation; here they are not, so pretend they are: cleaning must not even be tried.
    monkeypatch.setattr(pipeline_lumina, "is_bs4_available", lambda: True)
    monkeypatch.setattr(pipeline_lumina, "is_ftfy_available", lambda: True)
    prompt = "A RED Fox, see https://example.com/fox"
    inputs = []
    handle = pipe.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(args[0] if args else kwargs["input_ids"]), with_kwargs=True
    )
    try:
        tiny.run(MODEL_ID, prompt=prompt, guidance=1.0)
    finally:
        handle.remove()
    expected = pipe.tokenizer(prompt.lower()).input_ids  # lower-casing is the pipeline's own, always
    assert inputs[0][0, : len(expected)].tolist() == expected


def test_a_catalog_naming_another_pipeline_is_refused_before_loading(tiny):
    check_another_pipeline_is_refused_before_loading(tiny, MODEL_ID, "LuminaText2ImgPipeline")
