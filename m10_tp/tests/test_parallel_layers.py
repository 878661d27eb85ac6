"""m10 parallel layers in one process, no process group: build every rank's shard of a layer from
the same full weights, run each shard, and the concatenation (column-parallel) or the sum
(row-parallel) equals the unsplit layer. Also the checks that refuse a split before any process
starts (EngineConfig, verify_tensor_parallel, GPTQ act-order)."""

from __future__ import annotations

import json
import multiprocessing
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from folovllm import EngineConfig
from folovllm.config import ModelArchConfig, verify_tensor_parallel
from folovllm.distributed import parallel_state
from folovllm.model_executor.layers import vocab_parallel_embedding as vpe
from folovllm.model_executor.layers.linear import (
    ColumnParallelLinear,
    Linear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from folovllm.model_executor.layers.quantization.gptq import GPTQConfig

FIXTURES = Path(__file__).parent / "fixtures" / "gptqmodel"
TP = 2


@contextmanager
def as_rank(rank: int, size: int = TP):
    """Layers built inside see this rank of ``size`` ranks (they read it when constructed)."""
    parallel_state._TP_RANK, parallel_state._TP_SIZE = rank, size
    try:
        yield
    finally:
        parallel_state._TP_RANK, parallel_state._TP_SIZE = 0, 1


def shards(cls, *args, **kwargs) -> list:
    out = []
    for rank in range(TP):
        with as_rank(rank):
            out.append(cls(*args, **kwargs))
    return out


def test_column_parallel_outputs_concatenate_to_the_full_output():
    gen = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(12, 8, generator=gen), torch.randn(12, generator=gen), torch.randn(5, 8)
    full = Linear(8, 12, bias=True)
    full.weight_loader(full.weight, w)
    full.weight_loader(full.bias, b)
    parts = shards(ColumnParallelLinear, 8, 12, bias=True)
    for layer in parts:
        assert layer.weight.shape == (6, 8)
        layer.weight_loader(layer.weight, w)
        layer.weight_loader(layer.bias, b)
    # The same products; only the matmul's blocking differs (rounding-level differences).
    torch.testing.assert_close(torch.cat([p(x) for p in parts], -1), full(x))


def test_row_parallel_partial_sums_add_up_to_the_full_output():
    gen = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(6, 16, generator=gen), torch.randn(6, generator=gen), torch.randn(3, 16)
    full = Linear(16, 6, bias=True)
    full.weight_loader(full.weight, w)
    full.weight_loader(full.bias, b)
    parts = shards(RowParallelLinear, 16, 6, bias=True, reduce_results=False)
    outs = []
    for rank, layer in enumerate(parts):
        assert layer.weight.shape == (6, 8)
        layer.weight_loader(layer.weight, w)
        layer.weight_loader(layer.bias, b)
        outs.append(layer(x[:, rank * 8 : (rank + 1) * 8]))  # each rank's slice of the input
    torch.testing.assert_close(sum(outs), full(x))  # the bias once: only rank 0 adds it


def test_qkv_and_merged_shards_hold_each_ranks_heads_and_rows():
    gen = torch.Generator().manual_seed(2)
    hd, heads, kv, hidden = 4, 4, 2, 8
    q, k, v = (torch.randn(n * hd, hidden, generator=gen) for n in (heads, kv, kv))
    parts = shards(QKVParallelLinear, hidden, hd, heads, kv, bias=False)
    for rank, layer in enumerate(parts):
        assert (layer.num_heads, layer.num_kv_heads) == (2, 1)
        for sid, t in zip("qkv", (q, k, v)):
            layer.weight_loader(layer.weight, t, sid)
        mine = [t[rank * n * hd : (rank + 1) * n * hd] for t, n in ((q, 2), (k, 1), (v, 1))]
        torch.testing.assert_close(layer.weight, torch.cat(mine))
    gate, up = torch.randn(10, hidden, generator=gen), torch.randn(10, hidden, generator=gen)
    for rank, layer in enumerate(shards(MergedColumnParallelLinear, hidden, [10, 10])):
        layer.weight_loader(layer.weight, gate, 0)
        layer.weight_loader(layer.weight, up, 1)
        part = slice(rank * 5, (rank + 1) * 5)
        torch.testing.assert_close(layer.weight, torch.cat([gate[part], up[part]]))


def test_vocab_parallel_embedding_pads_the_vocabulary_and_sums_to_the_lookup(monkeypatch):
    monkeypatch.setattr(vpe, "tensor_model_parallel_all_reduce", lambda t: t)  # summed below
    table, ids = torch.randn(7, 4), torch.tensor([0, 3, 4, 6, 2])  # 7 rows: 4 + 3 (+1 padding)
    parts = shards(vpe.VocabParallelEmbedding, 7, 4)
    for layer in parts:
        layer.weight_loader(layer.weight, table)
    assert parts[1].weight.shape == (4, 4) and not parts[1].weight[3].any()
    torch.testing.assert_close(sum(p(ids) for p in parts), table[ids])
    hidden = torch.randn(2, 4)
    slices = [torch.nn.functional.linear(hidden, p.weight) for p in parts]
    torch.testing.assert_close(torch.cat(slices, -1)[:, :7], hidden @ table.t())  # the gather


def test_each_rank_reads_only_its_slice_from_a_lazy_safetensors_tensor(tmp_path):
    w = torch.randn(8, 6)
    save_file({"w": w}, str(tmp_path / "w.safetensors"))
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        for rank, layer in enumerate(shards(RowParallelLinear, 6, 8)):
            layer.weight_loader(layer.weight, f.get_slice("w"))
            torch.testing.assert_close(layer.weight, w[:, rank * 3 : (rank + 1) * 3])


def gptq_down_proj(name: str) -> tuple[GPTQConfig, dict[str, torch.Tensor], int, int]:
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    tensors = load_file(str(FIXTURES / name / "model.safetensors"))
    prefix = "model.layers.0.mlp.down_proj."
    parts = {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)}
    qc = GPTQConfig.from_config(cfg["quantization_config"])
    return qc, parts, cfg["intermediate_size"], cfg["hidden_size"]


