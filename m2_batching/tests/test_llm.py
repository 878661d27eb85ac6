import pytest

from folovllm import LLM, EngineConfig, SamplingParams
from folovllm.__main__ import main


@pytest.fixture(scope="module")
def llm(tiny_qwen3):
    return LLM(model=str(tiny_qwen3), engine_config=EngineConfig(device="cpu"), log_level="INFO")


def test_prompt_forms_and_order(llm):
    p = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    (single,) = llm.generate("The for statement", p)
    assert single.prompt == "The for statement" and len(single.token_ids) == 5
    outs = llm.generate(["A", "The for statement", "B"], p, use_tqdm=False)
    assert [o.prompt for o in outs] == ["A", "The for statement", "B"]
    assert outs[1].token_ids == single.token_ids and outs[1].text == single.text
    ids = llm.tokenizer("The for statement")["input_ids"]
    (from_ids,) = llm.generate([ids], p)
    assert from_ids.prompt is None and from_ids.token_ids == single.token_ids
    (flat_ids,) = llm.generate(ids, p)
    assert flat_ids.token_ids == single.token_ids


def test_one_sampling_params_per_prompt(llm):
    outs = llm.generate(
        ["x", "y"],
        [
            SamplingParams(temperature=0, max_tokens=2, ignore_eos=True),
            SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
        ],
        use_tqdm=False,
    )
    assert [len(o.token_ids) for o in outs] == [2, 6]
    with pytest.raises(ValueError, match="got 1 sampling_params for 2 prompts"):
        llm.generate(["x", "y"], [SamplingParams()])


def test_a_bad_prompt_raises_before_anything_runs(llm):
    with pytest.raises(ValueError, match="prompt must not be empty"):
        llm.generate(["fine", ""], SamplingParams(max_tokens=2))
    assert not llm.engine.has_unfinished_requests() and not llm.engine.requests


def test_options_in_both_places_are_refused(tiny_qwen3):
    with pytest.raises(ValueError, match="either in engine_config or as keywords"):
        LLM(model=str(tiny_qwen3), engine_config=EngineConfig(), dtype="fp32")
    with pytest.raises(ValueError, match="quantization='gptq' needs milestone m7_gptq"):
        LLM(model=str(tiny_qwen3), quantization="gptq")


def test_cli_generate(tiny_qwen3, capsys):
    argv = ["generate", "--model", str(tiny_qwen3), "--prompt", "The for", "--max-tokens", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "The for" in out and "4 tokens" in out
