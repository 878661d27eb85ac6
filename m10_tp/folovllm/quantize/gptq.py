"""GPTQ (Frantar et al., 2022) and round-to-nearest for one linear layer: 4 bits, groups of inputs.

Orientation: ``weight`` in and out is the layer's ``[N, K]`` (out, in), like ``nn.Linear.weight``;
the codes, scales, zeros and g_idx are in the checkpoint's ``[K, N]`` orientation (see gptq_pack).

GPTQ quantizes the input channels one at a time and spreads each one's rounding error over the
channels not yet quantized, weighted by the inverse Hessian ``H = 2/n sum x x^T`` of the layer's
inputs, so the layer's output on the calibration inputs, not its weights, stays close.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from folovllm.model_executor.layers.quantization.utils.gptq_pack import (
    MASK,
    ZERO_OFFSET,
    pack_cols,
    pack_rows,
)

MAXQ = MASK  # codes 0..15
BLOCK_SIZE = 128  # columns per lazy batch update


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # int32 [K, N], codes in [0, 15]
    scales: torch.Tensor  # float16 [G, N]
    zeros: torch.Tensor  # int32 [G, N], the real zero points (format "gptq" stores zero - 1)
    g_idx: torch.Tensor  # int32 [K], the group of each input channel
    weight: torch.Tensor  # float32 [N, K]: scales * (q - zeros), i.e. what the checkpoint computes

    def pack(self, checkpoint_format: str = "gptq") -> dict[str, torch.Tensor]:
        """The checkpoint tensors: qweight, qzeros, scales, g_idx (on the CPU)."""
        return {
            "qweight": pack_rows(self.q).cpu(),
            "qzeros": pack_cols(self.zeros - ZERO_OFFSET[checkpoint_format]).cpu(),
            "scales": self.scales.cpu(),
            "g_idx": self.g_idx.cpu(),
        }


def group_count(in_features: int, group_size: int) -> int:
    """Groups along the input channels; ValueError unless group_size divides in_features."""
    if group_size == -1:
        return 1
    if group_size <= 0 or in_features % group_size:
        raise ValueError(
            f"group_size={group_size} must be -1 or divide the input features ({in_features})"
        )
    return in_features // group_size


def _fp16(scale: torch.Tensor) -> torch.Tensor:
    # The checkpoint stores fp16 scales: quantize against exactly those values.
    scale = scale.half().float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def grid(w: torch.Tensor, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of ``w`` [R, k], over a range that always includes 0."""
    xmin = w.min(dim=1).values.clamp(max=0)
    xmax = w.max(dim=1).values.clamp(min=0)
    if sym:
        scale = _fp16(2 * torch.maximum(-xmin, xmax) / MAXQ)
        return scale, torch.full_like(scale, (MAXQ + 1) // 2)
    scale = _fp16((xmax - xmin) / MAXQ)
    zero = torch.round(-xmin / scale).clamp(0, MAXQ)
    # Format "gptq" stores zero - 1, so a zero of 0 cannot be written: such a row (almost no
    # negative weights) gets zero 1 and a scale that still reaches xmax with the 14 codes above it.
    low = zero < 1
    scale = torch.where(low, _fp16(xmax / (MAXQ - 1)), scale)
    return scale, torch.where(low, torch.ones_like(zero), zero)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes in [0, 15] (as floats) of ``w`` on the grid ``scale * (q - zero)`` (broadcasting)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, MAXQ)


def _result(codes, scales, zeros, g_idx, weight) -> QuantizedWeight:
    return QuantizedWeight(
        q=codes.t().to(torch.int32).contiguous(),
        scales=scales.half(),
        zeros=zeros.to(torch.int32),
        g_idx=g_idx.to(torch.int32),
        weight=weight,
    )


