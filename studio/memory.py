"""Memory plans: how a model's weights sit on a device too small to hold them whole.

Pure and torch-free: ``choose`` takes a model's component sizes (``Weights``, from ``studio.weights``),
the device's free memory, the host's RAM and the request's size and batch, and returns the first plan
that fits, in this order (each one needs less device memory than the one before):

    full              every component resident on the device
    offload-encoders  text encoders live in host RAM and stream through the device to encode
    fp8               the same, and the denoiser stored in fp8 (layerwise casting), computed in bf16
    group-offload     the denoiser streams too, a block at a time on CUDA streams (GPU only)
    sequential        every layer streams from host RAM (GPU only; the slowest)

A plan that needs more host RAM than the machine has is never chosen. The needs are estimates: the
weights are the files' own bytes, the activation headroom a rule of thumb (``activation_bytes``).
``python -m studio.memory --table`` prints which catalog models fit which cards, on which plan.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from enum import StrEnum

from studio import families


class Plan(StrEnum):
    FULL = "full"
    OFFLOAD_ENCODERS = "offload-encoders"
    FP8 = "fp8"
    GROUP_OFFLOAD = "group-offload"
    SEQUENTIAL = "sequential"


AUTO = "auto"
PLANS = tuple(Plan)  # the order auto tries them: most device memory first
CHOICES = (AUTO, *(plan.value for plan in PLANS))  # what --memory-plan accepts
GPU_ONLY = frozenset({Plan.GROUP_OFFLOAD, Plan.SEQUENTIAL})  # they stream over CUDA; nothing to gain on a CPU
CHANGES_WEIGHTS = frozenset({Plan.FP8})  # plans whose images differ from full precision (recorded in metadata)

GB = 10**9
GIB = 2**30
ACTIVATION_BASE = 1 * GIB  # the CUDA context, the allocator's slack, the scheduler's tensors
ACTIVATION_PER_MEGAPIXEL = 1.5 * GIB  # attention and the VAE decode, per image of 1024x1024
STREAMED_SHARE = 1 / 8  # what a block-streamed model holds on the device at once (a block and the next)
SEQUENTIAL_RESIDENT = GIB // 2  # the largest single layers (embeddings) of a leaf-streamed pipeline
CARD_RESERVE = 3 * GIB // 4  # of a card's memory, what the driver and CUDA context take before the studio
CARDS_GB = (80, 48, 24, 16, 12)  # the README table's cards (GiB, as vendors count them)
TABLE_HOST_RAM_GB = 64  # the README table assumes a machine with this much RAM

DENOISERS = ("transformer", "unet", "prior", "decoder")  # component folders that hold a denoising network


def plans_for(family: str) -> tuple[Plan, ...]:
    """The plans a family's models can run on, in auto's order."""
    fp8_unfit = families.FAMILIES[family].fp8_unfit  # the family record says why a family cannot
    return tuple(plan for plan in PLANS if not (plan is Plan.FP8 and fp8_unfit))


def role(component: str) -> str:
    """``denoiser``, ``encoder`` or ``resident`` (the VAE and anything small that stays on the device)."""
    if component in DENOISERS:
        return "denoiser"
    if component.startswith("text_encoder"):
        return "encoder"
    return "resident"


@dataclass(frozen=True)
class Weights:
    """A model's weight bytes per component, in the dtype it runs in on CUDA (2 bytes a parameter)."""

    components: tuple[tuple[str, int], ...]
    source: str  # where the sizes come from: "files on disk", "hub file sizes", "catalog estimate"

    def of(self, kind: str) -> list[int]:
        return [size for name, size in self.components if role(name) == kind]

    @property
    def total(self) -> int:
        return sum(size for _, size in self.components)

    @property
    def estimate(self) -> bool:
        return self.source == "catalog estimate"


@dataclass(frozen=True)
class Need:
    plan: Plan
    device: int  # bytes of device memory at the peak
    host: int  # bytes of host RAM the plan keeps (or passes through while loading)


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    free: int  # bytes the studio may use on it (free memory, capped by --gpu-memory-gb)
    host_ram: int  # bytes of RAM of the machine


@dataclass(frozen=True)
class Choice:
    plan: Plan | None  # None: no plan fits
    need: Need | None
    reason: str  # one plain sentence: why this plan, or why none


def activation_bytes(width: int, height: int, batch: int = 1) -> int:
    """Headroom for a call's activations: a base plus a share per megapixel of every image in the batch."""
    return int(ACTIVATION_BASE + ACTIVATION_PER_MEGAPIXEL * batch * width * height / 2**20)


def need(plan: Plan, weights: Weights, width: int, height: int, batch: int = 1) -> Need:
    """Device and host bytes ``plan`` needs for ``weights`` at this size and batch."""
    denoiser, encoders, resident = sum(weights.of("denoiser")), weights.of("encoder"), sum(weights.of("resident"))
    largest_encoder = max(encoders, default=0)
    activations = activation_bytes(width, height, batch)
    streamed_encoder = int(largest_encoder * STREAMED_SHARE)
    if plan is Plan.FULL:
        device, host = denoiser + sum(encoders) + resident, 0
    elif plan is Plan.OFFLOAD_ENCODERS:
        device, host = denoiser + streamed_encoder + resident, sum(encoders)
    elif plan is Plan.FP8:
        # fp8 storage halves the denoiser; it is cast in host RAM before it moves (never bf16 on the device)
        device, host = denoiser // 2 + streamed_encoder + resident, sum(encoders) + denoiser
    elif plan is Plan.GROUP_OFFLOAD:
        device, host = int(max(denoiser, largest_encoder) * STREAMED_SHARE) + resident, denoiser + sum(encoders)
    else:
        device, host = SEQUENTIAL_RESIDENT, weights.total
    return Need(plan, device + activations, host)


