"""Stable Cascade: a text-conditioned prior (stage C) and a decoder (stages B and A), run as one job.

The family rules, as in the model card's two-stage example:

* The prior (``spec.prior_repo``, ``StableCascadePriorPipeline``) runs the request's steps and
  guidance and produces 16-channel image embeddings 42.67x smaller than the image; the
  negative prompt only matters here.
* The decoder (``spec.repo``, ``StableCascadeDecoderPipeline``) runs ``spec.decoder_steps``
  steps at guidance 0 and its VQGAN upscales 4x.
* Progress covers both stages: ``on_step(k, steps + decoder_steps)``.
* Sizes are multiples of 128 (checked by the catalog); only those survive the prior's and
  decoder's rounding unchanged.

Loading: a local models folder holds the stages as ``prior/`` and ``decoder/``; the hub has
them as two repos, each in the catalog's ``variant`` (bf16). The prior loads with
``from_pretrained``, without its CLIP image encoder (image variations only, about 0.6 GB).
The decoder loads component by component with ``from_pretrained``: its ``model_index.json``
names the VQGAN's library as it was when it was saved, and diffusers 0.42 (which moved
``PaellaVQModel`` under ``pipelines.deprecated``) can no longer resolve that name. The
decoder shares the prior's text encoder: the diffusers conversion saved the same CLIP
bigG weights in both repos, and in this flow the decoder only reads the prior's pooled
prompt embeddings anyway.

The loaded pipeline is a ``StableCascadeCombinedPipeline`` over the two loaded stages, so the
rest of the studio sees one ordinary diffusers pipeline.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    DDPMWuerstchenScheduler,
    StableCascadeCombinedPipeline,
    StableCascadeDecoderPipeline,
    StableCascadePriorPipeline,
    StableCascadeUNet,
)
from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel

from studio.catalog import ModelSpec
from studio.errors import ModelLoadFailed
from studio.families import base
from studio.schemas import GenerationRequest

PRIOR_DIR = "prior"  # the two stages inside a local model folder (see studio.tiny.cascade)
DECODER_DIR = "decoder"
DECODER_GUIDANCE = 0.0  # the decoder is not guided, as in the model card's example


def load(spec: ModelSpec, device: str) -> StableCascadeCombinedPipeline:
    base.pipeline_class(spec)  # the catalog names the combined pipeline, or nothing is read
    if not spec.decoder_steps:
        raise ModelLoadFailed(f"decoder_steps: {spec.id} needs decoder_steps >= 1 in the catalog", field="model")
    prior_source, decoder_source = stage_sources(spec)
    kwargs = base.load_kwargs(spec, device)
    # spec.revision pins spec.repo (the decoder); the prior repo has a history of its own.
    prior_kwargs = {key: value for key, value in kwargs.items() if key != "revision"}
    prior = StableCascadePriorPipeline.from_pretrained(
        prior_source, image_encoder=None, feature_extractor=None, **prior_kwargs
    )
    decoder = _load_decoder(decoder_source, prior, kwargs)

    # The combined pipeline takes the decoder's parts by their names and the prior's as prior_<name>.
    prior_parts = {f"prior_{name}": part for name, part in prior.components.items()}
    pipe = StableCascadeCombinedPipeline(**decoder.components, **prior_parts)
    # The combined pipeline builds fresh stage pipelines with default settings; run the loaded
    # ones, which carry their repos' resolution_multiple and latent_dim_scale.
    pipe.prior_pipe, pipe.decoder_pipe = prior, decoder
    pipe.register_to_config(_name_or_path=spec.source)
    pipe.set_progress_bar_config(disable=True)  # progress goes through on_step, not tqdm on stderr
    return pipe.to(device)


def stage_sources(spec: ModelSpec) -> tuple[str, str]:
    """Where the prior and the decoder load from: the local folder's two stages, else the two hub repos."""
    if spec.local_dir is not None:
        return str(Path(spec.local_dir) / PRIOR_DIR), str(Path(spec.local_dir) / DECODER_DIR)
    if not spec.prior_repo:
        raise ModelLoadFailed(f"prior_repo: {spec.id} needs the prior's hub repo in the catalog", field="model")
    return spec.prior_repo, spec.repo


def _load_decoder(source: str, prior: StableCascadePriorPipeline, kwargs: dict) -> StableCascadeDecoderPipeline:
    revision = {"revision": kwargs["revision"]} if "revision" in kwargs else {}
    settings = StableCascadeDecoderPipeline.load_config(source, **revision)
    return StableCascadeDecoderPipeline(
        decoder=StableCascadeUNet.from_pretrained(source, subfolder="decoder", **kwargs),
        tokenizer=prior.tokenizer,
        text_encoder=prior.text_encoder,
        scheduler=DDPMWuerstchenScheduler.from_pretrained(source, subfolder="scheduler", **revision),
        vqgan=PaellaVQModel.from_pretrained(source, subfolder="vqgan", **kwargs),
        latent_dim_scale=settings["latent_dim_scale"],
    )


def generate(
    pipe: StableCascadeCombinedPipeline, spec: ModelSpec, request: GenerationRequest, on_step: base.OnStep
) -> list:
    total = request.steps + spec.decoder_steps
    result = pipe(
        **base.image_arguments(request),  # n images are one batched call through both stages
        prior_num_inference_steps=request.steps,
        prior_guidance_scale=request.guidance,
        num_inference_steps=spec.decoder_steps,
        decoder_guidance_scale=DECODER_GUIDANCE,
        prior_callback_on_step_end=_stage_callback(on_step, done=0, total=total),
        callback_on_step_end=_stage_callback(on_step, done=request.steps, total=total),
        output_type="pil",
    )
    return result.images


def _stage_callback(on_step: base.OnStep, done: int, total: int):
    """A ``callback_on_step_end`` counting on from the ``done`` steps of earlier stages; ``on_step`` may raise."""

    def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        on_step(done + step + 1, total)
        return {}

    return callback
