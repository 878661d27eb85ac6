"""Qwen3 = Qwen2 with two changes, both switched on by the config (ModelArchConfig):

- ``qk_norm``: an RMSNorm over each head of q and of k before RoPE (stabilises attention logits);
- no bias on the q/k/v projections (``attention_bias`` false), and ``head_dim`` given explicitly,
  so num_heads * head_dim may differ from hidden_size (Qwen3-0.6B: 16 x 128 = 2048 vs 1024).
"""

from __future__ import annotations

from folovllm.model_executor.models.qwen2 import Qwen2ForCausalLM


class Qwen3ForCausalLM(Qwen2ForCausalLM):
    pass
