"""What the scheduler decided for one step; the only thing the runner needs from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from folovllm.request import Request


@dataclass
class SchedulerOutput:
    scheduled: list[Request]  # batch order
    num_scheduled_tokens: dict[str, int]  # request_id -> tokens to compute this step
    block_tables: dict[str, list[int]]  # request_id -> ids of the KV blocks holding its tokens
    finished_req_ids: set[str] = field(default_factory=set)  # freed since the last step
    # preempted since the last step: their blocks are gone, the runner drops their rows
    preempted_req_ids: set[str] = field(default_factory=set)

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
