"""The Lumina-Next adapter on its tiny random-weight pipeline, loaded through ``from_pretrained``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from studio import families
from studio.errors import JobCancelled, ModelLoadFailed
from studio.schemas import GenerationRequest

MODEL_ID = "lumina-next"
# Images of one batched call differ from single ones by float rounding only: a couple of 8-bit levels.
BATCH_TOLERANCE = 2


@pytest.fixture(scope="module")
def spec(tiny_catalog):
    return tiny_catalog(MODEL_ID).get(MODEL_ID)


@pytest.fixture(scope="module")
def pipe(spec):
    return families.load_pipeline(spec, "cpu")


def run(pipe, spec, on_step=lambda step, total: None, **fields) -> list:
    request = spec.check(GenerationRequest(prompt=fields.pop("prompt", "a red fox in a forest"), **fields))
    return families.generate(pipe, spec, request, on_step)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class TransformerCalls:
    """Records the latent batch and the text length of every transformer call."""

    def __init__(self, pipe):
        self.batches: list[int] = []
        self.text_tokens: list[int] = []
        self.handle = pipe.transformer.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.batches.append(kwargs["hidden_states"].shape[0])
        self.text_tokens.append(kwargs["encoder_hidden_states"].shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_loads_the_tiny_folder_with_the_real_components(spec, pipe):
    assert spec.local_dir is not None and pipe.name_or_path == str(spec.local_dir)
    assert type(pipe).__name__ == spec.pipeline == "LuminaPipeline"
    assert pipe.device.type == "cpu"
    assert type(pipe.text_encoder).__name__ == "GemmaModel"
    assert type(pipe.tokenizer).__name__ == "GemmaTokenizer"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert type(pipe.transformer).__name__ == "LuminaNextDiT2DModel"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_draws_the_requested_size(spec, pipe):
    finite = []
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: finite.append(output[0].isfinite().all()))
    try:
        images = run(pipe, spec, width=96, height=64, seed=1)
    finally:
        handle.remove()
    assert [image.size for image in images] == [(96, 64)]
    assert len(finite) == spec.defaults.steps and all(finite)
    assert run(pipe, spec, seed=1)[0].size == (spec.defaults.width, spec.defaults.height)


def test_the_empty_negative_prompt_keeps_a_token(pipe):
    # Gemma starts every sequence with <bos>; without it the empty negative prompt's caption
    # pooling divides by zero and the whole image turns to NaN.
    assert pipe.tokenizer("").input_ids == [pipe.tokenizer.bos_token_id]


def test_seed_decides_the_image(spec, pipe):
    first = pixels(run(pipe, spec, seed=7)[0])
    again = pixels(run(pipe, spec, seed=7)[0])
    other = pixels(run(pipe, spec, seed=8)[0])
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_two_images_come_from_one_call_and_match_single_runs(spec, pipe):
    steps = []
    with TransformerCalls(pipe) as transformer:
        batch = run(pipe, spec, seed=11, num_images=2, on_step=lambda step, total: steps.append(step))
    single = [run(pipe, spec, seed=seed)[0] for seed in (11, 12)]

    assert len(batch) == 2
    assert steps == [1, 2]  # one denoising loop for both images
    assert transformer.batches == [4, 4]  # (prompt, negative) x 2 images
    for batched, alone in zip(batch, single):
        assert np.abs(pixels(batched) - pixels(alone)).max() <= BATCH_TOLERANCE
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).mean() > 1.0


def test_progress_reports_every_step_and_cancellation_stops_the_job(spec, pipe):
    calls = []
    run(pipe, spec, steps=3, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    seen = []

    def cancel_after_first(step, total):
        seen.append(step)
        raise JobCancelled("cancelled by the test")

    with TransformerCalls(pipe) as transformer, pytest.raises(JobCancelled):
        run(pipe, spec, steps=3, on_step=cancel_after_first)
    assert seen == [1]
    assert len(transformer.batches) == 1  # no step after the cancelled one


def test_guidance_above_one_runs_the_negative_prompt(spec, pipe):
    with TransformerCalls(pipe) as transformer:
        run(pipe, spec, guidance=1.0)
    assert transformer.batches == [1, 1]

    plain = pixels(run(pipe, spec, seed=3, guidance=4.0)[0])
    negative = pixels(run(pipe, spec, seed=3, guidance=4.0, negative_prompt="dark night city")[0])
    assert np.abs(plain - negative).mean() > 1.0


def test_long_prompts_stop_at_the_token_limit(spec, pipe):
    long_prompt = " ".join(["a red fox in a dark forest at golden hour"] * 20)
    assert len(pipe.tokenizer(long_prompt).input_ids) > spec.token_limit
    with TransformerCalls(pipe) as transformer:
        run(pipe, spec, prompt=long_prompt, negative_prompt="blurry")
    assert transformer.text_tokens[0] == spec.token_limit == 256


def test_the_prompt_is_not_cleaned_even_where_caption_cleaning_is_installed(spec, pipe, monkeypatch):
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
        run(pipe, spec, prompt=prompt, guidance=1.0)
    finally:
        handle.remove()
    expected = pipe.tokenizer(prompt.lower()).input_ids  # lower-casing is the pipeline's own, always
    assert inputs[0][0, : len(expected)].tolist() == expected


def test_a_catalog_naming_another_pipeline_is_refused_before_loading(spec):
    with pytest.raises(ModelLoadFailed) as error:
        families.load_pipeline(replace(spec, pipeline="LuminaText2ImgPipeline"), "cpu")
    assert "LuminaPipeline" in error.value.message
