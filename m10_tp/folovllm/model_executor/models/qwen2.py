"""Qwen2 decoder: grouped-query attention with q/k/v bias, RoPE, SwiGLU MLP, pre-RMSNorm.

The same classes serve Qwen3 (see qwen3.py): the two differences are flags read from the config.
``forward(input_ids, positions)`` takes a flat batch of tokens; which request each token belongs to
and where its K/V go is in the attention metadata of the forward context.

m10: with N tensor-parallel ranks each rank builds the same model with 1/N of the heads, KV heads,
MLP rows and vocabulary (the parallel layers read N from parallel_state); the checkpoint's names
and the forward are unchanged, and the two row-parallel layers of a decoder layer all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from folovllm.attention.layer import Attention
from folovllm.config import ModelArchConfig
from folovllm.model_executor.layers import fused
from folovllm.model_executor.layers.activation import SiluAndMul
from folovllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from folovllm.model_executor.layers.rms_norm import RMSNorm
from folovllm.model_executor.layers.rotary_embedding import RotaryEmbedding
from folovllm.model_executor.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
    compute_logits,
)
from folovllm.model_executor.weight_utils import materialize, weight_shape


class Qwen2Attention(nn.Module):
    def __init__(
        self, cfg: ModelArchConfig, layer_idx: int, rotary_emb: RotaryEmbedding, quant_config=None
    ) -> None:
        super().__init__()
        self.head_dim = cfg.head_dim
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size,
            self.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.attention_bias,
            quant_config,
        )
        # This rank's heads (all of them with one rank).
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(
            cfg.num_attention_heads * self.head_dim, cfg.hidden_size, quant_config=quant_config
        )
        self.qk_norm = cfg.qk_norm
        if self.qk_norm:  # Qwen3: RMSNorm over each head of q and k, before RoPE
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.rotary_emb = rotary_emb  # one cos/sin table shared by every layer
        self.attn = Attention(
            self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_kv_heads, layer_idx
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if fused.use_fused(qkv):  # m8: the q/k norms and RoPE below, in one kernel
            norm = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps) if self.qk_norm else ()
            rope, heads = self.rotary_emb, (self.num_heads, self.num_kv_heads, self.head_dim)
            q, k = fused.qk_norm_rope(qkv, positions, rope.cos_cache, rope.sin_cache, *heads, *norm)
        else:
            q = q.view(-1, self.num_heads, self.head_dim)
            k = k.view(-1, self.num_kv_heads, self.head_dim)
            if self.qk_norm:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q, k, v)  # [tokens, num_heads, head_dim]
        return self.o_proj(out.reshape(-1, self.q_size))


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: ModelArchConfig, quant_config=None) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            cfg.hidden_size, [cfg.intermediate_size] * 2, quant_config=quant_config
        )
        self.down_proj = RowParallelLinear(
            cfg.intermediate_size, cfg.hidden_size, quant_config=quant_config
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Qwen2DecoderLayer(nn.Module):
    def __init__(
        self, cfg: ModelArchConfig, layer_idx: int, rotary_emb: RotaryEmbedding, quant_config=None
    ) -> None:
        super().__init__()
        self.self_attn = Qwen2Attention(cfg, layer_idx, rotary_emb, quant_config)
        self.mlp = Qwen2MLP(cfg, quant_config)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class Qwen2Model(nn.Module):
    def __init__(self, cfg: ModelArchConfig, quant_config=None) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        rope = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)
        self.layers = nn.ModuleList(
            Qwen2DecoderLayer(cfg, i, rope, quant_config) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Qwen2ForCausalLM(nn.Module):
    # checkpoint name fragment -> (our merged parameter's name fragment, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: ModelArchConfig, quant_config=None) -> None:
        super().__init__()
        self.config = cfg
        self.quant_config = quant_config  # m7: linear layers in 4 bits; lm_head stays dense
        self.model = Qwen2Model(cfg, quant_config)
        if cfg.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens
        else:
            self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states of every token: [num_tokens, hidden_size]."""
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits over the vocabulary; with several ranks on rank 0 only (the others: None)."""
        return compute_logits(hidden, self.lm_head)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors into parameters by name; every parameter must be filled."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # tied: the embedding matrix is the output projection
            shard_id = None
            for ckpt_part, (our_part, sid) in self.packed_modules.items():
                if f".{ckpt_part}." in name:
                    name, shard_id = name.replace(ckpt_part, our_part), sid
                    break
            param = params.get(name)
            if param is None and self.quant_config is not None and name.endswith(".weight"):
                raise ValueError(
                    f"checkpoint weight {name!r} is not quantized, but the checkpoint's config says "
                    f"gptq: expected .qweight/.qzeros/.scales/.g_idx for every linear layer"
                )
            if param is None:
                raise ValueError(
                    f"checkpoint weight {name!r} has no place in {type(self).__name__}"
                )
            loader = getattr(self._owner(name), "weight_loader", None)
            with torch.no_grad():
                if loader is not None:
                    loader(param, tensor, shard_id)
                elif tuple(param.shape) != weight_shape(tensor):
                    raise ValueError(
                        f"shape mismatch for {name}: model {tuple(param.shape)}, checkpoint {weight_shape(tensor)}"
                    )
                else:
                    param.copy_(materialize(tensor))  # replicated (norms): whole on every rank
            loaded.add(name if shard_id is None else f"{name}#{shard_id}")
        expected = set()
        for name in params:
            module = self._owner(name)
            shards = {QKVParallelLinear: ("q", "k", "v"), MergedColumnParallelLinear: (0, 1)}.get(
                type(module)
            )
            expected.update(f"{name}#{s}" for s in shards) if shards else expected.add(name)
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(
                f"checkpoint is missing weights: {missing[:8]}{' ...' if len(missing) > 8 else ''}"
            )

    def process_weights_after_loading(self) -> None:
        """m7: let every quantized layer prepare its loaded tensors (once, before any forward)."""
        for name, module in self.named_modules():
            method = getattr(module, "quant_method", None)
            if method is not None:
                module.prefix = name
                method.process_weights_after_loading(module)

    def _owner(self, param_name: str) -> nn.Module:
        return self.get_submodule(param_name.rsplit(".", 1)[0])
