"""Linear layers that load checkpoint weights by name, including merged projections.

q, k and v (and gate and up) are stored as separate matrices in a checkpoint but computed as one
matmul here: one kernel launch and one read of the input instead of three. Each merged layer knows
where every shard goes (``weight_loader``), as vLLM's QKVParallelLinear does.

m7: with a quantization config a layer holds packed parameters instead of ``weight`` (created by
the config's linear method, which also does the multiply). Each parameter says along which
dimension output features run (``output_dim``) and how many share an element (``pack_factor``),
so the same shard ranges place q/k/v or gate/up slices of packed tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from folovllm.model_executor.layers.ops import gemv


class Linear(nn.Module):
    """y = x W^T (+ b). Shards: none; the checkpoint tensor must match exactly."""

    def __init__(
        self, input_size: int, output_size: int, bias: bool = False, quant_config=None
    ) -> None:
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.quant_method = quant_config.get_linear_method() if quant_config else None
        if self.quant_method is None:
            self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        else:
            self.quant_method.create_weights(self, input_size, output_size)
        self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False) if bias else None

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        return 0, self.output_size

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | int | None = None
    ) -> None:
        start, end = self.shard_range(shard_id)
        dim, pack = getattr(param, "output_dim", 0), getattr(param, "pack_factor", 1)
        if param.dtype != loaded.dtype and not (
            param.is_floating_point() and loaded.is_floating_point()
        ):
            raise ValueError(
                f"dtype mismatch for shard {shard_id}: model {param.dtype}, checkpoint {loaded.dtype}"
            )
        if dim is None:  # not sharded (GPTQ's g_idx): every shard must bring the same tensor
            if getattr(param, "loaded_once", False) and not torch.equal(param.data, loaded):
                raise ValueError(
                    f"shard {shard_id} brings another g_idx than the shard before; a merged layer "
                    f"needs one input-channel order (GPTQ's act-order gives q/k/v, and gate/up, "
                    f"the same one: they share their input)"
                )
            param.loaded_once = True
            target = param.data
        else:
            target = param.data.narrow(dim, start // pack, (end - start) // pack)
        if target.shape != loaded.shape:
            raise ValueError(
                f"shape mismatch for shard {shard_id}: model {tuple(target.shape)}, checkpoint {tuple(loaded.shape)}"
            )
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, x, self.bias)
        if gemv.use_gemv(x, self.weight):  # m8: decode of a few rows streams the weight
            return gemv.gemv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class QKVLinear(Linear):
    """[q | k | v] in one matrix; k and v have fewer heads under grouped-query attention."""

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        num_heads: int,
        num_kv_heads: int,
        bias: bool,
        quant_config=None,
    ) -> None:
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias, quant_config)

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        q, kv = self.q_size, self.kv_size
        return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}[shard_id]


class MergedLinear(Linear):
    """Several equally shaped outputs side by side (gate_proj and up_proj)."""

    def __init__(
        self, input_size: int, output_sizes: list[int], bias: bool = False, quant_config=None
    ) -> None:
        self.offsets = [0]
        for size in output_sizes:
            self.offsets.append(self.offsets[-1] + size)
        super().__init__(input_size, self.offsets[-1], bias, quant_config)

    def shard_range(self, shard_id: str | int | None) -> tuple[int, int]:
        return self.offsets[shard_id], self.offsets[shard_id + 1]
