"""Per-request block tables on top of the block pool (vLLM v1's KVCacheManager).

A request's block table lists the blocks holding its tokens in order: token at position p lives
in block ``table[p // block_size]`` at offset ``p % block_size``. Blocks are taken only when the
tokens about to be computed need them, so a request never holds more than one partly empty block.
"""

from __future__ import annotations

from folovllm.core.block_pool import BlockPool, KVBlock
from folovllm.request import Request


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.block_pool = BlockPool(num_blocks)
        self.req_to_blocks: dict[str, list[KVBlock]] = {}

    def allocate_slots(self, request: Request, num_new_tokens: int) -> list[KVBlock] | None:
        """Make room for ``num_new_tokens`` more tokens; None (and nothing taken) if it does not fit."""
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        needed = cdiv(request.num_computed_tokens + num_new_tokens, self.block_size) - len(blocks)
        if needed <= 0:  # the usual decode step: its last block still has room
            return blocks
        if needed > self.block_pool.num_free_blocks:
            if not blocks:
                del self.req_to_blocks[request.request_id]
            return None
        blocks.extend(self.block_pool.allocate(needed))
        return blocks

    def free(self, request: Request) -> None:
        """Give back every block of the request (finish, abort or preemption)."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        # Reverse order: the tail blocks are freed first (matters once blocks are cached, m6).
        self.block_pool.free(list(reversed(blocks)))

    def get_block_ids(self, request_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(request_id, [])]

    def num_reserved_tokens(self) -> int:
        return sum(len(b) for b in self.req_to_blocks.values()) * self.block_size
