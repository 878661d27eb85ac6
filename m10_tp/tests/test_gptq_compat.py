"""m7: checkpoints written by GPTQModel 7.7.0 (tests/fixtures/gptqmodel, see its README) load here
and give GPTQModel's own results: every variant of bits 4 x group size 32/64/128/-1 x sym/asym x
desc_act on/off x checkpoint_format gptq/gptq_v2 that the fixtures hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from folovllm import EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine

FIXTURES = Path(__file__).parent / "fixtures" / "gptqmodel"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "expected.json").is_file())


def test_every_variant_is_covered():
    cfgs = [json.loads((FIXTURES / n / "config.json").read_text())["quantization_config"]
            for n in NAMES]  # fmt: skip
    assert {c["group_size"] for c in cfgs} == {32, 64, 128, -1}
    assert {c["sym"] for c in cfgs} == {True, False} and {c["desc_act"] for c in cfgs} == {
        True, False,
    }  # fmt: skip
    assert {c.get("checkpoint_format", c.get("format")) for c in cfgs} == {"gptq", "gptq_v2"}


@pytest.mark.parametrize("name", NAMES)
def test_gptqmodel_checkpoint_gives_gptqmodel_results(name):
    exp = json.loads((FIXTURES / name / "expected.json").read_text())
    engine = LLMEngine(
        EngineConfig(model=str(FIXTURES / name), device="cpu", dtype="float32"), keep_logits=True
    )
    assert engine.model_config.quant_config is not None
    params = SamplingParams(temperature=0, max_tokens=exp["max_new_tokens"], ignore_eos=True)
    ids = [engine.add_request(p, params) for p in exp["prompts"]]
    outs, first_logits = {}, None
    while engine.has_unfinished_requests():
        finished = engine.step()
        if first_logits is None:  # the first step: both prompts' last positions
            first_logits = engine.last_runner_output.logits[0, :16]
        for out in finished:
            outs[out.request_id] = out.token_ids
    tokens = [outs[i] for i in ids]
    # The float32 dequantized reference (same formula, another implementation): exact tokens,
    # logits to float32 rounding.
    ref = exp["runners"]["fp32_dequant_reference"]
    assert tokens == ref["greedy_next8"]
    torch.testing.assert_close(first_logits, torch.tensor(ref["last_logits_first16"]),
                               atol=1e-4, rtol=0)  # fmt: skip
    # GPTQModel's own inference (its torch kernel, float16): the same tokens, logits within fp16.
    assert tokens == exp["greedy_next8"]
    torch.testing.assert_close(first_logits, torch.tensor(exp["last_logits_first16"]),
                               atol=3e-3, rtol=0)  # fmt: skip


NEAR_TIE = 0.05  # float16 vs float32: a top-2 logit gap below this may flip


def test_our_checkpoint_loads_in_transformers_with_gptqmodel(tmp_path):
    """A checkpoint our quantizer writes loads in transformers (which needs GPTQModel for GPTQ)
    and gives our engine's greedy tokens. Skips where GPTQModel is not installed (CI); see the
    m7 note for the run that had it."""
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is None:
        pytest.skip("GPTQModel is not installed: `pip install gptqmodel` to run this check")
    from transformers import AutoModelForCausalLM, GPTQConfig

    from folovllm.quantize import quantize_model

    out = tmp_path / "folo-tiny-gptq"
    quantize_model("folo-tiny", out, group_size=128, nsamples=16, seqlen=128, verbose=False)
    hf = AutoModelForCausalLM.from_pretrained(
        out, device_map="cpu", dtype=torch.float16,
        quantization_config=GPTQConfig(bits=4, backend="gptq_torch"),
    ).eval()  # fmt: skip
    engine = LLMEngine(EngineConfig(model=str(out), device="cpu", dtype="float32"))
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = ["The for statement", "A list comprehension", "The import system"]
    for prompt in prompts:
        ids = engine.tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            res = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16,
                              output_logits=True, return_dict_in_generate=True,
                              eos_token_id=None, pad_token_id=0)  # fmt: skip
        theirs = res.sequences[0, len(ids) :].tolist()
        engine.add_request(ids, params)
        ours = None
        while engine.has_unfinished_requests():
            for o in engine.step():
                ours = o.token_ids
        if ours != theirs:  # allowed only where transformers itself nearly tied
            i = next(k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b)
            top2 = res.logits[i][0].float().topk(2).values
            gap = float(top2[0] - top2[1])
            assert gap < NEAR_TIE, f"{prompt!r}: token {i} differs, top-2 gap {gap:.3f}"
        print(f"{prompt!r}: {sum(a == b for a, b in zip(ours, theirs))}/16 tokens agree")
