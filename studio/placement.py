"""A loaded pipeline's weights placed as its memory plan says (``studio.memory``): on the device, in fp8,
or streamed from host RAM through diffusers' offload hooks.

``read(spec, device, plan)`` reads the model, ``place(pipe, plan, device)`` places it (the engine applies
its speed options between the two, so fused layers get fp8 storage and stream like the others). Every
plan but ``full`` reads the weights into host RAM first, in the device's dtype (bf16/fp16), so nothing
larger than the plan's share ever lands on the device. Imports torch: worker side only.
"""

from __future__ import annotations

import logging

import torch

from studio import families
from studio.errors import InvalidRequest
from studio.families import base
from studio.memory import GPU_ONLY, Plan, plans_for

log = logging.getLogger(__name__)

FP8_STORAGE = torch.float8_e4m3fn


def read(spec, device: str, plan: Plan):
    """``spec``'s pipeline read for ``device``: on it under ``full``, else in host RAM in its dtype."""
    check(plan, device, spec.family)
    if plan is Plan.FULL:
        return families.load_pipeline(spec, device)
    with base.weights_dtype_of(device):
        return families.load_pipeline(spec, "cpu")


def check(plan: Plan, device: str, family: str | None = None) -> None:
    """The streaming plans need CUDA, and some families cannot store fp8; say so before anything loads."""
    if family is not None and plan not in plans_for(family):
        raise InvalidRequest(f"memory plan: {plan} does not work for {family} models: {families.FAMILIES[family].fp8_unfit}",
                             field="memory_plan")
    if plan in GPU_ONLY and torch.device(device).type != "cuda":
        raise InvalidRequest(
            f"memory plan: {plan} streams weights to a GPU over CUDA streams and runs on CUDA devices only; "
            f"{device} can use full, offload-encoders or fp8", field="memory_plan",
        )


def place(pipe, plan: Plan, device: str, family: str) -> None:
    """Move a pipeline read in host RAM onto ``device`` as ``plan`` says (``full``: it is there already)."""
    if plan is Plan.FULL:
        return
    denoisers = families.FAMILIES[family].denoisers
    on_cuda = torch.device(device).type == "cuda"
    if plan is Plan.SEQUENTIAL:
        pipe.enable_sequential_cpu_offload(device=device)
        return
    if plan is Plan.GROUP_OFFLOAD:
        streamed = [name for name in modules(pipe) if name in denoisers or "text_encoder" in name]
        pipe.enable_group_offload(
            onload_device=torch.device(device), offload_device=torch.device("cpu"), offload_type="block_level",
            num_blocks_per_group=1, use_stream=on_cuda,
            exclude_modules=[name for name in modules(pipe) if name not in streamed],
        )
        return
    if plan is Plan.FP8:
        for name, module in modules(pipe).items():
            if name in denoisers:
                # Compute in the dtype the model was read in (bf16 on CUDA, float32 on a CPU); norms and
                # embeddings keep it (diffusers' skip list for layerwise casting: small, and lossy in 8 bits).
                module.enable_layerwise_casting(storage_dtype=FP8_STORAGE, compute_dtype=module.dtype)
    from diffusers.hooks import apply_group_offloading

    for name, module in modules(pipe).items():
        if "text_encoder" in name:
            # Stream the encoder through the device a block at a time: it runs once a request, and its
            # weights (T5-XXL: 9.5 GB) would otherwise sit next to the denoiser for nothing.
            apply_group_offloading(module, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=on_cuda)
        else:
            module.to(device)


def modules(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's torch modules by component name."""
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def streamed(pipe) -> set[str]:
    """The components that stream through the device under group offloading (diffusers' own test of it)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return {name for name, module in modules(pipe).items() if _is_group_offload_enabled(module)}


def describe(pipe) -> dict[str, str]:
    """Where each component's weights are, for tests and logs: ``{"transformer": "cuda:0 float8_e4m3fn", ...}``."""
    placed = {}
    for name, module in modules(pipe).items():
        weighed: dict[str, int] = {}  # "device dtype" -> parameters: the component's bulk, not its first layer
        for parameter in module.parameters():
            where = f"{parameter.device} {str(parameter.dtype).removeprefix('torch.')}"
            weighed[where] = weighed.get(where, 0) + parameter.numel()
        if weighed:
            placed[name] = max(weighed, key=weighed.get)
    return placed
