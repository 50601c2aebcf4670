"""The LoRA adapters of a resident pipeline: loaded once, kept (least recently used out past a bound),
and set exactly for each job.

Worker-side (imports diffusers' loaders through the pipeline). Each pipeline keeps its own record
of what it holds, so a pipeline parked in the RAM cache and brought back still knows its adapters.
No bleed: every job sets its adapters and weights, and a job without any (or with all at scale 0)
runs with the adapters disabled, which is the base model's own forward pass, bit for bit.

With ``--compile`` the denoiser is compiled once: ``enable_lora_hotswap`` before compiling
(``speed.lora_hotswap``), and once
the bound is reached a new LoRA's weights are swapped into the least recently used adapter
(``hotswap=True``) instead of adding a module, so a switch does not recompile.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict

from studio.loras import LoraError
from studio.schemas import MAX_LORAS, LoraUse

log = logging.getLogger(__name__)


class ResidentLoras:
    """What LoRAs each pipeline of one engine holds: file -> adapter name, oldest use first."""

    def __init__(self, limit: int = 2 * MAX_LORAS, hotswap: bool = False):
        self.limit = max(limit, MAX_LORAS)  # one job's LoRAs must fit
        self.hotswap = hotswap
        self.loads = 0  # adapters read from disk (a switch to a kept one is not a load)
        self._held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._names = 0

    def held(self, pipe) -> list[str]:
        """The files ``pipe`` holds as adapters, least recently used first."""
        return list(self._held.get(pipe, {}))

    def apply(self, pipe, loras: tuple[LoraUse, ...]) -> None:
        """Make ``loras`` (resolved: each knows its file) exactly the active adapters of ``pipe``."""
        held = self._held.setdefault(pipe, OrderedDict())
        if not loras and not held:
            return  # never had one: nothing to disable
        names = [self._load(pipe, held, lora, keep={use._path for use in loras}) for lora in loras]
        active = [(name, lora.scale) for name, lora in zip(names, loras) if lora.scale != 0]
        if active:
            pipe.enable_lora()
            pipe.set_adapters([name for name, _ in active], [scale for _, scale in active])
        else:
            pipe.disable_lora()  # the base model's forward pass: the same bytes as a fresh worker

    def _load(self, pipe, held: OrderedDict, lora: LoraUse, keep: set[str]) -> str:
        if lora._path is None:  # the catalog resolves every LoRA (and the download phase fetches hub ones) first
            raise LoraError(f"loras: '{lora.name}' was not resolved to a file before the job ran")
        if lora._path in held:
            held.move_to_end(lora._path)
            return held[lora._path]
        if not held:
            unfuse(pipe)
        victims = [path for path in held if path not in keep]
        swap = self.hotswap and len(held) >= self.limit and victims
        name = held.pop(victims[0]) if swap else self._new_name()
        if not swap:
            while len(held) >= self.limit and victims:
                pipe.delete_adapters(held.pop(victims.pop(0)))
        try:
            pipe.load_lora_weights(lora._path, adapter_name=name, **({"hotswap": True} if swap else {}))
        except Exception as exc:
            if not swap and any(name in names for names in pipe.get_list_adapters().values()):
                pipe.delete_adapters(name)  # half loaded: leave the pipeline as it was
            raise LoraError(f"loras: '{lora.name}' does not load into this model: {type(exc).__name__}: "
                            f"{str(exc)[:300]}") from None
        held[lora._path] = name
        self.loads += 1
        log.debug("LoRA %s loaded as %s%s", lora.name, name, " (hotswap)" if swap else "")
        return name

    def _new_name(self) -> str:
        self._names += 1
        return f"lora{self._names}"


def unfuse(pipe) -> None:
    """A fused q/k/v projection (CUDA's ``speed.fuse_qkv``) bypasses the separate layers a LoRA adapts:
    the denoiser (and the VAE, fused alike) is unfused before the first LoRA."""
    for module in pipe.components.values():
        if hasattr(module, "unfuse_qkv_projections") and hasattr(module, "modules") and any(
                getattr(layer, "fused_projections", False) for layer in module.modules()):
            module.unfuse_qkv_projections()

