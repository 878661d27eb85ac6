"""m7 end to end: GPTQ checkpoints (every supported variant) load and give the greedy tokens of a
transformers model whose linear weights are the checkpoint's dequantized weights (float32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint
from safetensors.torch import load_file, save_file

from folovllm import EngineConfig, SamplingParams
from folovllm.engine.llm_engine import LLMEngine
from folovllm.model_executor.layers.quantization.utils.gptq_pack import (
    ZERO_OFFSET,
    dequantize,
    pack_cols,
    pack_rows,
)

# Every linear weight is a multiple of 128 wide here, so group size 128 fits too.
SHAPES = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [[5, 17, 42, 99, 3], [7, 7, 8, 200, 31, 64, 2, 9, 11]]
NEW_TOKENS = 16


def rtn_gptq_tensors(w: torch.Tensor, group_size: int, sym: bool, act_order: bool, fmt: str,
                     gen: torch.Generator) -> dict[str, torch.Tensor]:  # fmt: skip
    """Round-to-nearest 4-bit codes in the GPTQ layout (act-order: a random channel order)."""
    n, k = w.shape
    wt = w.t().float()  # [K, N]
    gs = k if group_size == -1 else group_size
    order = torch.randperm(k, generator=gen) if act_order else torch.arange(k)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // gs).int()
    scales, zeros = torch.empty(k // gs, n), torch.empty(k // gs, n, dtype=torch.int64)
    q = torch.empty(k, n, dtype=torch.int64)
    for g in range(k // gs):
        rows = order[g * gs : (g + 1) * gs]
        block = wt[rows]
        lo, hi = block.min(0).values.clamp(max=0), block.max(0).values.clamp(min=0)
        if sym:
            hi = torch.maximum(-lo, hi)
            s, z = (2 * hi / 15).clamp(min=1e-8), torch.full((n,), 8)
        else:
            s = ((hi - lo) / 15).clamp(min=1e-8)
            z = torch.round(-lo / s).long().clamp(0, 15)
        s = s.half()  # stored precision; the codes are rounded against it
        scales[g], zeros[g] = s.float(), z
        q[rows] = torch.clamp(torch.round(block / s.float()) + z, 0, 15).long()
    return {
        "qweight": pack_rows(q),
        "qzeros": pack_cols(zeros - ZERO_OFFSET[fmt]),
        "scales": scales.half(),
        "g_idx": g_idx,
    }


def write_gptq_checkpoint(src: Path, dst: Path, group_size: int, sym: bool, desc_act: bool,
                          fmt: str = "gptq", seed: int = 0) -> Path:  # fmt: skip
    """A GPTQ-format checkpoint of ``src`` (rounded, not GPTQ-optimized: the format is the test)."""
    dst.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, t in load_file(str(src / "model.safetensors")).items():
        base, leaf = name.rsplit(".", 1)
        if leaf == "weight" and base.split(".")[-1] in LINEARS:
            # Layers that read the same input (q/k/v, gate/up) share one Hessian in GPTQ, so
            # act-order gives them the same channel order: seed the order by the input.
            shared = base.replace("k_proj", "q_proj").replace("v_proj", "q_proj")
            shared = shared.replace("up_proj", "gate_proj")
            gen = torch.Generator().manual_seed(seed + sum(map(ord, shared)))
            for key, v in rtn_gptq_tensors(t, group_size, sym, desc_act, fmt, gen).items():
                out[f"{base}.{key}"] = v
        else:
            out[name] = t
    save_file(out, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = dict(quant_method="gptq", bits=4, group_size=group_size,
                                      desc_act=desc_act, sym=sym, checkpoint_format=fmt)  # fmt: skip
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "generation_config.json":
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def dequantized_hf_model(ckpt: Path, fmt: str):
    """transformers' model with every linear weight = the checkpoint's dequantized weight."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ckpt)
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    tensors = load_file(str(ckpt / "model.safetensors"))
    state = {}
    for name, t in tensors.items():
        base, leaf = name.rsplit(".", 1)
        if leaf == "qweight":
            w = dequantize(t, tensors[base + ".qzeros"], tensors[base + ".scales"],
                           tensors[base + ".g_idx"], ZERO_OFFSET[fmt], torch.float32)  # fmt: skip
            state[base + ".weight"] = w.t().contiguous()
        elif leaf not in ("qzeros", "scales", "g_idx"):
            state[name] = t.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def greedy_tokens(engine: LLMEngine) -> list[list[int]]:
    """Every prompt of PROMPTS run to NEW_TOKENS greedy tokens (ignore_eos), in prompt order."""
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in PROMPTS]
    outs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outs[out.request_id] = out.token_ids
    return [outs[i] for i in ids]


