"""Loading and speed options: what the Engine does to a pipeline so it runs fast, and when.

Three moments, three functions:

    load_kwargs(device)                      extra ``from_pretrained`` arguments (weights straight to the GPU)
    optimize(pipe, spec, device, options)    once, after a pipeline is read from disk
    prepare(pipe, request)                   before every call (VAE tiling for big images)

Options that are safe and help on CUDA are on by default there and skipped elsewhere (fused
q/k/v projections, channels-last UNets, direct-to-device loading). Options that change the
images or cost minutes of warm-up are opt-in (``torch.compile``, the first-block step cache)
and apply on any device when asked for. Every option degrades: a pipeline that lacks what an
option needs skips it, logged at debug level.

Imports torch only inside functions: the parent process builds ``EngineOptions`` from the
settings and must never import torch.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

from studio import families

log = logging.getLogger(__name__)

HOTSWAP_RANK = 128  # --compile: the largest LoRA rank swapped in without a recompile
TILED_VAE_ABOVE = 2048  # px on the longer side; a one-piece decode above it needs tens of GB
GIB = 2**30


@dataclass(frozen=True)
class EngineOptions:
    """How an Engine loads and runs pipelines. Picklable: the parent hands it to each worker."""

    ram_cache_gb: float = 0.0  # GiB of CPU RAM for recently used pipelines; 0 turns the cache off
    compile: bool = False  # opt-in: torch.compile the denoiser (first calls per image size are slow)
    step_cache: bool = False  # opt-in: first-block cache; faster, images differ slightly
    fuse_qkv: bool = True  # CUDA: one matmul for q, k and v instead of three
    channels_last: bool = True  # CUDA: NHWC convolutions in UNets (tensor-core friendly)
    compile_backend: str = "inductor"  # torch.compile backend; others ("eager") only check the wiring
    step_cache_threshold: float = 0.05  # diffusers' default: higher skips more steps and drifts more
    lora_cache: int = 16  # LoRA adapters kept loaded per slot (least recently used out; at least MAX_LORAS)
    memory_plan: str = "auto"  # studio/memory.py; a model's own memory_plan in the catalog wins
    gpu_memory_gb: float | None = None  # GiB of each GPU the engine may use; None: all

    @classmethod
    def from_settings(cls, settings) -> EngineOptions:
        return cls(ram_cache_gb=settings.ram_cache_gb, compile=settings.compile, step_cache=settings.step_cache,
                   lora_cache=settings.lora_cache, memory_plan=settings.memory_plan,
                   gpu_memory_gb=settings.gpu_memory_gb)

    @property
    def ram_cache_bytes(self) -> int:
        return max(0, int(self.ram_cache_gb * GIB))


def load_kwargs(device: str) -> dict:
    """``from_pretrained`` arguments that put the weights straight on the GPU.

    Without a device map diffusers materialises every weight in CPU RAM and then copies it;
    ``device_map="cuda"`` reads the safetensors onto the device. Pipelines accept only
    ``"cuda"`` (the current device), so another index gets nothing and moves after loading.
    """
    import torch

    target = torch.device(device)
    if target.type != "cuda" or not torch.cuda.is_available():
        return {}
    if target.index is not None and target.index != torch.cuda.current_device():
        log.debug("direct-to-device loading skipped: %s is not the current CUDA device", device)
        return {}
    from diffusers.utils import is_accelerate_available

    if not is_accelerate_available():  # device maps go through accelerate
        log.debug("direct-to-device loading skipped: accelerate is not installed")
        return {}
    return {"device_map": "cuda"}


def optimize(pipe, spec, device: str, options: EngineOptions) -> list[str]:
    """Apply the post-load options to a freshly loaded ``pipe``; returns the names of those applied.

    Order matters: fusing and cache hooks change the modules that compile then traces.
    """
    import torch

    on_cuda = torch.device(device).type == "cuda"
    family = families.FAMILIES[spec.family]  # where the denoisers are; whether the step cache fits its loop
    plan = [
        ("sdpa", True, use_sdpa),
        ("fuse_qkv", options.fuse_qkv and on_cuda, lambda p: fuse_qkv(p, family.denoisers)),
        ("channels_last", options.channels_last and on_cuda, lambda p: channels_last(p, family.denoisers)),
        ("step_cache", options.step_cache and family.step_cache,
         lambda p: step_cache(p, options.step_cache_threshold)),
        ("lora_hotswap", options.compile and family.takes_loras, lora_hotswap),
        ("compile", options.compile, lambda p: compile_denoiser(p, family.denoisers, options.compile_backend)),
    ]
    applied = []
    for name, wanted, apply in plan:
        if not wanted:
            continue
        try:
            changed = apply(pipe)
        except Exception as exc:  # an experimental diffusers API that this model does not take
            log.debug("%s: %s skipped: %s: %s", spec.id, name, type(exc).__name__, exc)
            continue
        if changed:
            applied.append(name)
        else:
            log.debug("%s: %s does not apply to %s", spec.id, name, type(pipe).__name__)
    log.info("%s on %s: %s", spec.id, device, ", ".join(applied) or "no speed options apply")
    return applied


def prepare(pipe, request) -> bool:
    """Per request: tiled VAE decoding above ``TILED_VAE_ABOVE`` px on a side, one-piece below.

    Set on every call: the pipeline stays resident, and a small image after a big one should not
    pay for tiling. Returns whether tiling is on.
    """
    vae = getattr(pipe, "vae", None)
    tiled = max(request.width, request.height) > TILED_VAE_ABOVE
    if not can_tile(pipe):
        return False  # Stable Cascade decodes with a VQ model that has no tiling
    try:
        vae.enable_tiling() if tiled else vae.disable_tiling()
    except NotImplementedError as exc:
        log.debug("VAE tiling skipped for %s: %s", type(vae).__name__, exc)
        return False
    return tiled


def can_tile(pipe) -> bool:
    vae = getattr(pipe, "vae", None)
    return vae is not None and hasattr(vae, "enable_tiling") and hasattr(vae, "disable_tiling")


def tile_vae(pipe) -> bool:
    """Tiled decoding whatever the size (after an out-of-memory in a one-piece decode); False where it cannot."""
    if not can_tile(pipe):
        return False
    try:
        pipe.vae.enable_tiling()
    except NotImplementedError:
        return False
    return True


# ---------------------------------------------------------------- the options, one function each


def use_sdpa(pipe) -> bool:
    """Make sure attention runs through ``scaled_dot_product_attention`` (flash / memory-efficient kernels).

    diffusers' default processors already do; the classic ``AttnProcessor`` (plain matmul and
    softmax, what ``set_default_attn_processor`` installs) does not, and is swapped out.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    swapped = False
    for module in _modules(pipe):
        processors = getattr(module, "attn_processors", None)
        if not processors or not any(type(p) is AttnProcessor for p in processors.values()):
            continue
        module.set_attn_processor(
            {name: AttnProcessor2_0() if type(p) is AttnProcessor else p for name, p in processors.items()}
        )
        swapped = True
    return swapped


