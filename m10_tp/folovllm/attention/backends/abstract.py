"""The four roles of an attention backend (vLLM v1's split).

- ``AttentionBackend``: names the other three and the KV cache shape.
- ``AttentionMetadata``: per-step facts (which tokens belong to which request, where K/V go).
- ``AttentionMetadataBuilder``: turns the runner's batch description into that metadata.
- ``AttentionImpl``: the computation (write K/V, attend).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


class AttentionMetadata:
    """Marker base class; each backend defines its own dataclass."""


@dataclass
class CommonAttentionMetadata:
    """What every backend's builder starts from: the batch, built once per step by the runner.

    The tensors live on the device (int32; one host->device copy per step fills them); the
    ``*_cpu`` lists are the same numbers on the host, for backends that loop in Python.
    """

    query_start_loc: torch.Tensor  # [num_reqs + 1]: request i's queries are [qsl[i], qsl[i + 1])
    seq_lens: torch.Tensor  # [num_reqs]: tokens in the cache after this step (context + new)
    block_table: torch.Tensor  # [num_reqs, max_blocks]: block ids of each request, in order
    slot_mapping: torch.Tensor  # [num_tokens]: flat cache slot of each new token; -1 = padding
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    num_reqs: int
    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int


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
    def build(self, common: CommonAttentionMetadata) -> AttentionMetadata: ...


class AttentionBackend(ABC):
    # True when the metadata is device tensors whose shapes depend only on the batch size.
    supports_cuda_graphs: bool = False
    # True when one graph per token count can serve any mix of prefills and decodes: the kernels
    # find each token's request on the device and take padding requests of length 0.
    supports_full_cuda_graphs: bool = False

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