def load_gptq(layer, parts) -> None:
    for pname, t in parts.items():
        layer.weight_loader(getattr(layer, pname), t)
    layer.prefix = "down_proj"
    layer.quant_method.process_weights_after_loading(layer)


@pytest.mark.parametrize("name", ["w4_g64_asym_v1", "w4_gm1_sym_v1"])
def test_gptq_row_parallel_splits_on_group_boundaries(name):
    qc, parts, k, n = gptq_down_proj(name)
    full = Linear(k, n, quant_config=qc)
    load_gptq(full, parts)
    x = torch.randn(3, k, dtype=torch.float32)
    outs = []
    for rank, layer in enumerate(
        shards(RowParallelLinear, k, n, quant_config=qc, reduce_results=False)
    ):
        load_gptq(layer, parts)
        outs.append(layer(x[:, rank * k // TP : (rank + 1) * k // TP]))
    torch.testing.assert_close(sum(outs), full(x), rtol=1e-5, atol=1e-5)


def test_gptq_act_order_row_parallel_is_refused_at_load():
    qc, parts, k, n = gptq_down_proj("w4_g32_sym_descact_v1")
    with as_rank(1):
        layer = RowParallelLinear(k, n, quant_config=qc)
    with pytest.raises(ValueError, match="act-order .*tensor-parallel rank 1"):
        layer.weight_loader(layer.g_idx, parts["g_idx"])


def arch(**kw) -> ModelArchConfig:
    base = dict(
        architecture="Qwen3ForCausalLM", model_type="qwen3", vocab_size=385, hidden_size=64,
        intermediate_size=96, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
        head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4, max_position_embeddings=64,
        tie_word_embeddings=True, attention_bias=False, qk_norm=True,
    )  # fmt: skip
    return ModelArchConfig(**{**base, **kw})


@pytest.mark.parametrize(
    "tp,kw,message",
    [
        (3, {}, r"tensor_parallel_size=3 does not divide num_attention_heads=8; .* in \[1, 2, 4\]"),
        (8, {}, "larger than num_key_value_heads=4: .*not supported"),
        (4, {"intermediate_size": 98}, r"does not divide intermediate_size=98; .* in \[1, 2\]"),
    ],
)
def test_a_split_that_does_not_divide_names_the_field_and_the_allowed_sizes(tp, kw, message):
    verify_tensor_parallel(arch(), 4)  # 385 words of vocabulary: padded, never a problem
    with pytest.raises(ValueError, match=message):
        verify_tensor_parallel(arch(**kw), tp)


def test_gptq_splits_need_whole_groups_and_no_act_order():
    with pytest.raises(ValueError, match="whole groups of 64"):
        verify_tensor_parallel(arch(), 2, GPTQConfig(group_size=64))  # 96 / 2 = 48 channels
    with pytest.raises(ValueError, match="act-order"):
        verify_tensor_parallel(arch(intermediate_size=128), 2, GPTQConfig(32, desc_act=True))
    verify_tensor_parallel(arch(intermediate_size=128), 2, GPTQConfig(group_size=32))


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_tensor_parallel_size_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="tensor_parallel_size must be an integer >= 1"):
        EngineConfig(tensor_parallel_size=value)
    assert not multiprocessing.active_children()
