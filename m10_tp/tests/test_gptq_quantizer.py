"""The offline quantizer: GPTQ vs round-to-nearest, g_idx, the written checkpoint, folo-tiny end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from folovllm.__main__ import main as cli_main
from folovllm.model_executor.layers.quantization.utils.gptq_pack import (
    default_g_idx,
    dequantize,
    pack_cols,
    unpack_cols,
)
from folovllm.model_executor.model_loader import REPO_MODELS_DIR
from folovllm.quantize import GPTQ, gptq_quantize, quantize_model, rtn_quantize
from folovllm.quantize.calibration import EOS_TEXT, HELDOUT_FILE, split_heldout
from folovllm.quantize.perplexity import evaluate
from folovllm.quantize.reference import hf_model_from_gptq_checkpoint
from folovllm.quantize.runner import SUBLAYERS

K, N, ROWS = 256, 64, 2048
FOLO_TINY = REPO_MODELS_DIR / "folo-tiny"


@pytest.fixture(scope="module")
def layer():
    """A weight and correlated inputs of uneven scale (X = Z A, per-channel gains)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(K, K, generator=g) / K**0.5
    gains = torch.exp(torch.randn(K, generator=g))
    x = (torch.randn(ROWS, K, generator=g) @ mix) * gains
    w = 0.1 * torch.randn(N, K, generator=g)
    acc = GPTQ(K)
    for chunk in x.split(500):  # uneven batches: the running average must not care
        acc.add_batch(chunk)
    return w, x, acc


_CACHE: dict = {}


def _gptq(layer, group_size, sym, desc_act):
    """One GPTQ run per setting, shared by the tests that look at it."""
    key = (group_size, sym, desc_act)
    if key not in _CACHE:
        _CACHE[key] = layer[2].quantize(layer[0], group_size=group_size, sym=sym, desc_act=desc_act)
    return _CACHE[key]


def _err(x, w, approx) -> float:
    return float((x @ (approx - w).t()).norm() / (x @ w.t()).norm())


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(layer, sym, group_size, desc_act):
    w, x, _ = layer
    rtn = rtn_quantize(w, group_size, sym)
    gptq = _gptq(layer, group_size, sym, desc_act)
    assert _err(x, w, gptq.weight) < 0.9 * _err(x, w, rtn.weight)


