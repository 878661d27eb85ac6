"""Architecture name (config.json "architectures") -> model class."""

from __future__ import annotations

import torch

from folovllm.config import ModelConfig
from folovllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from folovllm.model_executor.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY = {"Qwen2ForCausalLM": Qwen2ForCausalLM, "Qwen3ForCausalLM": Qwen3ForCausalLM}


def get_model(model_config: ModelConfig) -> torch.nn.Module:
    """Build the model on its device in its dtype, then stream the weights into it."""
    from folovllm.model_executor.model_loader import iterate_weights

    cls = MODEL_REGISTRY[model_config.arch.architecture]
    with torch.device(model_config.device):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(model_config.dtype)
        try:
            model = cls(model_config.arch, model_config.quant_config)
        finally:
            torch.set_default_dtype(prev)
    # Rotary tables stay float32 for accuracy; every float parameter is in the model's dtype (the
    # copy into it casts); m7's packed integers and float16 scales keep the dtype they are made in.
    model.load_weights(iterate_weights(model_config, model_config.device))
    model.process_weights_after_loading()
    return model.eval()
