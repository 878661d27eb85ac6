"""FoloVLLM: a teaching LLM inference engine that mirrors vLLM's design, one milestone at a time."""

from folovllm.config import EngineConfig
from folovllm.entrypoints.llm import LLM
from folovllm.milestone import MILESTONE
from folovllm.outputs import RequestOutput
from folovllm.sampling_params import SamplingParams

__all__ = ["LLM", "MILESTONE", "EngineConfig", "RequestOutput", "SamplingParams"]
