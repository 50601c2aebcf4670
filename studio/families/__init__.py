"""The only code that knows diffusers: one record and one adapter module per model family.

``FAMILIES`` holds each family's record (``Family``): what the family is, read torch-free by the
parent (the catalog's tasks, the hub's file rule) and by the worker (the adapter, the pipeline
class, the denoisers the speed options work on, the preview projection, the tiny builder).
Adding a family means one record here, one adapter, one tiny builder.

Every adapter module exposes

    generate(pipe, spec: ModelSpec, request: GenerationRequest, on_step) -> list[PIL.Image]

and, where loading is more than ``from_pretrained`` of the record's pipeline class
(``base.from_pretrained``), ``load(spec: ModelSpec, device: str) -> pipeline``.

``request`` is already resolved by ``ModelSpec.check`` (no field is None). Where the record's
``batches`` is set, it may also be a ``families.batch.BatchedRequest``: several jobs' prompts and seeds, one
text-to-image call (``Engine.run_batch``).
``on_step(step, total, preview)`` is called after each denoising step; it raises
``JobCancelled`` to stop the job, which propagates out of ``generate``. ``preview`` is a
function that makes a cheap preview image of the current latents (``studio.families.preview``),
called only for the steps that get one.

Edits: a record's ``edits`` is its task table. For a family that has one, the engine turns the
loaded text-to-image pipeline into the task's pipeline with diffusers' ``from_pipe`` (the same
components, no second load), and the adapter's ``generate`` passes the request's image, mask and
strength (``base.edit_arguments``). Pipeline classes are named as strings, so the records are
also what the torch-free parent reads to say which model can do what.
Adapters are imported lazily so the parent process never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from studio.families.projections import FLUX_VAE, SDXL_VAE, Projection

TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
INPAINTING = "inpainting"


@dataclass(frozen=True)
class HubRepo:
    """One hub repo a family's models load from, as the family's loader reads it."""

    source: str = "repo"  # the ModelSpec field that names the repo
    pinned: bool = True  # the catalog's revision applies (it pins ``repo`` only)
    passed: tuple[str, ...] = ()  # pipeline components the loader passes as None: never fetched
    folders: tuple[str, ...] | None = None  # component folders loaded one by one; None: the whole pipeline


@dataclass(frozen=True)
class Family:
    """What a model family is, in one place."""

    name: str
    pipeline: str  # the diffusers text-to-image pipeline class the adapter runs
    adapter: str  # the module that calls it (studio/families/<name>.py)
    tiny: str  # the module that builds its tiny random-weight pipelines (studio/tiny/<name>.py)
    denoisers: tuple[str, ...]  # the pipeline attributes holding its denoising networks (speed options)
    takes_loras: bool  # whether a request may bring LoRAs for it
    edits: dict[str, str] = field(default_factory=dict)  # edit task -> diffusers pipeline made with from_pipe
    preview: Projection | None = None  # latents to RGB for live previews; None: the VAE decodes them
    hub: tuple[HubRepo, ...] = (HubRepo(),)  # the repos its loader reads, and how
    step_cache: bool = False  # its denoising loop opens ``transformer.cache_context`` (first-block cache)
    fp8_unfit: str = ""  # why its pipelines cannot keep weights in fp8 (the memory plans); "": they can
    batches: bool = False  # its adapter runs several jobs' prompts and seeds in one call (``RunBatch``)

    @property
    def tasks(self) -> tuple[str, ...]:
        return (TEXT_TO_IMAGE, *self.edits)


def _family(name: str, pipeline: str, *denoisers: str, **rest) -> Family:
    """A record whose adapter and tiny builder are named after the family, as all of ours are."""
    return Family(name, pipeline, f"studio.families.{name}", f"studio.tiny.{name}", denoisers, **rest)


# Edits: diffusers 0.42 has no edit pipelines for PixArt, Sana 1.5, HunyuanDiT, Lumina-Next or Stable
# Cascade. Previews: PixArt-Sigma, HunyuanDiT and Lumina-Next decode with SDXL's VAE (or its fp16 fix),
# Chroma with FLUX's; Sana's DC-AE has no published projection, Stable Cascade no RGB-decodable latents.
# Batches: every adapter takes a ``BatchedRequest`` (a prompt and a seed per image). Most pass the lists to the
# pipeline; SDXL (None as the negative means zeroes) and Lumina-Next (which would pad each prompt to the
# longest and cut negatives there) encode each member as its own call does.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        _family(
            "sdxl", "StableDiffusionXLPipeline", "unet", takes_loras=True, preview=SDXL_VAE, batches=True,
            edits={IMAGE_TO_IMAGE: "StableDiffusionXLImg2ImgPipeline", INPAINTING: "StableDiffusionXLInpaintPipeline"},
        ),
        _family(
            "flux", "FluxPipeline", "transformer", takes_loras=True, preview=FLUX_VAE, step_cache=True, batches=True,
            edits={IMAGE_TO_IMAGE: "FluxImg2ImgPipeline", INPAINTING: "FluxInpaintPipeline"},
        ),
        _family(
            "chroma", "ChromaPipeline", "transformer", takes_loras=True, preview=FLUX_VAE, batches=True,
            edits={IMAGE_TO_IMAGE: "ChromaImg2ImgPipeline", INPAINTING: "ChromaInpaintPipeline"},
        ),
        _family("pixart", "PixArtSigmaPipeline", "transformer", takes_loras=False, preview=SDXL_VAE, batches=True),
        _family("sana", "SanaPipeline", "transformer", takes_loras=True, batches=True),
        _family("hunyuan", "HunyuanDiTPipeline", "transformer", takes_loras=False, preview=SDXL_VAE, batches=True),
        _family("lumina", "LuminaPipeline", "transformer", takes_loras=False, preview=SDXL_VAE, batches=True),
        # The prior (stage C) and the decoder (stage B) are two repos (studio/families/cascade.py): the prior
        # as a pipeline without its CLIP image encoder, the decoder's parts one by one.
        _family(
            "cascade", "StableCascadeCombinedPipeline", "prior_prior", "decoder", takes_loras=False, batches=True,
            hub=(
                HubRepo("prior_repo", pinned=False, passed=("image_encoder", "feature_extractor")),
                HubRepo(folders=("decoder", "scheduler", "vqgan")),
            ),
            fp8_unfit="its pipelines draw the initial noise in the prior's dtype, which fp8 storage makes float8",
        ),
    )
}


def takes_loras(family: str) -> bool:
    """Whether diffusers has a LoRA loader for the family (none for PixArt, HunyuanDiT, Lumina-Next or
    Stable Cascade): the catalog's check and the speed options read it."""
    return FAMILIES[family].takes_loras


def tasks(family: str) -> tuple[str, ...]:
    """The tasks a family's models can run, text-to-image first."""
    return FAMILIES[family].tasks


def task_pipeline(pipe, family: str, task: str):
    """The pipeline for ``task`` over the components of the loaded text-to-image ``pipe``."""
    if task == TEXT_TO_IMAGE:
        return pipe
    import diffusers  # worker-side only

    pipeline_class = getattr(diffusers, FAMILIES[family].edits[task])
    derived = pipeline_class.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    fix = getattr(adapter(family), "fix_task_pipeline", None)  # a family's workaround for its edit pipelines
    if fix is not None:
        fix(derived, task)
    return derived


def adapter(family: str) -> ModuleType:
    return importlib.import_module(FAMILIES[family].adapter)


def load_pipeline(spec, device: str):
    load = getattr(adapter(spec.family), "load", None)
    if load is None:
        from studio.families import base  # worker-side only

        load = base.from_pretrained
    return load(spec, device)


def generate(pipe, spec, request, on_step):
    return adapter(spec.family).generate(pipe, spec, request, on_step)
