"""From a model name to a config, a tokenizer and a stream of weights.

Checkpoints are read from safetensors only: a pickle (``pytorch_model.bin``) can run arbitrary code
when loaded, so it is refused. ``load_format="dummy"`` makes random weights from config.json alone,
like vLLM's, so real model shapes can be benchmarked without downloading anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from folovllm.config import EngineConfig, ModelArchConfig, ModelConfig, verify_tensor_parallel
from folovllm.distributed.parallel_state import get_tensor_model_parallel_world_size

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
DEFAULT_MAX_MODEL_LEN = 4096
# Model directories that ship with the repository (the tiny model, config-only real shapes).
REPO_MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
# Names people try that do not exist on the hub, and what they probably meant.
_NEAR_MISSES = {"qwen/qwen2.5-0.6b": "Qwen/Qwen2.5-0.5B or Qwen/Qwen3-0.6B"}


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local directory nor in the local Hugging Face cache."""


def resolve_model_path(model: str | Path) -> Path:
    """Find a model directory: a local path, the local HF cache, or the repo's ``models/``."""
    name = str(model)
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ModelNotFoundError(f"model path {name!r} is a file; give the model's directory")
    if name.lower() in _NEAR_MISSES:
        raise ModelNotFoundError(
            f"model {name!r} does not exist on the Hugging Face hub; "
            f"did you mean {_NEAR_MISSES[name.lower()]}?"
        )
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        cached = _from_hf_cache(name)
        if cached is not None:
            return cached
    repo_copy = REPO_MODELS_DIR / Path(name).name
    if repo_copy.is_dir():
        return repo_copy.resolve()
    raise ModelNotFoundError(
        f"model {name!r} is not a local directory and is not in the local Hugging Face cache. "
        f"Download it where there is network (`huggingface-cli download {name}`) and pass the "
        f"directory, or use a model in {REPO_MODELS_DIR} (e.g. 'folo-tiny'); "
        f"for real shapes without weights use load_format='dummy' with 'Qwen/Qwen3-0.6B'."
    )


