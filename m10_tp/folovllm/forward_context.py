"""Per-forward state that layers read without it passing through the model's signature.

The model keeps ``forward(input_ids, positions)`` in every milestone; the runner sets the attention
metadata here before calling it, and each Attention layer reads it back (vLLM's forward context).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class ForwardContext:
    attn_metadata: Any


_current: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError("no forward context: call the model inside set_forward_context(...)")
    return _current


@contextmanager
def set_forward_context(attn_metadata: Any) -> Iterator[None]:
    global _current
    prev, _current = _current, ForwardContext(attn_metadata)
    try:
        yield
    finally:
        _current = prev
