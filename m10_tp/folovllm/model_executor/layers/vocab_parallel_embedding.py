"""The embedding and the output projection split over the vocabulary.

Each rank holds ``ceil(vocab / N)`` rows of the matrix (the vocabulary is padded to a multiple of
N; padding rows are zeros). Embedding: a rank looks up the ids in its range, writes zeros for the
others, and an all-reduce adds the ranks' rows (exactly one is not zero). Logits: each rank
multiplies by its rows, giving its slice of the vocabulary; rank 0, which samples, gathers them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folovllm.distributed.communication_op import (
    tensor_model_parallel_all_reduce,
    tensor_model_parallel_gather,
)
from folovllm.distributed.parallel_state import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
from folovllm.model_executor.weight_utils import materialize, narrow_weight, weight_shape


class VocabParallelEmbedding(nn.Module):
    """``nn.Embedding(vocab, hidden)`` whose rows are split over the ranks."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init: bool = True) -> None:
        super().__init__()
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_embeddings = num_embeddings
        self.per_rank = -(-num_embeddings // self.tp_size)
        self.vocab_start = self.tp_rank * self.per_rank
        self.weight = nn.Parameter(torch.empty(self.per_rank, embedding_dim), requires_grad=False)
        if init:  # as nn.Embedding: the checkpoint overwrites it, but the RNG advances as before
            nn.init.normal_(self.weight)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        rows = max(0, min(self.per_rank, weight_shape(loaded)[0] - self.vocab_start))
        if weight_shape(loaded)[1:] != tuple(param.shape[1:]) or (
            self.tp_size == 1 and rows != param.shape[0]
        ):
            raise ValueError(
                f"shape mismatch for the vocabulary: model {self.num_embeddings} x "
                f"{param.shape[1]}, checkpoint {weight_shape(loaded)}"
            )
        param.data[rows:].zero_()  # padding rows of the last rank
        param.data[:rows].copy_(materialize(narrow_weight(loaded, 0, self.vocab_start, rows)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection (an untied lm_head): the same split rows, used by ``compute_logits``."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim, init=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ParallelLMHead is used through compute_logits, not called")


def compute_logits(hidden: torch.Tensor, head: VocabParallelEmbedding) -> torch.Tensor | None:
    """Logits over the whole vocabulary on rank 0 (None on the other ranks)."""
    logits = F.linear(hidden, head.weight)  # [tokens, vocab / N]: this rank's slice
    if head.tp_size == 1:
        return logits
    logits = tensor_model_parallel_gather(logits)
    return None if logits is None else logits[:, : head.num_embeddings]
