"""The exact float reference of a GPTQ checkpoint: a plain transformers model, dequantized weights.

No GPTQ library is needed: each linear gets ``dequantize(qweight, qzeros, scales, g_idx).T``, so
this model computes what any correct GPTQ kernel computes, up to the matmul's rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from folovllm.model_executor.layers.quantization.utils.gptq_pack import ZERO_OFFSET, dequantize

QUANT_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def read_state_dict(path: Path, zero_offset: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint, each quantized linear turned back into ``<prefix>.weight``."""
    from safetensors.torch import load_file

    raw: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        raw.update(load_file(str(f)))
    out = {}
    for key, t in raw.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "qweight":
            p = {s: raw[f"{prefix}.{s}"] for s in QUANT_SUFFIXES}
            out[f"{prefix}.weight"] = dequantize(
                p["qweight"], p["qzeros"], p["scales"], p["g_idx"], zero_offset, torch.float32
            ).t()
        elif leaf not in QUANT_SUFFIXES:
            out[key] = t
    return {k: v.to(dtype) for k, v in out.items()}


def hf_model_from_gptq_checkpoint(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    """A transformers model of the checkpoint's architecture holding its dequantized weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    qc = raw.pop("quantization_config", None) or {}
    if qc.get("quant_method") != "gptq":
        raise ValueError(f"{path} is not a GPTQ checkpoint (quantization_config.quant_method)")
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in ZERO_OFFSET:
        raise ValueError(
            f"checkpoint_format={fmt!r} is not supported: use one of {list(ZERO_OFFSET)}"
        )
    raw.pop("dtype", None)
    raw.pop("torch_dtype", None)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    state = read_state_dict(path, ZERO_OFFSET[fmt], dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
    return model.to(device).eval()
