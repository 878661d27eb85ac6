"""benchmarks/peer_transformers.py (transformers' continuous batching, the peer baseline) on a tiny
random Qwen3 on the CPU: every request must produce exactly its own max_tokens (per-request limits
honoured, EOS ignored), so the peer's token count matches throughput_test.py's workload."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peer_transformers.py"

transformers = pytest.importorskip("transformers")

TINY_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 10001,  # prompt ids are drawn from [0, 10000]
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000,
    "hidden_act": "silu",
    "tie_word_embeddings": True,
}
SIZES = dict(num_seqs=3, min_input_len=8, max_input_len=32, min_output_len=4, max_output_len=16)


def has_continuous_batching() -> bool:
    """Without importing it (that pulls in torch._dynamo: seconds); the script checks the API."""
    try:
        spec = importlib.util.find_spec("transformers.generation.continuous_batching")
    except ImportError:
        return False
    return spec is not None and "ContinuousBatchingConfig" in dir(transformers)


def workload_max_tokens() -> list[int]:
    """The max_tokens throughput_test.py's make_workload draws for SIZES."""
    spec = importlib.util.spec_from_file_location(
        "_throughput_test_for_peer", ROOT / "benchmarks" / "throughput_test.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = Namespace(seed=0, vocab_cap=10_000, **SIZES)
    return module.make_workload(args)[1]


@pytest.mark.skipif(
    not has_continuous_batching(),
    reason=f"transformers {transformers.__version__} has no continuous batching manager",
)
def test_peer_transformers_honours_per_request_max_tokens(tmp_path):
    model_dir = tmp_path / "tiny-qwen3"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_QWEN3))
    out = tmp_path / "peer.json"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES.items()]
    cmd = [
        sys.executable, str(SCRIPT), "--model", str(model_dir), "--dummy-weights", "--device", "cpu",
        *flags, "--num-blocks", "16", "--page-size", "16", "--max-batch-tokens", "256",
        "--timeout", "60", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]

    max_tokens = workload_max_tokens()
    assert len(set(max_tokens)) > 1, "the limits must differ to show they are per request"
    result = json.loads(out.read_text())
    assert result["num_requests"] == SIZES["num_seqs"]
    assert result["output_tokens_per_request"] == max_tokens
    assert result["output_tokens"] == sum(max_tokens)
    assert result["engine"]["per_request_max_new_tokens"] is True
    assert result["engine"]["logits_processors"] == ["TemperatureLogitsWarper"]
    assert result["elapsed_s"] > 0 and result["output_tokens_per_s"] > 0
    assert f"{sum(max_tokens):11,d}" in res.stdout  # the printed table carries the same count
