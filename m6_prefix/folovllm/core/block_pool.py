"""The block pool: every KV block of the cache, and the queue of free ones.

A block holds the K/V of ``block_size`` consecutive tokens of one request (in every layer). Blocks
are handed out from a free queue and come back when their reference count drops to zero; the
count is 1 until m6, where requests with a common prefix share blocks. Plain Python: the pool
knows block ids, never tensors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class KVBlock:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None  # content hash of a full block, for prefix caching (m6)


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue: deque[KVBlock] = deque(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def usage(self) -> float:
        """Fraction of blocks in use."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def allocate(self, n: int) -> list[KVBlock]:
        """Take ``n`` free blocks (all or nothing)."""
        if n > len(self.free_queue):
            raise ValueError(f"asked for {n} blocks, only {len(self.free_queue)} free")
        out = [self.free_queue.popleft() for _ in range(n)]
        for block in out:
            block.ref_count = 1
        return out

    def free(self, blocks: list[KVBlock]) -> None:
        """Drop one reference to each block; blocks nobody holds go back to the free queue."""
        for block in blocks:
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block.block_id} freed more times than allocated")
            block.ref_count -= 1
            if block.ref_count == 0:
                block.block_hash = None
                self.free_queue.append(block)
