"""The block pool: every KV block of the cache, the queue of free ones, and the prefix cache.

A block holds the K/V of ``block_size`` consecutive tokens of one request (in every layer). Blocks
are handed out from a free queue and come back when their reference count drops to zero. Plain
Python: the pool knows block ids, never tensors.

m6 (prefix caching, vLLM v1's design): a full block may carry a hash of its tokens and their
prefix, and ``cached_block_hash_to_block`` finds it by that hash. Requests with a common prefix
share blocks (``ref_count`` > 1). A freed block keeps its hash and stays findable while it waits in
the free queue (lazy eviction): a later request can take it back (``touch``), and only when the
block is handed out for other tokens is its hash dropped. The free queue is least recently used
first, and a doubly linked list so that a hit can leave it from the middle in O(1).
"""

from __future__ import annotations

from collections.abc import Iterator

from folovllm.core.kv_cache_utils import BlockHash


class KVBlock:
    __slots__ = ("block_id", "ref_count", "block_hash", "prev_free", "next_free")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: BlockHash | None = None  # set once the block is full and cached (m6)
        self.prev_free: KVBlock | None = None  # links of the free queue
        self.next_free: KVBlock | None = None

    def __repr__(self) -> str:
        cached = "" if self.block_hash is None else f", hash={self.block_hash.hex()[:8]}"
        return f"KVBlock({self.block_id}, ref_count={self.ref_count}{cached})"


class FreeBlockQueue:
    """Free blocks, least recently freed first: O(1) pop from the front, append, and removal of
    any block (a prefix hit takes a block back out of the middle). Two sentinels end the list."""

    def __init__(self, blocks: list[KVBlock]) -> None:
        self.head, self.tail = KVBlock(-1), KVBlock(-1)
        self.head.next_free, self.tail.prev_free = self.tail, self.head
        self.num_free = 0
        for b in blocks:
            self.append(b)

    def __len__(self) -> int:
        return self.num_free

    def __iter__(self) -> Iterator[KVBlock]:
        b = self.head.next_free
        while b is not self.tail:
            yield b
            b = b.next_free

    def append(self, block: KVBlock) -> None:
        last = self.tail.prev_free
        last.next_free, block.prev_free = block, last
        block.next_free, self.tail.prev_free = self.tail, block
        self.num_free += 1

    def remove(self, block: KVBlock) -> None:
        if block.prev_free is None or block.next_free is None:
            raise RuntimeError(f"block {block.block_id} is not in the free queue")
        block.prev_free.next_free, block.next_free.prev_free = block.next_free, block.prev_free
        block.prev_free = block.next_free = None
        self.num_free -= 1

    def popleft(self) -> KVBlock:
        if not self.num_free:
            raise ValueError("no free blocks")
        block = self.head.next_free
        self.remove(block)
        return block


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free_queue = FreeBlockQueue(self.blocks)
        self.cached_block_hash_to_block: dict[BlockHash, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks nobody holds, cached ones included (they can be evicted on demand)."""
        return len(self.free_queue)

    def usage(self) -> float:
        """Fraction of blocks in use."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def allocate(self, n: int) -> list[KVBlock]:
        """Take ``n`` free blocks (all or nothing), least recently used first; a cached one
        loses its hash now (lazy eviction)."""
        if n > len(self.free_queue):
            raise ValueError(f"asked for {n} blocks, only {len(self.free_queue)} free")
        out = [self.free_queue.popleft() for _ in range(n)]
        for block in out:
            self._evict(block)
            block.ref_count = 1
        return out

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            if self.cached_block_hash_to_block.get(block.block_hash) is block:
                del self.cached_block_hash_to_block[block.block_hash]
            block.block_hash = None

    def get_cached_block(self, block_hash: BlockHash) -> KVBlock | None:
        return self.cached_block_hash_to_block.get(block_hash)

    def touch(self, blocks: list[KVBlock]) -> None:
        """Add a reference to cache hits; a hit nobody held leaves the free queue."""
        for block in blocks:
            if block.ref_count == 0:
                self.free_queue.remove(block)
            block.ref_count += 1

    def cache_full_blocks(self, blocks: list[KVBlock], hashes: list[BlockHash]) -> None:
        """Make full blocks findable by their hashes (``blocks[i]`` holds block ``i``'s tokens).
        A block computed twice at once keeps the first copy in the map; both work."""
        for block, h in zip(blocks, hashes):
            if block.block_hash is None:
                block.block_hash = h
                self.cached_block_hash_to_block.setdefault(h, block)

    def free(self, blocks: list[KVBlock]) -> None:
        """Drop one reference to each block; blocks nobody holds go to the end of the free queue
        with their hash kept. Callers free a request's blocks tail first, so its tail is evicted
        before its head (the head is the part other requests are likelier to share)."""
        for block in blocks:
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block.block_id} freed more times than allocated")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue.append(block)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; refused (False) while any block is in use."""
        if self.num_free_blocks != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self.cached_block_hash_to_block.clear()
        return True
