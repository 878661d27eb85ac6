"""GPTQ at run time: a 4-bit linear layer that reads the standard GPTQ checkpoint format.

``GPTQConfig`` validates the checkpoint's ``quantization_config``; ``GPTQLinearMethod`` gives a
linear layer the checkpoint's packed parameters (utils/gptq_pack.py describes the format),
prepares them once after loading and multiplies through one of two kernel families, chosen by
``FOLOVLLM_GPTQ_KERNEL``: ``format`` (the default; gptq_triton.py, over the checkpoint's own
layout) or ``nk`` (gptq_nk.py, over the layout ``repack_nk`` makes at load time: each output
channel's 4-bit weights as one contiguous run along K, nibbles in the order the kernels consume
them). Both run a torch reference on the CPU. The file on disk never changes; scales stay float16
as stored.

Act-order (``desc_act``) checkpoints quantize input channels in a permuted order, so a group's
channels are scattered. At load time the rows are sorted by group once and the same permutation is
applied to the activations (one gather per call); the kernels then always see contiguous groups,
as ExLlama's and vLLM's "shuffle" does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from folovllm.model_executor.layers.quantization.utils.gptq_pack import (
    PACK,
    ZERO_OFFSET,
    default_g_idx,
    dequantize,
    pack_rows,
    repack_nk,
    unpack_rows,
)

logger = logging.getLogger(__name__)

SUPPORTED_BITS = (4,)
SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128)
SUPPORTED_FORMATS = tuple(ZERO_OFFSET)  # "gptq" (v1: zero - 1 stored), "gptq_v2"


@dataclass(frozen=True)
class GPTQConfig:
    """The fields of a GPTQ ``quantization_config`` the engine uses, validated."""

    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    checkpoint_format: str = "gptq"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GPTQConfig:
        bits = cfg.get("bits", 4)
        if bits not in SUPPORTED_BITS:
            raise ValueError(
                f"GPTQ bits={bits!r} is not supported; FoloVLLM supports bits in {SUPPORTED_BITS}"
            )
        group_size = cfg.get("group_size", 128)
        if group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(
                f"GPTQ group_size={group_size!r} is not supported; supported: {SUPPORTED_GROUP_SIZES}"
            )
        fmt = cfg.get("checkpoint_format", cfg.get("format", "gptq"))
        if fmt not in SUPPORTED_FORMATS:
            raise ValueError(
                f"GPTQ checkpoint_format={fmt!r} is not supported; supported: {SUPPORTED_FORMATS} "
                f"(marlin/bitblas-only formats must be converted back to 'gptq')"
            )
        if cfg.get("dynamic"):
            raise ValueError("GPTQ 'dynamic' per-module overrides are not supported")
        if cfg.get("lm_head"):
            raise ValueError("a quantized lm_head is not supported (lm_head: true)")
        return cls(
            bits, group_size, bool(cfg.get("desc_act", False)), bool(cfg.get("sym", True)), fmt
        )

    @property
    def zero_offset(self) -> int:
        """What to add to a stored zero point: 1 for format v1 (it stores zero - 1), 0 for v2."""
        return ZERO_OFFSET[self.checkpoint_format]

    def get_linear_method(self) -> GPTQLinearMethod:
        return GPTQLinearMethod(self)


KERNELS = ("format", "nk")


def kernel_layout() -> str:
    """The kernels ``FOLOVLLM_GPTQ_KERNEL`` picks: ``format`` (gptq_triton.py, over the checkpoint's
    own layout; the default) or ``nk`` (gptq_nk.py, over the layout ``repack_nk`` makes at load)."""
    layout = os.environ.get("FOLOVLLM_GPTQ_KERNEL", "format")
    if layout not in KERNELS:
        raise ValueError(f"FOLOVLLM_GPTQ_KERNEL must be one of {KERNELS}, got {layout!r}")
    return layout


class GPTQLinearMethod:
    """Creates, prepares and applies the packed parameters of one (possibly merged) linear."""

    def __init__(self, config: GPTQConfig) -> None:
        self.config = config
        self.layout = kernel_layout()

    def create_weights(self, layer: nn.Module, input_size: int, output_size: int) -> None:
        if input_size % PACK or output_size % PACK:
            raise ValueError(
                f"GPTQ needs input and output features divisible by {PACK}, got "
                f"{input_size} x {output_size}"
            )
        gs = input_size if self.config.group_size == -1 else self.config.group_size
        if input_size % gs:
            raise ValueError(f"input features {input_size} not divisible by group_size {gs}")
        groups = input_size // gs
        layer.group_size = gs

        def param(shape, dtype, output_dim, pack=1):
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            p.output_dim, p.pack_factor = output_dim, pack  # how the weight_loader shards it
            return p

        layer.qweight = param((input_size // PACK, output_size), torch.int32, 1)
        layer.qzeros = param((groups, output_size // PACK), torch.int32, 1, PACK)
        layer.scales = param((groups, output_size), torch.float16, 1)
        layer.g_idx = param((input_size,), torch.int32, None)  # shared by every shard
        layer.register_buffer("perm", None, persistent=False)
        layer.dense_weight = None  # set only when g_idx cannot be made contiguous

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Sort act-order rows into groups and, for ``nk``, repack ``qweight``; check g_idx."""
        k = layer.g_idx.shape[0]
        g_idx = layer.g_idx.data.long()
        groups = layer.scales.shape[0]
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
            raise ValueError(f"g_idx of {layer.prefix} holds groups outside [0, {groups})")
        expected = default_g_idx(k, layer.group_size, g_idx.device).long()
        perm = None
        if not torch.equal(g_idx, expected):
            perm = torch.argsort(g_idx, stable=True)
            if not torch.equal(g_idx[perm], expected):
                # Irregular groups (not what GPTQ writes): keep the layer correct, not compressed.
                logger.warning("%s: irregular g_idx, dequantized at load (no memory saving)",
                               layer.prefix)  # fmt: skip
                layer.dense_weight = dequantize(
                    layer.qweight.data, layer.qzeros.data, layer.scales.data, layer.g_idx.data,
                    self.config.zero_offset, torch.get_default_dtype(),
                )  # fmt: skip
                return
            layer.perm = perm  # act-order: equal-sized groups, permuted
        if self.layout == "nk" or perm is not None:
            q = unpack_rows(layer.qweight.data)  # [K, N]
            q = q if perm is None else q[perm]
            # nk: int32 [N, K/8 rounded up to whole 16-byte chunks]; format: [K/8, N], rows sorted
            layer.qweight.data = repack_nk(q) if self.layout == "nk" else pack_rows(q)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from folovllm.model_executor.layers.quantization.gptq_nk import gptq_nk_matmul
        from folovllm.model_executor.layers.quantization.gptq_triton import gptq_matmul

        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if layer.perm is not None:
            x = x[:, layer.perm]
        if layer.dense_weight is not None:
            out = x @ layer.dense_weight.to(x.dtype)
        elif self.layout == "nk":
            out = gptq_nk_matmul(
                x, layer.qweight, layer.qzeros, layer.scales, layer.g_idx.shape[0],
                layer.group_size, self.config.zero_offset,
            )  # fmt: skip
        else:
            out = gptq_matmul(x, layer.qweight, layer.qzeros, layer.scales, layer.group_size,
                              self.config.zero_offset)  # fmt: skip
        if bias is not None:
            out = out + bias
        return out.reshape(*shape[:-1], out.shape[-1])
