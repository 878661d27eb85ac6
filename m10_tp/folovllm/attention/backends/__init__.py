"""Which attention backend the engine uses: chosen once by the runner, read by every layer.

- ``torch``: the readable reference (m3's paged torch code), runs anywhere.
- ``triton``: our FlashAttention kernels (folovllm/attention/ops/); on a CPU only under Triton's
  interpreter (``TRITON_INTERPRET=1``), which is how the tests run them.
- ``flash``: the flash-attn package when it is importable; otherwise our Triton kernels, logged.
- ``auto`` (default): flash-attn, else Triton, on CUDA; torch on a CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os

from folovllm.attention.backends.abstract import AttentionBackend

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton", "flash")
_selected: type[AttentionBackend] | None = None


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def triton_available(device_type: str) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend_name(name: str | None, device_type: str, block_size: int) -> tuple[str, str]:
    """(the backend that will run, why). Raises ValueError naming the field when it cannot run."""
    from folovllm.attention.backends.flash_attn import FLASH_BLOCK_MULTIPLE

    name = name or "auto"
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    flash_ok = device_type == "cuda" and flash_attn_available()
    if name == "auto":
        if device_type != "cuda":
            return "torch", "auto on a CPU: the torch reference"
        if flash_ok and block_size % FLASH_BLOCK_MULTIPLE == 0:
            return "flash", "auto: flash-attn is installed"
        if flash_ok:
            why = f"flash-attn needs block_size a multiple of {FLASH_BLOCK_MULTIPLE}, got {block_size}"
            return "triton", f"auto: {why}; using our Triton kernels"
        name = "triton"
    if name == "flash":
        if not flash_ok:
            name = "triton"
            reason = "flash-attn is not installed here; our Triton FlashAttention runs instead"
            if not triton_available(device_type):
                raise ValueError(f"attention_backend='flash': {reason}, but Triton cannot run here")
            return name, reason
        if block_size % FLASH_BLOCK_MULTIPLE:
            raise ValueError(
                f"attention_backend='flash' uses flash-attn's paged KV, which needs block_size to be "
                f"a multiple of {FLASH_BLOCK_MULTIPLE}; got block_size={block_size} "
                f"(set block_size={FLASH_BLOCK_MULTIPLE}, or attention_backend='triton')"
            )
        return "flash", "flash-attn"
    if name == "triton" and not triton_available(device_type):
        raise ValueError(
            "attention_backend='triton' needs the triton package and a CUDA device, or on a CPU "
            "Triton's interpreter (set TRITON_INTERPRET=1 before starting Python)"
        )
    return name, "as configured"


def get_backend_cls(name: str) -> type[AttentionBackend]:
    if name == "torch":
        from folovllm.attention.backends.torch_attn import TorchAttentionBackend

        return TorchAttentionBackend
    if name == "triton":
        from folovllm.attention.backends.triton_attn import TritonAttentionBackend

        return TritonAttentionBackend
    if name == "flash":
        from folovllm.attention.backends.flash_attn import FlashAttentionBackend

        return FlashAttentionBackend
    raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")


def select_attn_backend(
    name: str | None, device_type: str, block_size: int
) -> type[AttentionBackend]:
    """Resolve and remember the backend; layers built afterwards use it (the runner calls this
    before building the model)."""
    global _selected
    chosen, reason = resolve_backend_name(name, device_type, block_size)
    logger.info("attention backend: %s (%s)", chosen, reason)
    _selected = get_backend_cls(chosen)
    return _selected


def get_attn_backend(name: str | None = None) -> type[AttentionBackend]:
    """The named backend, else the one the runner selected, else the torch reference."""
    if name is not None:
        return get_backend_cls(name)
    if _selected is None:
        return get_backend_cls("torch")
    return _selected