def hf_greedy(model, prompt: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long), do_sample=False, max_new_tokens=NEW_TOKENS,
                             pad_token_id=0, eos_token_id=None)  # fmt: skip
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> dict[str, Path]:
    return {k: make_checkpoint(tmp_path_factory.mktemp(k), k, **SHAPES) for k in ("qwen2", "qwen3")}


VARIANTS = [  # (kind, group_size, sym, desc_act, checkpoint_format)
    ("qwen3", 128, True, False, "gptq"),
    ("qwen3", 32, False, True, "gptq"),
    ("qwen3", -1, True, True, "gptq_v2"),
    ("qwen2", 64, False, False, "gptq_v2"),
    ("qwen2", 32, True, True, "gptq"),
]


@pytest.mark.parametrize("kind,group_size,sym,desc_act,fmt", VARIANTS)
def test_gptq_checkpoint_matches_dequantized_reference(dense, tmp_path, kind, group_size, sym,
                                                       desc_act, fmt):  # fmt: skip
    ckpt = write_gptq_checkpoint(dense[kind], tmp_path / "q", group_size, sym, desc_act, fmt)
    engine = LLMEngine(EngineConfig(model=str(ckpt), device="cpu", dtype="float32"))
    layer = engine.runner.model.model.layers[0].self_attn.qkv_proj
    assert layer.qweight.dtype == torch.int32 and layer.scales.dtype == torch.float16
    assert (layer.perm is not None) == (desc_act and group_size != -1)  # one group: no order
    ref = dequantized_hf_model(ckpt, fmt)
    assert greedy_tokens(engine) == [hf_greedy(ref, p) for p in PROMPTS]


