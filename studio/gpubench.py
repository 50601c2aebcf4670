"""``python -m studio.bench --gpu``: seconds per image of a full-size random-weight model on CUDA,
bare diffusers against the studio's speed options (``studio.speed``).

The real architectures are written out here (from the hub repos' config.json files), so the GPU
bench needs no download: the weights are random, the kernels and memory traffic are the real ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from studio.bench import PROMPT, machine, median, timed


# The real architectures, from the hub repos' config.json files. Only the families below are
# written out; the GPU path was reviewed, not run (no GPU was available when it was written).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE_BLOCKS = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    force_upcast=True,
)
FLUX_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56),
)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_BIG_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
PIXART_SIGMA_TRANSFORMER = dict(
    sample_size=128, in_channels=4, out_channels=8, patch_size=2, num_layers=28, num_attention_heads=16,
    attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096, norm_type="ada_norm_single",
    use_additional_conditions=False, interpolation_scale=2,
)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", dropout_rate=0.0)


@contextlib.contextmanager
def building_on(device: str, dtype) -> Iterator[None]:
    """Create modules directly on ``device`` in ``dtype``: no fp32 copy in RAM, no transfer."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def full_size_pipeline(spec, device: str, dtype=None):
    """The pipeline of ``spec`` at full size with random weights, built on ``device`` (``"meta"`` to check shapes)
    in ``dtype`` (default: the catalog's, float32 on a CPU)."""
    import torch

    dtype = dtype or (torch.float32 if device == "cpu" else getattr(torch, spec.dtype))
    builders = {"sdxl": _full_sdxl, "flux": _full_flux, "pixart": _full_pixart}
    if spec.family not in builders:
        raise SystemExit(f"--gpu knows the full-size {', '.join(builders)} families; {spec.id} is {spec.family}")
    # Only the networks are built on the device in half precision; schedulers keep their float32
    # tables on the CPU, as from_pretrained leaves them.
    pipe = builders[spec.family](spec, lambda: building_on(device, dtype))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip(config: dict, tokenizer, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        **config, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _full_sdxl(spec, on_device):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel

    from studio.tiny.sdxl import DEFAULT_SCHEDULER, SCHEDULERS, VAE_LATENT_STATS
    from studio.tiny.tokenizers import clip_tokenizer

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    tokenizer_2.pad_token = "!"
    scheduler_class, scheduler_config = SCHEDULERS.get(spec.id, DEFAULT_SCHEDULER)
    latents = VAE_LATENT_STATS.get(spec.id, {"scaling_factor": 0.13025})
    with on_device():
        networks = dict(
            vae=AutoencoderKL(**VAE_BLOCKS, latent_channels=4, **latents),
            text_encoder=_clip(CLIP_L, tokenizer, projection=False),
            text_encoder_2=_clip(CLIP_BIG_G, tokenizer_2, projection=True),
            unet=UNet2DConditionModel(**SDXL_UNET),
        )
    return StableDiffusionXLPipeline(
        **networks,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler_class(**scheduler_config),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _full_flux(spec, on_device):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from studio.tiny.flux import FLUX_DEV_SCHEDULER, FLUX_SCHNELL_SCHEDULER
    from studio.tiny.tokenizers import clip_tokenizer, t5_tokenizer

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer(max_length=spec.token_limit)
    t5 = T5Config(**T5_XXL, pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id)
    with on_device():
        networks = dict(
            vae=AutoencoderKL(
                **VAE_BLOCKS, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                scaling_factor=0.3611, shift_factor=0.1159,
            ),
            text_encoder=_clip(CLIP_L, tokenizer, projection=False),
            text_encoder_2=T5EncoderModel(t5),
            transformer=FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=spec.cfg),
        )
    return FluxPipeline(
        **networks,
        scheduler=FlowMatchEulerDiscreteScheduler(**(FLUX_DEV_SCHEDULER if spec.cfg else FLUX_SCHNELL_SCHEDULER)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
    )


def _full_pixart(spec, on_device):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from studio.tiny.pixart import PIXART_SIGMA_SCHEDULER
    from studio.tiny.tokenizers import t5_tokenizer

    tokenizer = t5_tokenizer(max_length=spec.token_limit)
    t5 = T5Config(**T5_XXL, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with on_device():
        networks = dict(
            vae=AutoencoderKL(**VAE_BLOCKS, latent_channels=4, scaling_factor=0.13025),  # SDXL's VAE
            text_encoder=T5EncoderModel(t5),
            transformer=PixArtTransformer2DModel(**PIXART_SIGMA_TRANSFORMER),
        )
    return PixArtSigmaPipeline(
        **networks, tokenizer=tokenizer, scheduler=DPMSolverMultistepScheduler(**PIXART_SIGMA_SCHEDULER)
    )


def gpu_bench(model_id: str, repeats: int, options) -> dict:
    """Seconds per image at the model's default size and steps: bare diffusers defaults, then ours."""
    import torch

    from studio import families, speed
    from studio.catalog import load_catalog
    from studio.schemas import GenerationRequest

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    device = "cuda"
    spec = load_catalog().get(model_id)
    request = spec.check(GenerationRequest(prompt=PROMPT, seed=0))
    started = time.perf_counter()
    pipe = full_size_pipeline(spec, device)
    build_s = time.perf_counter() - started

    def run() -> float:
        speed.prepare(pipe, request)
        return timed(lambda: families.generate(pipe, spec, request, lambda *_: None))

    run()  # warm-up: kernel selection, allocator growth
    bare_s = [run() for _ in range(repeats)]
    applied = speed.optimize(pipe, spec, device, options)
    run()  # warm-up again: compiles when --compile
    ours_s = [run() for _ in range(repeats)]
    return {
        "machine": machine(), "model": spec.id, "size": f"{request.width}x{request.height}", "steps": request.steps,
        "dtype": spec.dtype, "build_s": build_s, "options": applied, "repeats": repeats,
        "bare_s": bare_s, "ours_s": ours_s, "bare_median_s": median(bare_s), "ours_median_s": median(ours_s),
        "speedup": median(bare_s) / median(ours_s), "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


def gpu_rows(r: dict) -> list[tuple[str, ...]]:
    return [(
        f"{r['model']} {r['size']}, {r['steps']} steps, {r['dtype']}: s/image (median of {r['repeats']}); "
        f"ours = {', '.join(r['options']) or 'no options'}",
        f"{r['ours_median_s']:.3f}", f"{r['bare_median_s']:.3f}", f"{r['speedup']:.2f}x",
    )]




# ---------------------------------------------------------------- memory plans (issue 22)


def gpu_section(args) -> tuple[dict, tuple[str, ...], list[tuple[str, ...]]]:
    """``python -m studio.bench --gpu``: the speed options, or with ``--memory-plan`` the memory plans."""
    from studio.speed import EngineOptions

    if args.memory_plan:
        results = memory_bench(args.model, args.memory_plan, args.repeats, args.gpu_memory_gb)
        return results, ("what", "s/image", "peak GiB", "load s"), memory_rows(results)
    results = gpu_bench(args.model, args.repeats, EngineOptions(compile=args.compile, step_cache=args.step_cache))
    return results, ("what", "ours", "bare diffusers", "speedup"), gpu_rows(results)


def memory_bench(model_id: str, plans: str, repeats: int, gpu_memory_gb: float | None) -> dict:
    """Seconds per image and peak device memory of each memory plan (``"all"``, ``"auto"`` or a comma list),
    the full-size model built in host RAM and placed as the engine places it (``studio.placement``)."""
    import gc

    import torch

    from studio import memory
    from studio.catalog import load_catalog
    from studio.engine import limit_gpu_memory
    from studio.schemas import GenerationRequest

    if not torch.cuda.is_available():
        raise SystemExit("--gpu --memory-plan needs a CUDA device")
    device, spec = "cuda", load_catalog().get(model_id)
    request = spec.check(GenerationRequest(prompt=PROMPT, seed=0))
    limit_gpu_memory(device, gpu_memory_gb)
    wanted = [p.value for p in memory.plans_for(spec.family)] if plans == "all" else plans.split(",")
    rows = []
    for name in wanted:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        free, _ = torch.cuda.mem_get_info()
        if gpu_memory_gb:
            free = min(free, int(gpu_memory_gb * memory.GIB))
        gpu = memory.Device("cuda", free, memory.card(0).host_ram)  # the README table's host RAM
        choice = memory.choose(spec.catalog_weights(), gpu, request.width, request.height, 1,
                               name, memory.plans_for(spec.family))
        row = {"wanted": name, "plan": choice.plan and choice.plan.value, "reason": choice.reason}
        if choice.plan is not None:
            row |= _run_plan(spec, request, choice.plan, repeats)
        rows.append(row)
    return {"machine": machine(), "model": spec.id, "size": f"{request.width}x{request.height}",
            "steps": request.steps, "gpu_memory_gb": gpu_memory_gb, "repeats": repeats, "plans": rows}


def _run_plan(spec, request, plan, repeats: int) -> dict:
    import torch

    from studio import families, placement, speed
    from studio.memory import Plan

    started = time.perf_counter()
    pipe = full_size_pipeline(spec, "cuda" if plan is Plan.FULL else "cpu", getattr(torch, spec.dtype))
    placement.place(pipe, plan, "cuda", spec.family)
    load_s = time.perf_counter() - started

    def run() -> float:
        speed.prepare(pipe, request)
        return timed(lambda: families.generate(pipe, spec, request, lambda *_: None))

    try:
        run()  # warm-up
        samples = [run() for _ in range(repeats)]
    except torch.OutOfMemoryError as exc:
        return {"load_s": load_s, "out_of_memory": str(exc).splitlines()[0][:200],
                "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    finally:
        del pipe
    return {"load_s": load_s, "samples_s": samples, "median_s": median(samples),
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}


def memory_rows(r: dict) -> list[tuple[str, ...]]:
    cap = f", --gpu-memory-gb {r['gpu_memory_gb']:g}" if r["gpu_memory_gb"] else ""
    rows = []
    for row in r["plans"]:
        what = f"{r['model']} {r['size']}, {r['steps']} steps{cap}: {row['wanted']}"
        if row["plan"] is None:
            rows.append((what + f" ({row['reason']})", "-", "-", "-"))
        elif "out_of_memory" in row:
            rows.append((what + f" -> {row['plan']}: out of memory", "-", f"{row['peak_memory_gb']:.1f}",
                         f"{row['load_s']:.1f}"))
        else:
            rows.append((what + (f" -> {row['plan']}" if row["wanted"] != row["plan"] else ""),
                         f"{row['median_s']:.2f}", f"{row['peak_memory_gb']:.1f}", f"{row['load_s']:.1f}"))
    return rows
