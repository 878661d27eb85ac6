"""Engine configuration: one flat, validated ``EngineConfig`` and the views the parts read.

Users write the seed's spelling (``max_batch_size``, ``enable_paged_kv`` ...) or vLLM's
(``max_num_seqs`` ...). A knob whose feature a later milestone adds is rejected with an error that
names that milestone, so a learner never silently runs without the feature they asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from folovllm.milestone import MILESTONE, has_milestone

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# field -> (the milestone that adds the feature, the values that mean "not used").
LATER_FEATURES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "max_batch_size": ("m2_batching", (None, 1)),
    "max_num_batched_tokens": ("m2_batching", (None,)),
    "enable_paged_kv": ("m3_paged", (None, False)),
    "block_size": ("m3_paged", (None,)),
    "gpu_memory_utilization": ("m3_paged", (None,)),
    "kv_cache_memory_gb": ("m2_batching", (None,)),
    "num_gpu_blocks": ("m3_paged", (None,)),
    "attention_backend": ("m4_flash", (None, "torch")),
    "enable_chunked_prefill": ("m5_chunked", (None, False)),
    "max_chunk_size": ("m5_chunked", (None,)),
    "enable_prefix_caching": ("m6_prefix", (None, False)),
    "quantization": ("m7_gptq", (None,)),
    "async_scheduling": ("m8_fast", (None, False)),
    "kv_cache_dtype": ("m8_fast", (None, "auto")),
    "tensor_parallel_size": ("m10_tp", (None, 1)),
}

# vLLM's name -> the seed's name (both are accepted; giving both with different values is an error).
ALIASES = {"max_num_seqs": "max_batch_size"}


@dataclass
class ModelArchConfig:
    """The parts of a checkpoint's config.json that the engine uses (Qwen2 / Qwen3)."""

    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool  # Qwen2: bias on q/k/v projections
    qk_norm: bool  # Qwen3: RMSNorm on each head of q and k
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (tied embeddings counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * self.head_dim
        layer = attn + 3 * h * i + 2 * h
        total = self.num_hidden_layers * layer + v * h + h
        if not self.tie_word_embeddings:
            total += v * h
        return total

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes of K and V cache one token occupies across all layers."""
        elem = torch.tensor([], dtype=dtype).element_size()
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * elem


@dataclass
class ModelConfig:
    """A resolved model: where it lives, its architecture and how to run it."""

    model: str
    path: Path
    arch: ModelArchConfig
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    load_format: str
    seed: int

    @property
    def kv_bytes_per_token(self) -> int:
        return self.arch.kv_bytes_per_token(self.dtype)


@dataclass
class CacheConfig:
    """How the KV cache is laid out (paged from m3 on)."""

    enable_paged_kv: bool = False
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_gb: float | None = None
    num_gpu_blocks: int | None = None
    enable_prefix_caching: bool = False


@dataclass
class SchedulerConfig:
    """How many requests and tokens one step may take (batching from m2 on)."""

    max_num_seqs: int = 1
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_chunked_prefill: bool = False
    max_chunk_size: int | None = None


@dataclass
class EngineConfig:
    """Every user-facing engine option, validated on construction.

    ``None`` means "the milestone's default". Knobs of later milestones must stay unset.
    """

    model: str | None = None
    tokenizer: str | None = None
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    max_model_len: int | None = None  # default: min(the model's max_position_embeddings, 4096)
    load_format: str = "auto"  # auto | safetensors | dummy (random weights from config.json)
    seed: int = 0
    enforce_eager: bool = False
    # -- later milestones -----------------------------------------------------------------------
    max_batch_size: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_paged_kv: bool | None = None
    block_size: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_memory_gb: float | None = None
    num_gpu_blocks: int | None = None
    attention_backend: str | None = None
    enable_chunked_prefill: bool | None = None
    max_chunk_size: int | None = None
    enable_prefix_caching: bool | None = None
    quantization: str | None = None
    async_scheduling: bool | None = None  # None: on for CUDA, off on a CPU (m8)
    kv_cache_dtype: str | None = None  # None / "auto": the model's dtype; "fp8" (m8)
    tensor_parallel_size: int | None = None  # m10: ranks (processes, GPUs) sharing the model
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.extra:
            raise ValueError(f"unknown engine options: {sorted(self.extra)}")
        # Check gated knobs under the name the user wrote, before aliases are merged.
        gated = [(n, n) for n in LATER_FEATURES] + [(a, n) for a, n in ALIASES.items()]
        for written, name in gated:
            milestone, off_values = LATER_FEATURES[name]
            value = getattr(self, written)
            if not has_milestone(milestone) and value not in off_values:
                raise ValueError(
                    f"{written}={value!r} needs milestone {milestone}; this engine is {MILESTONE} "
                    f"(leave {written} unset here, or run {milestone} or later)"
                )
        for alias, name in ALIASES.items():
            a, b = getattr(self, alias), getattr(self, name)
            if a is not None and b is not None and a != b:
                raise ValueError(f"{alias}={a} and {name}={b} are the same setting; give one")
            if a is not None:
                setattr(self, name, a)
            setattr(self, alias, getattr(self, name))
        self._validate()

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Build from keyword arguments, reporting unknown keys by name."""
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in kwargs.items() if k not in known}
        return cls(**{k: v for k, v in kwargs.items() if k in known}, extra=extra)

    def _validate(self) -> None:
        if self.model is not None and (
            not isinstance(self.model, (str, Path)) or not str(self.model)
        ):
            raise ValueError(f"model must be a non-empty path or hub id, got {self.model!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}"
            )
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        if self.max_model_len is not None and (
            isinstance(self.max_model_len, bool)
            or not isinstance(self.max_model_len, int)
            or self.max_model_len < 2
        ):
            raise ValueError(f"max_model_len must be an integer >= 2, got {self.max_model_len!r}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(
                f"load_format must be 'auto', 'safetensors' or 'dummy', got {self.load_format!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.enforce_eager, bool):
            raise ValueError(f"enforce_eager must be a bool, got {self.enforce_eager!r}")

    # -- resolved views ---------------------------------------------------------------------------
    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available here; use 'cpu'")
        return device

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    @property
    def cache_config(self) -> CacheConfig:
        return CacheConfig()

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(max_num_seqs=1, max_model_len=self.max_model_len)
