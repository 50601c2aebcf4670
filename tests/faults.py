"""Test-only fault injection for worker processes; never used in production.

``Settings(fault_hook="faults:<function>")`` makes every worker call that function with
``(slot_index, device)`` before it loads anything (the tests folder is on the workers'
``sys.path`` because spawned children inherit the parent's). ``install`` arms prompt-triggered
faults that raise the same exceptions a GPU would, inside a real worker running a real pipeline.
"""

from __future__ import annotations

import os
import signal
import time

# A prompt starting with one of these triggers the fault instead of generating.
OOM = "fault:oom"  # MemoryError, what CPU allocations raise
CUDA_OOM = "fault:cuda-oom"  # torch.OutOfMemoryError, what CUDA allocations raise
HANG = "fault:hang"  # never reaches a step, so never sees a cancel
SEGFAULT = "fault:segfault"  # the process dies of SIGSEGV mid-job
SLOW = "fault:slow"  # every step takes at least SLOW_STEP_S: a long job on any machine
OOM_ONCE = "fault:once-oom"  # a CUDA out-of-memory the first time a worker sees the prompt, then fine
DECODE_OOM_ONCE = "fault:once-decode-oom"  # the same, raised inside the VAE's decode
FAIL = "fault:fail"  # a RuntimeError in the pipeline call: the job (a batch: every member) fails
SLOW_STEP_S = 0.2

CRASH_MARKER_ENV = "STUDIO_TEST_CRASH_MARKER"  # a path: while that file exists, workers die at start
HANG_LOAD_MARKER_ENV = "STUDIO_TEST_HANG_LOAD_MARKER"  # a path: while that file exists, model swaps hang


def install(slot_index: int, device: str) -> None:
    """Wrap the family dispatcher so the fault prompts above misbehave on purpose."""
    from studio import families

    real_generate = families.generate
    seen: set[str] = set()  # the once-only faults' prompts this worker has failed already

    def generate(pipe, spec, request, on_step):
        prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]  # a batch: its first's
        if prompt.startswith(OOM_ONCE) and prompt not in seen:
            seen.add(prompt)
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected once)")
        if prompt.startswith(DECODE_OOM_ONCE) and prompt not in seen:
            seen.add(prompt)
            fail_next_decode(pipe.vae)
        if prompt.startswith(CUDA_OOM):
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        if prompt.startswith(OOM):
            raise MemoryError("injected")
        if prompt.startswith(FAIL):
            raise RuntimeError("injected failure")
        if prompt.startswith(HANG):
            time.sleep(3600)
        if prompt.startswith(SEGFAULT):
            os.kill(os.getpid(), signal.SIGSEGV)
        if prompt.startswith(SLOW):
            return real_generate(pipe, spec, request, slowed(on_step))
        return real_generate(pipe, spec, request, on_step)

    families.generate = generate

    from studio.engine import Engine

    real_ensure = Engine.ensure

    def ensure(engine, spec, *args, **kwargs):
        marker = os.environ.get(HANG_LOAD_MARKER_ENV)
        if marker and os.path.exists(marker) and engine.spec != spec:
            time.sleep(3600)  # a load stuck on a dead disk: no step, so no cancel, ever
        return real_ensure(engine, spec, *args, **kwargs)

    Engine.ensure = ensure


def fail_next_decode(vae) -> None:
    """The VAE's next decode raises a CUDA out-of-memory from a frame named ``decode``, as diffusers' would."""
    import torch

    real_decode = vae.decode

    def decode(*args, **kwargs):
        vae.decode = real_decode
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (injected in the decode)")

    vae.decode = decode


def slowed(on_step):
    def on_slow_step(step: int, total: int) -> None:
        time.sleep(SLOW_STEP_S)
        on_step(step, total)

    for name in ("wants_preview", "preview"):  # the engine's StepReporter: keep its previews coming
        if hasattr(on_step, name):
            setattr(on_slow_step, name, getattr(on_step, name))
    return on_slow_step


def exit_on_slot_1(slot_index: int, device: str) -> None:
    """Slot 1 dies before its handshake, without a word; the others start normally."""
    if slot_index == 1:
        os._exit(3)
    install(slot_index, device)


def fail_at_start(slot_index: int, device: str) -> None:
    """A start-up failure the worker can describe (its ERROR handshake)."""
    raise RuntimeError("injected: the accelerator is not usable")


def crash_while_marked(slot_index: int, device: str) -> None:
    """Die at start while the marker file exists: a crash loop the test can switch on and off."""
    marker = os.environ.get(CRASH_MARKER_ENV)
    if marker and os.path.exists(marker):
        os._exit(3)
    install(slot_index, device)