def _from_hf_cache(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or huggingface_hub missing: both mean "not here"
        return None


def load_arch_config(path: Path) -> ModelArchConfig:
    """Parse ``config.json``; reject architectures and options the engine does not implement."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json; is it a Hugging Face model directory?"
        )
    raw = json.loads(cfg_file.read_text())
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"unsupported architecture {archs or raw.get('model_type')!r} in {cfg_file}; "
            f"FoloVLLM supports {sorted(SUPPORTED_ARCHITECTURES)}"
        )
    model_type = SUPPORTED_ARCHITECTURES[arch]
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={raw['hidden_act']!r} is not supported (only 'silu')")
    rope_scaling = raw.get("rope_scaling") or {}
    rope_params = raw.get("rope_parameters") or {}
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type")) or rope_params.get(
        "rope_type", "default"
    )
    if rope_type not in ("default", None):
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported (only default RoPE)")
    if raw.get("use_sliding_window"):
        raise ValueError("use_sliding_window=true is not supported (full attention only)")
    quant = raw.get("quantization_config")
    quant_file = Path(path) / "quantize_config.json"  # older GPTQ tools wrote only this file
    if quant is None and quant_file.is_file():
        quant = json.loads(quant_file.read_text())
        quant.setdefault("quant_method", "gptq")
    if quant is not None and not isinstance(quant, dict):
        raise ValueError(f"quantization_config in {cfg_file} must be an object, got {quant!r}")
    heads = raw["num_attention_heads"]
    return ModelArchConfig(
        architecture=arch,
        model_type=model_type,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(raw.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
        max_position_embeddings=raw.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=True if model_type == "qwen2" else bool(raw.get("attention_bias", False)),
        qk_norm=model_type == "qwen3",
        torch_dtype=raw.get("torch_dtype", raw.get("dtype")),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        quantization_config=quant,
    )


def get_model_config(config: EngineConfig) -> ModelConfig:
    """Resolve ``config.model`` into a ModelConfig (path, architecture, dtype, device, length)."""
    if config.model is None:
        raise ValueError("model must be given (a local directory or a hub id)")
    path = resolve_model_path(config.model)
    arch = load_arch_config(path)
    load_format = config.load_format
    if load_format == "auto":
        load_format = "safetensors"
    if load_format == "safetensors":
        safetensors_files(path)  # fail early, before anything is allocated
    max_len = config.max_model_len or min(arch.max_position_embeddings, DEFAULT_MAX_MODEL_LEN)
    if max_len > arch.max_position_embeddings:
        raise ValueError(
            f"max_model_len={max_len} exceeds the model's max_position_embeddings="
            f"{arch.max_position_embeddings}"
        )
    device = config.resolve_device()
    quant_config = None
    if load_format == "dummy" and config.quantization and arch.quantization_config is None:
        from folovllm.model_executor.layers.quantization.gptq import GPTQConfig

        quant_config = GPTQConfig()  # random 4-bit weights of the real shapes, for benchmarks
    else:
        from folovllm.model_executor.layers.quantization import get_quantization_config

        quant_config = get_quantization_config(
            config.quantization, arch.quantization_config, str(path / "config.json")
        )
    tp = config.tensor_parallel_size or 1
    verify_tensor_parallel(arch, tp, quant_config)  # m10: before any worker process starts
    if device.type == "cuda" and tp > torch.cuda.device_count():
        raise ValueError(
            f"tensor_parallel_size={tp} needs {tp} GPUs; this machine has {torch.cuda.device_count()}"
        )
    return ModelConfig(
        model=str(config.model),
        path=path,
        arch=arch,
        dtype=config.resolve_dtype(device),
        device=device,
        max_model_len=max_len,
        load_format=load_format,
        seed=config.seed,
        quant_config=quant_config,
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def get_tokenizer(path: Path):
    """The checkpoint's tokenizer, through transformers (never with remote code).

    None when the directory has no tokenizer files (a config-only directory for dummy weights):
    then prompts must be token ids and outputs have no text.
    """
    from transformers import AutoTokenizer

    if not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def get_eos_token_ids(path: Path, tokenizer, arch: ModelArchConfig) -> list[int]:
    """Every token that ends generation: the tokenizer's EOS plus generation_config.json's list
    (what transformers' generate stops on), else config.json's."""
    ids: list[int] = []

    def add(value: int | list[int] | None) -> None:
        for v in [value] if isinstance(value, int) else value or []:
            if v not in ids:
                ids.append(v)

    if tokenizer is not None:
        add(tokenizer.eos_token_id)
    gen_cfg = Path(path) / "generation_config.json"
    if gen_cfg.is_file():
        add(json.loads(gen_cfg.read_text()).get("eos_token_id"))
    if not ids:
        add(arch.eos_token_id)
    return ids


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors shards (from the index when sharded)."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelNotFoundError(f"{index} names missing shards: {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise ValueError(
            f"{path} has only pickle weights {pickles}; FoloVLLM loads safetensors only "
            f"(pickles can run code when loaded). Convert with transformers: "
            f"model.save_pretrained(dir, safe_serialization=True)."
        )
    raise ModelNotFoundError(
        f"{path} has no *.safetensors weights; use load_format='dummy' for random weights"
    )


def iterate_safetensors(
    path: Path, device: torch.device | str = "cpu", lazy: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every weight, one shard open at a time. ``lazy`` (m10): a
    safetensors slice instead, read when the layer takes its part (model_executor/weight_utils)."""
    from safetensors import safe_open

    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():
                yield name, f.get_slice(name) if lazy else f.get_tensor(name)


def weight_shapes(arch: ModelArchConfig) -> dict[str, tuple[int, ...]]:
    """Every weight a Hugging Face Qwen2/Qwen3 checkpoint holds, with its shape."""
    h, i, v, d = arch.hidden_size, arch.intermediate_size, arch.vocab_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(arch.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        if arch.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q,)
            shapes[p + "self_attn.k_proj.bias"] = (kv,)
            shapes[p + "self_attn.v_proj.bias"] = (kv,)
        if arch.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (d,)
            shapes[p + "self_attn.k_norm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
    shapes["model.norm.weight"] = (h,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def iterate_dummy_weights(
    arch: ModelArchConfig,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Random weights with the checkpoint's names and shapes (norm weights are ones).

    Small values (std 0.02, like HF's initializer) keep activations finite through every layer.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, shape in weight_shapes(arch).items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(shape, dtype=dtype, device=device)
        else:
            w = torch.empty(shape, dtype=torch.float32, device=device).normal_(
                0.0, 0.02, generator=gen
            )
            yield name, w.to(dtype)


LINEAR_WEIGHTS = ("proj.weight",)  # q/k/v/o/gate/up/down_proj: what GPTQ quantizes


def iterate_dummy_gptq_weights(
    arch: ModelArchConfig, quant_config, dtype: torch.dtype, device, seed: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """Random 4-bit weights in the GPTQ format for the linear layers, random dense ones elsewhere.

    Codes are uniform in [0, 15] around a zero of 8, and the scale makes the dequantized weights'
    standard deviation about 0.02, like the dense dummy weights.
    """
    from folovllm.model_executor.layers.quantization.utils.gptq_pack import (
        PACK,
        default_g_idx,
        pack_cols,
    )

    gen = torch.Generator(device=device).manual_seed(seed)
    for name, t in iterate_dummy_weights(arch, dtype, device, seed):
        if not name.endswith(LINEAR_WEIGHTS):
            yield name, t
            continue
        n, k = t.shape
        gs = k if quant_config.group_size == -1 else quant_config.group_size
        base = name[: -len("weight")]
        words = torch.randint(-(2**31), 2**31 - 1, (k // PACK, n), generator=gen, device=device)
        yield base + "qweight", words.to(torch.int32)
        zero = 8 - quant_config.zero_offset  # stored zero: 7 in format v1
        yield base + "qzeros", pack_cols(torch.full((k // gs, n), zero, device=device))
        yield (
            base + "scales",
            torch.full((k // gs, n), 0.02 / 4.6, dtype=torch.float16, device=device),
        )
        yield base + "g_idx", default_g_idx(k, gs, device)


def iterate_weights(
    model_config: ModelConfig, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights to load: from safetensors, or random when ``load_format == 'dummy'``."""
    if model_config.load_format == "dummy":
        if model_config.quant_config is not None:
            return iterate_dummy_gptq_weights(
                model_config.arch, model_config.quant_config, model_config.dtype, device,
                model_config.seed,
            )  # fmt: skip
        return iterate_dummy_weights(
            model_config.arch, model_config.dtype, device, model_config.seed
        )
    lazy = get_tensor_model_parallel_world_size() > 1  # each rank reads only its slice
    return iterate_safetensors(model_config.path, device, lazy)


def count_checkpoint_parameters(path: Path) -> int:
    """Parameter count read from the safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                n = 1
                for s in f.get_slice(name).get_shape():
                    n *= s
                total += n
    return total
