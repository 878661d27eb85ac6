"""Which attention backend the engine uses: chosen once by the runner, read by every layer.

- ``torch``: the readable reference (m3's paged torch code), runs anywhere.
- ``triton``: our FlashAttention kernels (folovllm/attention/ops/); on a CPU only under Triton's
  interpreter (``TRITON_INTERPRET=1``), which is how the tests run them.
- ``flash``: the flash-attn package (flash-attn 4, else 2) when importable; else Triton, logged.
- ``auto`` (default): on CUDA with flash-attn 4, prefill/mixed steps on it and decode steps on our
  split-KV Triton kernel (``flash+triton``); else flash-attn 2, else Triton; torch on a CPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os

from folovllm.attention.backends.abstract import AttentionBackend

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton", "flash")
_selected: type[AttentionBackend] | None = None


def flash_attn_version() -> int | None:
    from folovllm.attention.backends.flash_attn import flash_attn_version

    return flash_attn_version()


def triton_available(device_type: str) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend_name(
    name: str | None, device_type: str, block_size: int, head_dim: int | None = None, dtype=None
) -> tuple[str, str]:
    """(the backend that will run, why). Raises ValueError naming the field when it cannot run."""
    from folovllm.attention.backends.flash_attn import FLASH_BLOCK_MULTIPLE, fa4_constraint_error

    name = name or "auto"
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    version = flash_attn_version() if device_type == "cuda" else None
    fa4_error = fa4_constraint_error(block_size, head_dim, dtype) if version == 4 else None
    if name == "auto":
        if device_type != "cuda":
            return "torch", "auto on a CPU: the torch reference"
        if version == 4 and fa4_error is None:
            return "flash+triton", "flash-attn 4 for prefill/mixed, triton split-KV for decode"
        if version == 4:
            return "triton", f"auto: flash-attn 4 cannot run ({fa4_error}); using Triton"
        if version == 2 and block_size % FLASH_BLOCK_MULTIPLE == 0:
            return "flash", "auto: flash-attn is installed"
        if version == 2:
            why = f"flash-attn needs block_size a multiple of {FLASH_BLOCK_MULTIPLE}, got {block_size}"
            return "triton", f"auto: {why}; using our Triton kernels"
        name = "triton"
    if name == "flash":
        if version is None:
            name = "triton"
            reason = "flash-attn is not installed here; our Triton FlashAttention runs instead"
            if not triton_available(device_type):
                raise ValueError(f"attention_backend='flash': {reason}, but Triton cannot run here")
            return name, reason
        if fa4_error is not None:
            raise ValueError(
                f"attention_backend='flash' uses flash-attn 4: {fa4_error} "
                "(or set attention_backend='triton')"
            )
        if version == 2 and block_size % FLASH_BLOCK_MULTIPLE:
            raise ValueError(
                f"attention_backend='flash' uses flash-attn's paged KV, which needs block_size to be "
                f"a multiple of {FLASH_BLOCK_MULTIPLE}; got block_size={block_size} "
                f"(set block_size={FLASH_BLOCK_MULTIPLE}, or attention_backend='triton')"
            )
        return "flash", f"flash-attn {version}"
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
    if name == "flash+triton":  # auto's choice with flash-attn 4; not a configurable name
        from folovllm.attention.backends.flash_attn import FlashTritonBackend

        return FlashTritonBackend
    raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")


def select_attn_backend(
    name: str | None, device_type: str, block_size: int, head_dim: int | None = None, dtype=None
) -> type[AttentionBackend]:
    """Resolve and remember the backend; layers built afterwards use it (the runner calls this
    before building the model)."""
    global _selected
    chosen, reason = resolve_backend_name(name, device_type, block_size, head_dim, dtype)
    if chosen == "flash+triton":
        logger.info("attention: %s", reason)
    else:
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
