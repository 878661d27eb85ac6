"""m8: the output of a launched step whose sampled ids are still on their way to the host.

The runner returns it without waiting for the GPU: the ids are copied into pinned host memory
behind the step, and an event marks the end of the copy. ``get()`` waits on that event only, the
engine's one sync per step; with async scheduling the engine calls it once the next step is
launched, so the host's work for that step overlaps this one on the GPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from folovllm.worker.model_runner import ModelRunnerOutput


class AsyncModelRunnerOutput:
    """A launched step whose sampled ids are on their way to the host (pinned copy + event)."""

    def __init__(
        self, req_ids: list[str], sampled: torch.Tensor, logits: torch.Tensor | None = None
    ) -> None:
        self.req_ids, self.logits = req_ids, logits
        self._ids, self._ready = sampled, None
        if sampled.is_cuda:
            self._ids = torch.empty(sampled.shape, dtype=sampled.dtype, pin_memory=True)
            self._ids.copy_(sampled, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()

    def get(self) -> ModelRunnerOutput:
        """Wait for the step (the engine's one sync per step) and return its tokens."""
        from folovllm.worker.model_runner import ModelRunnerOutput  # that module imports this one

        if self._ready is not None:
            self._ready.synchronize()
        return ModelRunnerOutput(self.req_ids, self._ids.tolist(), self.logits)
