"""The four roles of an attention backend (vLLM v1's split).

- ``AttentionBackend``: names the other three and the KV cache shape.
- ``AttentionMetadata``: per-step facts (which tokens belong to which request, where K/V go).
- ``AttentionMetadataBuilder``: turns the runner's batch description into that metadata.
- ``AttentionImpl``: the computation (write K/V, attend).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class AttentionMetadata:
    """Marker base class; each backend defines its own dataclass."""


class AttentionImpl(ABC):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int) -> None:
        self.num_heads, self.head_dim, self.scale, self.num_kv_heads = (
            num_heads,
            head_dim,
            scale,
            num_kv_heads,
        )

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: Any,
    ) -> torch.Tensor: ...


class AttentionMetadataBuilder(ABC):
    @abstractmethod
    def build(self, **batch: Any) -> AttentionMetadata: ...


class AttentionBackend(ABC):
    @staticmethod
    @abstractmethod
    def get_name() -> str: ...

    @staticmethod
    @abstractmethod
    def get_impl_cls() -> type[AttentionImpl]: ...

    @staticmethod
    @abstractmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]: ...

    @staticmethod
    @abstractmethod
    def get_kv_cache_shape(*args: int) -> tuple[int, ...]: ...
