"""The OpenAI-compatible server (m9): ``python -m folovllm serve``."""
