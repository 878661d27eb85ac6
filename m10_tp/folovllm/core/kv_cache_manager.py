"""Per-request block tables on top of the block pool (vLLM v1's KVCacheManager).

A request's block table lists the blocks holding its tokens in order: token at position p lives
in block ``table[p // block_size]`` at offset ``p % block_size``. Blocks are taken only when the
tokens about to be computed need them, so a request never holds more than one partly empty block.

m6 (``enable_caching``): a new request first looks up the longest run of its full blocks whose
hashes are cached (``get_computed_blocks``); ``allocate_slots`` puts those hits at the head of its
table and allocates only the rest. Every block that a step fills is cached at once, so a request
scheduled later (even in the same step: each layer writes the step's K/V before attending) can hit it.
"""

from __future__ import annotations

from folovllm.core.block_pool import BlockPool, KVBlock
from folovllm.core.kv_cache_utils import update_block_hashes
from folovllm.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = False) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.block_pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}
        # The same tables as block ids, grown in place: SchedulerOutput hands these lists to the
        # runner each step without copying them (m4: the step's host work is on the clock).
        self.req_to_block_ids: dict[str, list[int]] = {}
        self.num_cached_blocks: dict[str, int] = {}  # blocks of the request already cached (m6)
        # Prefix-cache counters, in tokens, over admitted requests (vLLM's queries and hits).
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest cached prefix of the request: (blocks, tokens they hold). At least the
        last token is left to compute, since its logits give the next token."""
        if not self.enable_caching:
            return [], 0
        hashes = update_block_hashes(request, self.block_size)
        hits: list[KVBlock] = []
        for h in hashes[: (request.num_tokens - 1) // self.block_size]:
            block = self.block_pool.get_cached_block(h)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVBlock] = ()
    ) -> list[KVBlock] | None:
        """Make room for ``num_new_tokens`` more tokens after the request's computed ones and
        its cache hits ``new_computed_blocks`` (a new request only); None (and nothing taken,
        no hit held) if it does not fit."""
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        admitted = not blocks
        num_hit = len(new_computed_blocks) * self.block_size
        total = request.num_computed_tokens + num_hit + num_new_tokens
        needed = cdiv(total, self.block_size) - len(blocks) - len(new_computed_blocks)
        if needed > 0 or new_computed_blocks:  # else the usual decode step: its last block has room
            # A hit that nobody holds sits in the free queue: taking it uses up a free block too.
            idle_hits = sum(1 for b in new_computed_blocks if b.ref_count == 0)
            if needed + idle_hits > self.block_pool.num_free_blocks:
                if not blocks:
                    del self.req_to_blocks[request.request_id]
                return None
            ids = self.req_to_block_ids.setdefault(request.request_id, [])
            if new_computed_blocks:
                self.block_pool.touch(new_computed_blocks)
                blocks.extend(new_computed_blocks)
                ids.extend(b.block_id for b in new_computed_blocks)
            if needed > 0:
                new = self.block_pool.allocate(needed)
                blocks.extend(new)
                ids.extend(b.block_id for b in new)
        if self.enable_caching:
            if admitted:
                self.prefix_cache_queries += request.num_tokens
                self.prefix_cache_hits += num_hit
            self._cache_blocks(request, blocks, total)
        return blocks

    def _cache_blocks(self, request: Request, blocks: list[KVBlock], num_tokens: int) -> None:
        """Cache the blocks that are full once the first ``num_tokens`` tokens are computed.

        This runs when the slots are allocated, before the step writes them: safe because every
        backend writes the step's K/V before attending, and any later step that hits or reuses
        the block runs after this one on the GPU's stream (async scheduling too). A block whose
        last token is still in flight (async: its id is not known yet) is cached a step later."""
        start, end = (
            self.num_cached_blocks.get(request.request_id, 0),
            min(num_tokens, request.num_tokens) // self.block_size,
        )
        if end > start:
            hashes = update_block_hashes(request, self.block_size)
            self.block_pool.cache_full_blocks(blocks[start:end], hashes[start:end])
            self.num_cached_blocks[request.request_id] = end

    def free(self, request: Request) -> None:
        """Give back every block of the request (finish, abort or preemption)."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.req_to_block_ids.pop(request.request_id, None)
        self.num_cached_blocks.pop(request.request_id, None)
        # Reverse order: the tail blocks are freed first, so they are evicted first (m6).
        self.block_pool.free(list(reversed(blocks)))

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block (benchmarks: a cold start); False while blocks are in use."""
        return self.block_pool.reset_prefix_cache()

    @property
    def prefix_cache_hit_rate(self) -> float:
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (the live list: read it, don't keep or change it)."""
        return self.req_to_block_ids.get(request_id, [])

    def num_reserved_tokens(self) -> int:
        return sum(len(b) for b in self.req_to_blocks.values()) * self.block_size
