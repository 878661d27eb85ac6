"""Weight quantization (m7): which methods exist and how a checkpoint's config selects one.

A quantization config is read from the checkpoint (``quantization_config`` in config.json, or
``quantize_config.json`` beside it). It tells each linear layer which parameters to create and how
to multiply (its "linear method", vLLM's ``QuantizeMethodBase``); everything else in the model
(embeddings, norms, lm_head) stays in the model's dtype.
"""

from __future__ import annotations

from typing import Any

from folovllm.model_executor.layers.quantization.gptq import GPTQConfig

QUANTIZATION_METHODS = {"gptq": GPTQConfig}


def get_quantization_config(
    requested: str | None, checkpoint_config: dict[str, Any] | None, where: str = "the checkpoint"
) -> GPTQConfig | None:
    """Resolve ``EngineConfig.quantization`` against what the checkpoint says.

    None and no quantization_config: an unquantized model. A checkpoint's method is used when none
    is requested; a request that contradicts the checkpoint, or a method we do not implement, is
    an error naming what is supported.
    """
    if checkpoint_config is None:
        if requested is not None:
            raise ValueError(
                f"quantization={requested!r} but {where} has no quantization_config "
                f"(is it a quantized checkpoint?)"
            )
        return None
    method = str(checkpoint_config.get("quant_method", "")).lower()
    if method not in QUANTIZATION_METHODS:
        raise ValueError(
            f"quant_method={method!r} in {where} is not supported; FoloVLLM supports "
            f"{sorted(QUANTIZATION_METHODS)} (4-bit, checkpoint_format 'gptq' or 'gptq_v2')"
        )
    if requested is not None and requested != method:
        raise ValueError(f"quantization={requested!r} but {where} is quantized with {method!r}")
    return QUANTIZATION_METHODS[method].from_config(checkpoint_config)