def rtn_quantize(weight: torch.Tensor, group_size: int = 128, sym: bool = True) -> QuantizedWeight:
    """Round to nearest on the same grid and groups as GPTQ: the baseline without error feedback."""
    n, k = weight.shape
    g = group_count(k, group_size)
    w = weight.detach().float().reshape(n * g, k // g)
    scale, zero = grid(w, sym)
    scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    codes = quantize_codes(w, scale, zero)
    deq = (scale * (codes - zero)).reshape(n, k)
    g_idx = torch.arange(k, device=weight.device) // (k // g)
    return _result(codes.reshape(n, k), scale.view(n, g).t(), zero.view(n, g).t(), g_idx, deq)


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; more damping if H is singular."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = h.diagonal().mean()
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
        damp *= 10
    raise ValueError("the Hessian is not positive definite even with strong dampening")


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int = 128,
    sym: bool = True,
    desc_act: bool = False,
    damp: float = 0.01,
    block_size: int = BLOCK_SIZE,
) -> QuantizedWeight:
    """GPTQ one layer's ``weight`` [N, K] given the Hessian [K, K] of its inputs.

    desc_act (act-order) quantizes the channels by descending diag(H); groups are then formed in
    that order (static_groups off), so g_idx maps each original channel to a permuted group.
    """
    n, k = weight.shape
    gs = k // group_count(k, group_size)
    if block_size % gs:  # keep groups inside blocks so a group's range sees its updated weights
        block_size = gs
    w = weight.detach().clone().float()
    h = hessian.detach().clone().double()
    dead = h.diagonal() == 0  # inputs that were always zero: no information, weight dropped
    h[dead, dead] = 1
    w[:, dead] = 0
    if desc_act:
        perm = torch.argsort(h.diagonal(), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    hinv = _inverse_hessian_factor(h, damp).float()

    codes, deq = torch.zeros_like(w), torch.zeros_like(w)
    scales = torch.zeros(k // gs, n, device=w.device)
    zeros = torch.zeros_like(scales)
    for b1 in range(0, k, block_size):
        b2 = min(b1 + block_size, k)
        wb, hb = w[:, b1:b2], hinv[b1:b2, b1:b2]  # views: updates land in w
        err = torch.zeros_like(wb)
        for i in range(b2 - b1):
            col = b1 + i
            if col % gs == 0:
                scales[col // gs], zeros[col // gs] = grid(w[:, col : col + gs], sym)
            s, z = scales[col // gs], zeros[col // gs]
            q = quantize_codes(wb[:, i], s, z)
            codes[:, col], deq[:, col] = q, s * (q - z)
            err[:, i] = (wb[:, i] - deq[:, col]) / hb[i, i]
            wb[:, i:] -= err[:, i : i + 1] * hb[i : i + 1, i:]
        w[:, b2:] -= err @ hinv[b1:b2, b2:]

    g_idx = torch.arange(k, device=w.device) // gs
    if desc_act:
        inv = torch.argsort(perm)
        codes, deq, g_idx = codes[:, inv], deq[:, inv], inv // gs
    return _result(codes, scales, zeros, g_idx, deq)


def relative_output_error(
    weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor
) -> float:
    """||(W' - W) X|| / ||W X|| over the calibration inputs, computed from their Hessian."""
    h = hessian.double()
    d, w = (approx - weight).double(), weight.double()
    num, den = ((d @ h) * d).sum(), ((w @ h) * w).sum()
    return float((num / den).sqrt()) if den > 0 else 0.0


class GPTQ:
    """Accumulates one linear layer's input Hessian, then quantizes its weight with it."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.rows = 0

    def add_batch(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` [..., K] into H = 2/n sum x x^T (a running average)."""
        x = x.detach().reshape(-1, self.H.shape[0]).float()
        m = x.shape[0]
        self.H *= self.rows / (self.rows + m)
        self.rows += m
        self.H += (2 / self.rows) * (x.t() @ x).double()

    def quantize(self, weight: torch.Tensor, **kwargs) -> QuantizedWeight:
        """gptq_quantize with this Hessian (kwargs: group_size, sym, desc_act, damp)."""
        return gptq_quantize(weight, self.H, **kwargs)