def test_hessian_is_the_input_second_moment(layer):
    _, x, acc = layer
    exact = 2 * x.double().t() @ x.double() / ROWS
    atol = 1e-5 * float(exact.diagonal().mean())  # float32 products, float64 sums
    torch.testing.assert_close(acc.H, exact, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_identity_hessian_gives_rtn(group_size):
    """Without correlations there is nothing to compensate: GPTQ is round-to-nearest."""
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    gptq = gptq_quantize(w, torch.eye(K), group_size=group_size)
    rtn = rtn_quantize(w, group_size)
    assert torch.equal(gptq.q, rtn.q) and torch.equal(gptq.weight, rtn.weight)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("desc_act", [False, True])
def test_g_idx_and_packed_round_trip(layer, sym, group_size, desc_act):
    acc = layer[2]
    res = _gptq(layer, group_size, sym, desc_act)
    gs = K if group_size == -1 else group_size
    assert res.g_idx.dtype == torch.int32 and res.q.shape == (K, N)
    assert res.scales.shape == res.zeros.shape == (K // gs, N) and res.scales.dtype == torch.float16
    if desc_act:
        assert torch.bincount(res.g_idx).tolist() == [gs] * (K // gs)
        # groups are formed in act-order: the channel with the largest diag(H) opens group 0
        assert int(res.g_idx[int(acc.H.diagonal().argmax())]) == 0
    else:
        assert torch.equal(res.g_idx, default_g_idx(K, group_size))
    if sym:
        assert bool((res.zeros == 8).all())
    else:
        assert int(res.zeros.min()) >= 1  # format "gptq" stores zero - 1: it must stay >= 0
    t = res.pack("gptq")
    assert torch.equal(
        dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 1), res.weight.t().half()
    )
    deq = dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 1, torch.float32)
    assert torch.equal(deq, res.weight.t())


def test_dead_inputs_get_zero_weight():
    w = torch.randn(16, 64)
    x = torch.randn(128, 64)
    x[:, 5] = 0
    acc = GPTQ(64)
    acc.add_batch(x)
    res = acc.quantize(w, group_size=32)
    assert bool((res.weight[:, 5] == 0).all()) and torch.isfinite(res.weight).all()


def test_calibration_and_evaluation_text_are_disjoint():
    text = HELDOUT_FILE.read_text(encoding="utf-8")
    calib, evaluation = split_heldout(text)
    assert calib and evaluation and calib + evaluation == text
    calib_docs, eval_docs = (
        set(calib.split(EOS_TEXT)) - {""},
        set(evaluation.split(EOS_TEXT)) - {""},
    )
    assert not calib_docs & eval_docs
    assert 0.4 < len(calib) / len(text) < 0.6


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gptq")
    summary = quantize_model(
        tiny_model, out, group_size=32, desc_act=True, nsamples=4, seqlen=64, verbose=False
    )
    return tiny_model, out, summary


def test_checkpoint_tensors(quantized):
    src, out, summary = quantized
    cfg = json.loads((src / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        ckpt = {k: f.get_tensor(k) for k in f.keys()}
    linears = [
        f"model.layers.{i}.{n}"
        for i in range(cfg["num_hidden_layers"])
        for g in SUBLAYERS
        for n in g
    ]
    for p in linears:
        k_in, n_out = original[f"{p}.weight"].shape[1], original[f"{p}.weight"].shape[0]
        assert f"{p}.weight" not in ckpt
        assert ckpt[f"{p}.qweight"].dtype == torch.int32 and ckpt[f"{p}.qweight"].shape == (
            k_in // 8,
            n_out,
        )
        assert ckpt[f"{p}.qzeros"].dtype == torch.int32 and ckpt[f"{p}.qzeros"].shape == (
            k_in // 32,
            n_out // 8,
        )
        assert ckpt[f"{p}.scales"].dtype == torch.float16 and ckpt[f"{p}.scales"].shape == (
            k_in // 32,
            n_out,
        )
        assert ckpt[f"{p}.g_idx"].dtype == torch.int32 and ckpt[f"{p}.g_idx"].shape == (k_in,)
        assert torch.bincount(ckpt[f"{p}.g_idx"]).tolist() == [32] * (k_in // 32)
        # v1 ("gptq") stores zero - 1: sym zeros of 8 are the nibbles 7, i.e. 0x77777777
        assert bool((ckpt[f"{p}.qzeros"] == 0x77777777).all())
        if f"{p}.bias" in original:  # Qwen2's q/k/v
            assert ckpt[f"{p}.bias"].dtype == torch.float16
            torch.testing.assert_close(
                ckpt[f"{p}.bias"].float(), original[f"{p}.bias"], rtol=1e-3, atol=1e-3
            )
    others = {k for k in original if k.rpartition(".")[0] not in linears}
    assert others and all(torch.equal(ckpt[k], original[k]) for k in others)
    assert {hidden, inter} == {original[f"{p}.weight"].shape[1] for p in linears}
    assert len(summary["layers"]) == cfg["num_hidden_layers"]


def test_checkpoint_config(quantized):
    src, out, _ = quantized
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg.pop("quantization_config")
    assert cfg == json.loads((src / "config.json").read_text())
    assert qc == json.loads((out / "quantize_config.json").read_text())
    expected = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 32,
        "desc_act": True,
        "sym": True,
        "damp_percent": 0.01,
        "checkpoint_format": "gptq",
        "static_groups": False,
        "true_sequential": True,
    }
    assert {k: qc[k] for k in expected} == expected
    assert qc["meta"]["quantizer"] == "folovllm" and qc["meta"]["method"] == "gptq"
    assert (out / "tokenizer.json").is_file()


def test_reference_model_and_v2_format(quantized, tmp_path):
    from safetensors.torch import load_file, save_file

    src, out, _ = quantized
    ref = hf_model_from_gptq_checkpoint(out)
    t = load_file(str(out / "model.safetensors"))
    p = "model.layers.0.mlp.down_proj"
    w = dequantize(
        t[f"{p}.qweight"], t[f"{p}.qzeros"], t[f"{p}.scales"], t[f"{p}.g_idx"], 1, torch.float32
    )
    assert torch.equal(ref.get_submodule(p).weight.data, w.t())
    # the same checkpoint in format gptq_v2 (real zeros stored) loads to the same weights
    for k in [k for k in t if k.endswith(".qzeros")]:
        t[k] = pack_cols(unpack_cols(t[k]) + 1)
    save_file(t, str(tmp_path / "model.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ref2 = hf_model_from_gptq_checkpoint(tmp_path)
    for (name, a), (_, b) in zip(ref.state_dict().items(), ref2.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not (FOLO_TINY / "model.safetensors").is_file(), reason="folo-tiny missing")
def test_folo_tiny_gptq_beats_rtn(tmp_path):
    """Measured here (8 x 256 calibration tokens, group 64): layer errors about half of RTN's;
    eval perplexity bf16 54.92, RTN 55.75, GPTQ 54.89 (RTN costs only ~1.5% on this model)."""
    kw = dict(group_size=64, nsamples=8, seqlen=256, verbose=False)
    gptq = quantize_model("folo-tiny", tmp_path / "gptq", **kw)
    rtn = quantize_model("folo-tiny", tmp_path / "rtn", method="rtn", **kw)
    for g, r in zip(gptq["layers"], rtn["layers"]):
        assert g["mean_error"] < 0.8 * r["mean_error"]
        assert g["output_error"] < 0.8 * r["output_error"]
    base = evaluate("folo-tiny")["perplexity"]
    ppl_gptq = evaluate(tmp_path / "gptq")["perplexity"]
    ppl_rtn = evaluate(tmp_path / "rtn")["perplexity"]
    assert ppl_gptq < 0.995 * ppl_rtn
    assert 0.95 * base < ppl_gptq < 1.1 * base and ppl_rtn < 1.1 * base
    # Reload our checkpoint in the engine and generate: the tokens of its float32 reference model.
    from folovllm import EngineConfig, SamplingParams
    from folovllm.engine.llm_engine import LLMEngine
    from folovllm.quantize.reference import hf_model_from_gptq_checkpoint

    engine = LLMEngine(EngineConfig(model=str(tmp_path / "gptq"), device="cpu", dtype="float32"))
    assert engine.model_config.quant_config.group_size == 64
    ref = hf_model_from_gptq_checkpoint(tmp_path / "gptq")
    for prompt in ("The for statement", "A list comprehension"):
        ids = engine.tokenizer(prompt)["input_ids"]
        engine.add_request(ids, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
        ours = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                ours = out.token_ids
        with torch.no_grad():
            want = ref.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                                eos_token_id=None, pad_token_id=0)[0, len(ids) :].tolist()  # fmt: skip
        assert ours == want, prompt


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bits=3), "bits"),
        (dict(group_size=100), "group_size"),
        (dict(method="awq"), "method"),
        (dict(method="rtn", desc_act=True), "desc_act"),
        (dict(damp=0.0), "damp"),
    ],
)
def test_bad_arguments(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        quantize_model("folo-tiny", tmp_path, **kwargs)


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        quantize_model(tmp_path / "nope", tmp_path / "out")
    assert cli_main(["quantize", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert cli_main(["quantize", "--out", str(tmp_path), "--bits", "3"]) == 2


def test_group_size_must_divide_features():
    with pytest.raises(ValueError, match="group_size"):
        rtn_quantize(torch.randn(8, 96), 64)
