"""RMSNorm, with the residual add fused in (one pass instead of two over the hidden state).

On CUDA (m8) one Triton kernel does the add and the norm (layers/fused.py); the torch code below
is the reference it is tested against and what runs on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from folovllm.model_executor.layers import fused


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # Accumulate in float32 as transformers does; cast back before the weight multiply.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``norm(x)``; with ``residual``: ``(norm(x + residual), x + residual)``."""
        if fused.use_fused(x):  # the residual buffer is updated in place
            out = fused.rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
