"""From logits to the next token of every request in the batch, each with its own parameters.

Order (as transformers' logits processors): repetition penalty, then temperature, top-k, top-p.
Greedy rows (temperature 0) take the argmax. Random rows sample with the exponential race
``argmax(p / E)``, E ~ Exp(1), which draws from p exactly and lets each seeded request use its own
generator without a Python loop over the vocabulary.

m8: on CUDA, a batch that needs only temperatures (no top-k/top-p/penalty, no seeded request) runs
one Triton kernel instead (``ops.sample``): ``log(p / E) = logits / T - log E - log Z`` and the
normaliser Z is the same for the whole row, so ``argmax(p / E) = argmax(logits / T - log E)``
(the Gumbel-max trick): no softmax, the logits read once instead of ~8 float32 passes. Its noise
comes from Philox, not from torch's generators, so seeded requests keep the torch path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from folovllm.model_executor.layers import fused
from folovllm.request import Request
from folovllm.sample import ops


@dataclass
class SamplingMetadata:
    temperature: torch.Tensor  # [B] float32; 0 = greedy
    top_k: torch.Tensor | None  # [B] long; vocab size = off
    top_p: torch.Tensor | None  # [B] float32; 1 = off
    repetition_penalty: torch.Tensor | None  # [B] float32; 1 = off
    seen_token_ids: list[list[int]] | None  # prompt + output ids per row, for the penalty
    generators: dict[int, torch.Generator] = field(default_factory=dict)  # row -> seeded RNG
    # Decided from the parameters on the host: asking the GPU would cost a sync every step.
    all_greedy: bool = False

    @classmethod
    def from_requests(
        cls,
        requests: list[Request],
        vocab_size: int,
        device: torch.device,
        generators: dict[str, torch.Generator] | None = None,
    ) -> SamplingMetadata:
        ps = [r.sampling_params for r in requests]
        temperatures = [p.temperature for p in ps]
        all_greedy = not any(temperatures)
        temperature = _to_device(temperatures, torch.float32, device)
        top_k = top_p = penalty = seen = None
        if any(p.top_k != -1 for p in ps):
            top_k = _to_device(
                [p.top_k if p.top_k != -1 else vocab_size for p in ps], torch.long, device
            )
        if any(p.top_p < 1.0 for p in ps):
            top_p = _to_device([p.top_p for p in ps], torch.float32, device)
        if any(p.repetition_penalty != 1.0 for p in ps):
            penalty = _to_device([p.repetition_penalty for p in ps], torch.float32, device)
            seen = [r.all_token_ids for r in requests]
        gens = {}
        for i, r in enumerate(requests):
            if generators is not None and r.request_id in generators:
                gens[i] = generators[r.request_id]
        return cls(temperature, top_k, top_p, penalty, seen, gens, all_greedy)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on the device without a sync: a copy from pageable memory waits for the
    stream (the forward) to finish; from pinned memory it is queued behind it."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def apply_repetition_penalty(
    logits: torch.Tensor, penalty: torch.Tensor, seen_token_ids: list[list[int]]
) -> torch.Tensor:
    """Seen tokens: positive logits / penalty, negative logits * penalty (transformers' rule)."""
    seen = torch.zeros_like(logits, dtype=torch.bool)
    for i, ids in enumerate(seen_token_ids):
        if ids:
            seen[i, torch.tensor(ids, device=logits.device)] = True
    p = penalty[:, None]
    penalized = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalized, logits)


def apply_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep logits >= the k-th largest of each row (ties at the boundary are kept)."""
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(-1, (k.clamp(1, logits.shape[-1]) - 1)[:, None])
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    sorted_logits, idx = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p[:, None])
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(-1, idx, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


class Sampler(nn.Module):
    def forward(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """logits: [B, vocab] -> token ids [B]."""
        if (
            fused.use_fused(logits)  # one Triton kernel (m8)
            and md.top_k is None
            and md.top_p is None
            and md.repetition_penalty is None
            and not md.generators
        ):
            return ops.sample(logits, md.temperature)
        logits = logits.float()
        if md.repetition_penalty is not None:
            logits = apply_repetition_penalty(logits, md.repetition_penalty, md.seen_token_ids)
        greedy = logits.argmax(dim=-1)
        if md.all_greedy:
            return greedy
        temp = torch.where(md.temperature == 0, torch.ones_like(md.temperature), md.temperature)
        logits = logits / temp[:, None]
        if md.top_k is not None:
            logits = apply_top_k(logits, md.top_k)
        if md.top_p is not None:
            logits = apply_top_p(logits, md.top_p)
        probs = logits.softmax(dim=-1)
        q = torch.empty_like(probs).exponential_()
        for row, gen in md.generators.items():
            q[row].exponential_(generator=gen)
        sampled = (probs / q).argmax(dim=-1)
        return torch.where(md.temperature == 0, greedy, sampled)
