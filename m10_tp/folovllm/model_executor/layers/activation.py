"""SwiGLU's gate: silu(gate) * up, on the merged [gate | up] projection output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folovllm.model_executor.layers import fused


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.use_fused(x):  # one Triton kernel (m8)
            return fused.silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
