"""m8: programmatic dependent launch (PDL) for the engine's Triton kernels (Hopper and newer).

In a decode step at batch 1 the GPU runs ~320 small kernels back to back, and each one pays a
fixed cost at its start: the launch, the blocks being placed on the SMs, and the first DRAM round
trip before any work. With PDL a kernel may be launched while the previous one is still running:
its blocks start, do what does not depend on the previous kernel (a GEMV loads its weight tile),
and then wait at ``griddepcontrol.wait`` until the previous kernel's writes are visible. The wait
is what keeps it correct; the launch and the independent loads overlap the previous kernel's tail.

Every kernel launched with ``launch_pdl=True`` calls ``pdl_wait(PDL)`` before it reads anything an
earlier kernel wrote, and before it writes anything. A kernel launched without PDL (cuBLAS, torch)
waits for its predecessor as usual, so mixing them is safe. CUDA graphs record the launch
attribute as a programmatic edge. ``FOLOVLLM_PDL=0`` turns it off; a CPU (the interpreter) and
GPUs before sm90 never use it.
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # the CPU-only engine never launches a kernel
    triton = tl = None


@functools.cache
def _pdl_device(index: int) -> bool:
    off = os.environ.get("FOLOVLLM_PDL", "1") == "0"
    return not off and torch.cuda.get_device_capability(index)[0] >= 9


def use_pdl(x: torch.Tensor) -> bool:
    """Launch kernels on ``x``'s device with programmatic dependent launch?"""
    if not x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _pdl_device(x.device.index if x.device.index is not None else 0)


def pdl_args(x: torch.Tensor) -> dict:
    """Keyword arguments for a kernel launch: ``PDL`` (the kernel's constexpr) and Triton's
    ``launch_pdl`` option, both on only where ``use_pdl(x)``."""
    on = use_pdl(x)
    return {"PDL": on, "launch_pdl": True} if on else {"PDL": False}


if triton is not None:

    @triton.jit
    def pdl_wait(PDL: tl.constexpr):
        """Wait until the previous kernel's writes are visible, then let the next kernel launch.
        Call it before the first read of anything an earlier kernel wrote (no-op without PDL)."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
