"""The user-facing API: ``LLM(model=...).generate(prompts, sampling_params)``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from folovllm.config import EngineConfig
from folovllm.engine.llm_engine import LLMEngine
from folovllm.outputs import RequestOutput
from folovllm.sampling_params import SamplingParams

PromptType = str | list[int]


def _setup_logging(level: str | int) -> None:
    logger = logging.getLogger("folovllm")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


class LLM:
    """An offline engine.

    ``LLM(model="folo-tiny")``, ``LLM(model=..., engine_config=EngineConfig(...))`` or
    ``LLM(model=..., max_model_len=1024, dtype="bf16")`` (keyword arguments are EngineConfig fields).
    With ``tensor_parallel_size > 1`` it owns worker processes: ``shutdown()``, or
    ``with LLM(...) as llm:``, stops them (so does the interpreter's exit).
    """

    def __init__(
        self,
        model: str | None = None,
        engine_config: EngineConfig | None = None,
        log_level: str | int = "WARNING",
        **kwargs: Any,
    ) -> None:
        _setup_logging(log_level)
        if engine_config is None:
            engine_config = EngineConfig.from_kwargs(model=model, **kwargs)
        elif kwargs:
            raise ValueError(
                f"give options either in engine_config or as keywords, not both: {sorted(kwargs)}"
            )
        elif model is not None:
            if engine_config.model not in (None, model):
                raise ValueError(f"model={model!r} but engine_config.model={engine_config.model!r}")
            engine_config.model = model
        self.engine = LLMEngine(engine_config)
        self.tokenizer = self.engine.tokenizer

    def shutdown(self) -> None:
        """Stop the engine's worker processes, if it has any (idempotent)."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix (m6): the next requests start cold. False while busy."""
        return self.engine.reset_prefix_cache()

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in input order.

        Every prompt is validated before any runs, so a bad one raises without side effects.
        """
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts)
        ):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            return []
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        engine = self.engine
        ids: list[str] = []
        try:
            for prompt, p in zip(prompts, params):
                ids.append(engine.add_request(prompt, p))
        except Exception:
            for rid in ids:
                engine.abort_request(rid)
            raise
        order = {rid: i for i, rid in enumerate(ids)}
        results: list[RequestOutput | None] = [None] * len(ids)
        bar = tqdm(total=len(ids), desc="Generating", disable=not use_tqdm or len(ids) == 1)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id in order:
                    results[order[out.request_id]] = out
                    bar.update(1)
        bar.close()
        return [r for r in results if r is not None]