def test_both_kernel_layouts_give_the_same_tokens(dense, tmp_path, monkeypatch):
    """FOLOVLLM_GPTQ_KERNEL: "format" keeps qweight [K/8, N] (rows sorted for act-order), "nk"
    repacks it to [N, K/8]; the same tokens either way. Anything else is refused."""
    ckpt = write_gptq_checkpoint(dense["qwen3"], tmp_path / "q", 32, False, True)
    tokens, shapes = {}, {}
    for layout in ("format", "nk"):
        monkeypatch.setenv("FOLOVLLM_GPTQ_KERNEL", layout)
        engine = LLMEngine(EngineConfig(model=str(ckpt), device="cpu", dtype="float32"))
        layer = engine.runner.model.model.layers[0].mlp.down_proj
        shapes[layout] = tuple(layer.qweight.shape)
        tokens[layout] = greedy_tokens(engine)
    k, n = layer.input_size, layer.output_size
    assert shapes == {"format": (k // 8, n), "nk": (n, -(-k // 32) * 4)}
    assert tokens["format"] == tokens["nk"]
    monkeypatch.setenv("FOLOVLLM_GPTQ_KERNEL", "marlin")
    with pytest.raises(ValueError, match="FOLOVLLM_GPTQ_KERNEL must be one of"):
        LLMEngine(EngineConfig(model=str(ckpt), device="cpu", dtype="float32"))


def test_quantized_differs_from_dense(dense, tmp_path):
    """The test above can fail: the quantized model's logits are not the dense model's."""
    ckpt = write_gptq_checkpoint(dense["qwen3"], tmp_path / "q", 128, True, False)
    ref = dequantized_hf_model(ckpt, "gptq")
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(dense["qwen3"], dtype=torch.float32).eval()
    x = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        diff = (ref(x).logits - full(x).logits).abs().max().item()
    assert diff > 1e-3


def test_dummy_gptq_weights_generate(dense):
    engine = LLMEngine(EngineConfig(model=str(dense["qwen3"]), device="cpu", dtype="float32",
                                    load_format="dummy", quantization="gptq"))  # fmt: skip
    assert engine.runner.model.model.layers[0].mlp.down_proj.qweight.dtype == torch.int32
    engine.add_request(PROMPTS[0], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()


def _edit(ckpt: Path, tensors=None, quant=None) -> Path:
    if tensors is not None:
        state = load_file(str(ckpt / "model.safetensors"))
        tensors(state)
        save_file(state, str(ckpt / "model.safetensors"))
    if quant is not None:
        cfg = json.loads((ckpt / "config.json").read_text())
        quant(cfg)
        (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


QKV0 = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "tensors,quant,message",
    [
        (None, lambda c: c["quantization_config"].update(bits=3), "bits=3 is not supported"),
        (None, lambda c: c["quantization_config"].update(group_size=100), "group_size=100"),
        (None, lambda c: c["quantization_config"].update(quant_method="awq"), "quant_method='awq'"),
        (
            None,
            lambda c: c["quantization_config"].update(checkpoint_format="marlin"),
            "checkpoint_format='marlin'",
        ),  # fmt: skip
        (lambda s: s.pop(QKV0 + ".qweight"), None, "missing weights"),
        (
            lambda s: s.update({QKV0 + ".scales": s[QKV0 + ".scales"][:, :8]}),
            None,
            "shape mismatch",
        ),
        (lambda s: s.update({QKV0 + ".qweight": s[QKV0 + ".qweight"].float()}), None, "dtype"),
    ],
)
def test_bad_checkpoints_are_refused(dense, tmp_path, tensors, quant, message):
    ckpt = _edit(write_gptq_checkpoint(dense["qwen3"], tmp_path / "q", 128, True, False), tensors,
                 quant)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        LLMEngine(EngineConfig(model=str(ckpt), device="cpu", dtype="float32"))


def test_gptq_config_without_tensors_is_refused(dense, tmp_path):
    ckpt = tmp_path / "q"
    ckpt.mkdir()
    for f in dense["qwen3"].iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    _edit(ckpt, quant=lambda c: c.update(quantization_config=dict(quant_method="gptq", bits=4,
                                                                  group_size=128)))  # fmt: skip
    with pytest.raises(ValueError, match="not quantized, but the checkpoint's config says gptq"):
        LLMEngine(EngineConfig(model=str(ckpt), device="cpu", dtype="float32"))


def test_requested_quantization_must_match_the_checkpoint(dense):
    with pytest.raises(ValueError, match="has no quantization_config"):
        LLMEngine(EngineConfig(model=str(dense["qwen3"]), device="cpu", quantization="gptq"))
    with pytest.raises(ValueError, match="quantization must be None"):
        EngineConfig(model=str(dense["qwen3"]), quantization="awq")


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["format", "nk"])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_on_the_gpu_with_graphs_matches_the_reference(dense, tmp_path, desc_act, kernel,
                                                           monkeypatch):  # fmt: skip
    """CUDA: the Triton GPTQ kernels inside decode and mixed-step CUDA graphs, and eagerly, give
    the float32 dequantized reference's greedy tokens (float32 model: IEEE dots)."""
    monkeypatch.setenv("FOLOVLLM_GPTQ_KERNEL", kernel)
    ckpt = write_gptq_checkpoint(dense["qwen3"], tmp_path / "q", 32, False, desc_act)
    want = [hf_greedy(dequantized_hf_model(ckpt, "gptq"), p) for p in PROMPTS]
    for opts in ({}, {"enforce_eager": True}):
        engine = LLMEngine(EngineConfig(model=str(ckpt), device="cuda", dtype="float32",
                                        kv_cache_memory_gb=0.05, **opts))  # fmt: skip
        assert greedy_tokens(engine) == want, opts
        if not opts:
            assert engine.runner.mixed_graph_runner.num_replays > 0
