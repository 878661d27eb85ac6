"""Offline 4-bit quantization: GPTQ (and round-to-nearest) into the standard GPTQ checkpoint format."""

from folovllm.quantize.gptq import GPTQ, QuantizedWeight, gptq_quantize, rtn_quantize
from folovllm.quantize.runner import quantize_model

__all__ = ["GPTQ", "QuantizedWeight", "gptq_quantize", "quantize_model", "rtn_quantize"]