def fuse_qkv(pipe, denoisers: tuple[str, ...]) -> bool:
    """Fused q/k/v projections in the ``denoisers`` and the VAE, where the model class offers them."""
    fused = False
    for name in denoisers + ("vae",):
        module = getattr(pipe, name, None)
        if module is None or not hasattr(module, "fuse_qkv_projections"):
            continue
        try:
            module.fuse_qkv_projections()
            fused = True
        except Exception as exc:  # "added KV projections" and the like: this module stays unfused
            log.debug("fuse_qkv skipped for %s: %s", type(module).__name__, exc)
    return fused


def lora_hotswap(pipe) -> bool:
    """Before compiling: LoRAs up to ``HOTSWAP_RANK`` can later be swapped in (``studio.lorapipe``) without
    a recompile."""
    pipe.enable_lora_hotswap(target_rank=HOTSWAP_RANK)
    return True


def channels_last(pipe, denoisers: tuple[str, ...]) -> bool:
    """NHWC memory format for convolutional denoisers (UNets); transformers gain nothing from it."""
    import torch

    changed = False
    for name in denoisers:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module) and "UNet" in type(module).__name__:
            module.to(memory_format=torch.channels_last)
            changed = True
    return changed


def step_cache(pipe, threshold: float) -> bool:
    """diffusers' first-block cache: when the first block's output barely moved since the last
    step, reuse the cached output of the remaining blocks. Only for the families whose denoising loop
    opens ``transformer.cache_context`` (the record's ``step_cache``): the hooks keep their state there
    and fail without it."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not hasattr(transformer, "enable_cache"):
        return False
    from diffusers.hooks import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    return True


@contextmanager
def step_cache_paused(pipe, task: str):
    """Run ``task`` with the step cache off unless it is text-to-image. The edit pipelines made with
    ``from_pipe`` share the transformer and its cache hooks, but their loops open no cache context, so
    the hooks would fail ("No cache context is set"); the cache comes back on for the next job."""
    transformer = getattr(pipe, "transformer", None)
    config = getattr(transformer, "_cache_config", None)
    if task == families.TEXT_TO_IMAGE or config is None:
        yield
        return
    transformer.disable_cache()
    try:
        yield
    finally:
        transformer.enable_cache(config)


def compile_denoiser(pipe, denoisers: tuple[str, ...], backend: str) -> bool:
    """``torch.compile`` the ``denoisers``: only its repeated blocks where the model names them
    (regional compilation: the same speed, a fraction of the compile time), else the whole module.

    Compilation happens lazily at the first call; dynamo is told to fall back to eager on a
    compile error (no C++ compiler, an unsupported op) instead of failing that job.
    """
    import torch
    import torch._dynamo

    compiled = False
    for name in denoisers:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        if getattr(module, "_repeated_blocks", None) and hasattr(module, "compile_repeated_blocks"):
            module.compile_repeated_blocks(backend=backend)
        else:
            module.compile(backend=backend)
        compiled = True
    if compiled:
        torch._dynamo.config.suppress_errors = True
    return compiled


def pipeline_bytes(pipe) -> int:
    """Bytes of every parameter and buffer of the pipeline's modules, shared ones counted once."""
    seen: set[int] = set()
    total = 0
    for module in _modules(pipe):
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def _modules(pipe) -> list:
    """The pipeline's torch modules (text encoders, denoisers, VAE), each once."""
    import torch

    modules, seen = [], set()
    for component in getattr(pipe, "components", {}).values():
        if isinstance(component, torch.nn.Module) and id(component) not in seen:
            seen.add(id(component))
            modules.append(component)
    return modules