def choose(weights: Weights, device: Device, width: int, height: int, batch: int = 1, wanted: str = AUTO,
           plans: tuple[Plan, ...] = PLANS) -> Choice:
    """The plan for this model on this device: ``wanted`` when named, else the first of ``plans`` (the model's
    family's, ``plans_for``) that fits."""
    if wanted != AUTO:
        plan = Plan(wanted)
        if plan in GPU_ONLY and device.kind != "cuda":
            return Choice(None, None, f"{plan} streams weights to a GPU over CUDA; it runs on CUDA devices only")
        planned = need(plan, weights, width, height, batch)
        if device.kind == "cuda" and planned.host > device.host_ram:  # on a CPU every plan keeps it all in RAM
            return Choice(None, planned, host_short(planned, device))
        return Choice(plan, planned, f"{plan}, as configured")
    if device.kind != "cuda":  # the weights are in RAM already: nothing to offload to
        return Choice(Plan.FULL, need(Plan.FULL, weights, width, height, batch), "full: on the CPU, RAM is the memory")
    short_of_ram = []
    for plan in plans:
        planned = need(plan, weights, width, height, batch)
        if planned.host > device.host_ram:
            short_of_ram.append(planned)
            continue
        if planned.device <= device.free:
            return Choice(plan, planned, f"{plan}: needs {gb(planned.device)} of {gb(device.free)} free")
    smallest = need(PLANS[-1], weights, width, height, batch)
    if short_of_ram:
        return Choice(None, short_of_ram[-1], host_short(short_of_ram[-1], device)
                      + f"; the plans that fit this host's RAM need more than {gb(device.free)} of device memory")
    return Choice(None, smallest, f"no plan fits: even {smallest.plan} needs {gb(smallest.device)} of device memory, "
                                  f"{gb(device.free)} is free")


def host_short(planned: Need, device: Device) -> str:
    return (f"{planned.plan} needs {gb(planned.host)} of host RAM and this machine has {gb(device.host_ram)}; "
            f"not used")


def next_plan(plan: Plan, device_kind: str, plans: tuple[Plan, ...] = PLANS) -> Plan | None:
    """The plan after ``plan`` that needs less memory, for a retry after an out-of-memory (None: no smaller one).
    On a CPU only fp8 storage makes the weights smaller (RAM is the device: offloading moves nothing)."""
    later = [other for other in plans if PLANS.index(other) > PLANS.index(plan)]
    if device_kind != "cuda":
        later = [other for other in later if other is Plan.FP8]
    return later[0] if later else None


def describe(listed: dict) -> str:
    """A model's ``ModelSpec.memory()`` in words: ``weights 33.7 GB bf16 (hub file sizes), runs whole in
    36.4 GB, at least 3.2 GB (sequential)``."""
    text = (f"weights {listed['weights']:g} GB bf16 ({listed['source']}), runs whole in {listed['studio']:g} GB, "
            f"at least {listed['smallest']:g} GB ({listed['smallest_plan']})")
    return text + (f", plan {listed['plan']}" if listed["plan"] else "")


def gb(size: float) -> str:
    """``23.8 GB`` (decimal, like the hub's pages and the cards' sizes)."""
    return f"{size / GB:.1f} GB"


def card(size_gb: float, host_ram_gb: float = TABLE_HOST_RAM_GB) -> Device:
    """A CUDA card of ``size_gb`` GiB as the studio sees it free (less the driver's share)."""
    return Device("cuda", int(size_gb * GIB) - CARD_RESERVE, int(host_ram_gb * GIB))


# ---------------------------------------------------------------- the README table


def table(rows: list[tuple[str, Weights, int, int, tuple[Plan, ...]]], cards: tuple[int, ...] = CARDS_GB) -> str:
    """Markdown: for each (model, weights, width, height, its plans), the plan auto picks on each card (—: none)."""
    header = "| model | weights (bf16) | " + " | ".join(f"{size} GB" for size in cards) + " |"
    lines = [header, "|" + "---|" * (len(cards) + 2)]
    for model, weights, width, height, plans in rows:
        cells = []
        for size in cards:
            choice = choose(weights, card(size), width, height, plans=plans)
            cells.append(str(choice.plan) if choice.plan else "—")
        mark = " (estimate)" if weights.estimate else ""
        lines.append(f"| {model} | {gb(weights.total)}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the README's table of cards and plans")
    parser.add_argument("--models-dir", default=None, help="measure the models of this folder from their files")
    args = parser.parse_args(argv)
    if not args.table:
        parser.print_help()
        return 0
    from studio import weights
    from studio.catalog import load_catalog

    catalog = load_catalog(args.models_dir)
    rows = [(spec.id, weights.measure(spec), spec.defaults.width, spec.defaults.height, plans_for(spec.family))
            for spec in catalog]
    print(table(rows))
    print(f"\nAt each model's default size, one image, on a machine with {TABLE_HOST_RAM_GB} GB of RAM "
          f"(python -m studio.memory --table).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
