"""Per-request sampling parameters (the knobs of one generation).

Every invalid value raises ``ValueError`` naming the field and its allowed range, so a bad request is
rejected at ``add_request`` time and never reaches the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How to pick the next token and when to stop.

    temperature: 0 means greedy (argmax); > 0 scales logits before sampling.
    top_p: keep the smallest set of tokens whose probability mass reaches top_p (1.0 = off).
    top_k: keep the k most likely tokens (-1 = off).
    max_tokens: the most new tokens to generate.
    repetition_penalty: > 1 discourages tokens already in the prompt or output (1.0 = off),
        with the same semantics as transformers' RepetitionPenaltyLogitsProcessor.
    stop: strings that end generation when they appear in the output (not included in the text).
    ignore_eos: keep generating after the EOS token (for benchmarks).
    seed: per-request seed for reproducible sampling (None = engine's global RNG).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    stop_list: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k)
        if self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"top_k must be -1 (disabled) or >= 1, got {self.top_k}")
        _check_int("max_tokens", self.max_tokens)
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}"
            )
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed < 2**63:
                raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(
                    f"stop must be a non-empty string or a list of them, got {self.stop!r}"
                )
        self.stop_list = stops

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a real number, got {value!r}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
