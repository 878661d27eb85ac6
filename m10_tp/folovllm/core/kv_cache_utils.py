"""Block hashes for prefix caching (m6, vLLM v1's ``kv_cache_utils``).

A full block's hash covers its whole prefix: ``sha256(parent hash | token ids | extra keys)``. Two
blocks with the same hash therefore hold the K/V of the same tokens at the same positions after the
same prefix, and can be shared. Only full blocks get a hash (a partial block still changes). The
encoding is stable across processes (fixed-width little-endian ints), and sha256 makes a collision,
which would silently hand one request another's K/V, practically impossible (vLLM dropped Python's
``hash()`` after GHSA-rm76-4mrf-v9r8). Extra keys (here a ``cache_salt``) keep tenants apart.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes

# The "parent" of a request's first block.
ROOT_HASH: BlockHash = hashlib.sha256(b"folovllm prefix cache root").digest()


def hash_block_tokens(
    parent: BlockHash | None, token_ids: Sequence[int], extra_keys: tuple | None = None
) -> BlockHash:
    h = hashlib.sha256(ROOT_HASH if parent is None else parent)
    h.update(len(token_ids).to_bytes(4, "little"))
    h.update(array("q", token_ids).tobytes())  # int64: the same bytes on every run
    # repr() without a kind tag is fine for the salt alone; tag each kind of key (LoRA,
    # multimodal) before adding more, or two kinds with equal values would collide.
    if extra_keys:
        h.update(repr(extra_keys).encode())
    return h.digest()


def update_block_hashes(request, block_size: int) -> list[BlockHash]:
    """Extend ``request.block_hashes`` to every full block of its tokens (incremental: blocks
    hashed before are never hashed again) and return it.

    The same bytes as ``hash_block_tokens`` per block, but the new blocks' tokens are encoded
    once and sliced (a block costs ~1 µs instead of ~4 in Python): hashing is on the host's
    critical path for every prompt, cached or not."""
    hashes = request.block_hashes
    first, num_full = len(hashes), request.num_tokens // block_size
    if first < num_full:
        tokens = request.all_token_ids  # one copy per newly full block, not per step
        data = memoryview(array("q", tokens[first * block_size : num_full * block_size]).tobytes())
        width, count = 8 * block_size, block_size.to_bytes(4, "little")
        salt = request.cache_salt
        for i in range(first, num_full):
            h = hashlib.sha256(hashes[-1] if hashes else ROOT_HASH)
            h.update(count)
            h.update(data[(i - first) * width : (i - first + 1) * width])
            if i == 0 and salt is not None:  # the salt goes into the first block only
                h.update(repr((salt,)).encode())
            hashes.append(h.digest())
    return hashes
