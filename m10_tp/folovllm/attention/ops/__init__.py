"""Triton kernels for attention over the paged KV cache (m4).

- ``kv_cache.store_kv``: write this step's K/V into the cache through ``slot_mapping``.
- ``paged_attention.paged_attention``: one FlashAttention-2 style kernel for prefill, decode,
  mixed batches and queries over an already-cached context.
- ``decode_attention.split_kv_decode``: flash-decoding (split-KV + reduce) for decode steps with
  few sequences and long contexts.

Every launcher takes device tensors only and sizes its grid from host integers that depend on
the batch shape (never on values read back from the GPU), so all three can be captured in a CUDA
graph. Triton is imported lazily: the CPU-only engine (torch backend) never needs it.
"""
