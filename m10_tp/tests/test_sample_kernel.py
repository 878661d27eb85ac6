"""The one-pass sampling kernel (folovllm/sample/ops.py) on the CPU under TRITON_INTERPRET=1.

The interpreter costs ~20 ms per program (row x part), so shapes are small and a small ``block``
makes several parts per row and a masked tail. Every draw is seeded: no test can flake. The
``gpu`` test runs the compiled kernel at Qwen3's real shape.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from folovllm.model_executor.layers import fused  # noqa: E402
from folovllm.sample import ops  # noqa: E402
from folovllm.sample.sampler import Sampler, SamplingMetadata  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NEG = float("-inf")


def draw(logits: torch.Tensor, temps: list[float], seed: int, block: int = 4) -> torch.Tensor:
    torch.manual_seed(seed)  # the wrapper draws the kernel's seed from torch's generator
    temperature = torch.tensor(temps, dtype=torch.float32, device=logits.device)
    return ops.sample(logits, temperature, block=block).cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("vocab", [7, 300])
def test_greedy_rows_equal_torch_argmax_with_ties_and_masks(dtype, vocab):
    """Integer logits tie everywhere: the smallest index must win, across lanes and parts."""
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randint(-3, 4, (5, vocab), generator=g).to(dtype)
    logits[torch.rand(5, vocab, generator=g) < 0.3] = NEG
    logits[3] = NEG  # all masked: 0, as torch.argmax
    logits[4, vocab - 1] = 9  # the max in the last (masked-tail) part
    ids = draw(logits.to(DEVICE), [0.0] * 5, seed=0, block=16)
    assert ids.tolist() == logits.float().argmax(-1).tolist()
    assert ids.dtype == torch.int64


def test_same_seed_same_ids_other_seed_differs():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    temps = [1.0, 1.0, 2.0, 0.5]
    first = draw(logits, temps, seed=1)
    assert torch.equal(first, draw(logits, temps, seed=1))
    assert not torch.equal(first, draw(logits, temps, seed=2))
    assert ((first >= 0) & (first < 50)).all()


def test_empirical_distribution_matches_softmax():
    """N rows of one 5-token distribution in one launch (each row its own Philox counters).

    The 5 tokens sit at columns 0, 2, 4, 6, 7 between masked ones, so with block 2 they use all 4
    uniforms of a Philox call. Chi-square, 4 degrees of freedom: a correct sampler gives ~4 (20 has
    p = 5e-4); at this N, ignoring T gives ~65, noise ``E`` or ``log E`` in place of ``-log E`` ~25."""
    x = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    cols = [0, 2, 4, 6, 7]
    n = 512 if DEVICE == "cpu" else 100_000
    row = torch.full((8,), NEG)
    row[cols] = x
    ids = draw(row.expand(n, 8).to(DEVICE), [0.7] * n, seed=3, block=2)
    counts = torch.bincount(ids, minlength=8).double()
    assert counts[[1, 3, 5]].sum() == 0  # masked tokens are never drawn
    expected = (x.double() / 0.7).softmax(-1) * n
    chi2 = ((counts[cols] - expected) ** 2 / expected).sum().item()
    assert chi2 < 20, (counts[cols].tolist(), expected.tolist(), chi2)


def test_mixed_batch_greedy_and_random_rows():
    """Greedy rows are exact; random rows draw what they draw in an all-random batch (the noise
    depends on (seed, row, column) only)."""
    logits = torch.randn(6, 37, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    temps = [0.0, 1.0, 0.0, 0.8, 1.5, 0.0]
    mixed = draw(logits, temps, seed=5)
    random = draw(logits, [t or 1.0 for t in temps], seed=5)
    for i, t in enumerate(temps):
        expected = logits[i].argmax().item() if t == 0 else random[i].item()
        assert mixed[i].item() == expected


def test_single_finite_token_is_always_drawn():
    """Everything masked but one token (in varied parts/lanes), at any temperature."""
    temps = [0.0, 1e-3, 0.1, 1.0, 10.0, 100.0, 1.0, 1.0]
    where = [0, 36, 5, 17, 16, 31, 32, 1]
    logits = torch.full((8, 37), NEG)
    logits[range(8), where] = torch.tensor([3.0, -50.0, 0.0, 80.0, -1.0, 2.0, 0.5, -1e4])
    for seed in range(2):
        assert draw(logits.to(DEVICE), temps, seed=seed).tolist() == where


def test_sampler_uses_the_kernel_only_when_it_suffices(monkeypatch):
    """With fused kernels on (CUDA in the engine; forced here), temperature-only batches take the
    kernel; top-k/top-p/penalty and seeded generators keep the torch path."""
    calls = []
    real = ops.sample
    monkeypatch.setattr(fused, "use_fused", lambda x: True)
    monkeypatch.setattr(ops, "sample", lambda *a: calls.append(1) or real(*a, block=4))
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.0, 0.0]], device=DEVICE)
    temp = torch.tensor([0.0, 1.0], device=DEVICE)
    plain = SamplingMetadata(temp, None, None, None, None)
    assert Sampler()(logits, plain)[0].item() == 1 and len(calls) == 1
    gens = {1: torch.Generator(device=DEVICE).manual_seed(0)}
    others = [
        SamplingMetadata(temp, torch.tensor([3, 1], device=DEVICE), None, None, None),
        SamplingMetadata(temp, None, torch.tensor([1.0, 0.5], device=DEVICE), None, None),
        SamplingMetadata(temp, None, None, torch.tensor([1.0, 1.2], device=DEVICE), [[0], [1]]),
        SamplingMetadata(temp, None, None, None, None, gens),
    ]
    for md in others:
        assert Sampler()(logits, md)[0].item() == 1
    assert len(calls) == 1


@pytest.mark.gpu
def test_real_shape_bf16_compiled():
    """Qwen3's vocabulary at batch 256 in bf16: greedy rows exact, random rows in range, and a
    peaked distribution (3 strong tokens, one in the last part, over a 151,936-token tail) drawn
    with the right frequencies over 256 x 40 draws (4 standard errors)."""
    b, v = 256, 151_936
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(b, v, device="cuda", generator=g).to(torch.bfloat16)
    greedy = draw(logits, [0.0] * b, seed=0, block=1024)
    assert torch.equal(greedy, logits.argmax(-1).cpu())
    temps = [0.0 if i % 3 == 0 else 0.9 for i in range(b)]
    mixed = draw(logits, temps, seed=1, block=1024)
    assert ((mixed >= 0) & (mixed < v)).all()
    assert torch.equal(mixed[::3], greedy[::3])

    peaks = [3, 70_000, v - 1]
    row = torch.randn(v, device="cuda", generator=g)
    row[peaks] = torch.tensor([12.0, 11.5, 11.0], device="cuda")
    row = row.to(torch.bfloat16)
    probs = (row.double() / 0.9).softmax(-1)
    expected = torch.cat([probs[peaks], (1 - probs[peaks].sum())[None]]).cpu()
    counts = torch.zeros(4, dtype=torch.float64)
    for seed in range(40):
        ids = draw(row.expand(b, v), [0.9] * b, seed=100 + seed, block=1024)
        for k, p in enumerate(peaks):
            counts[k] += (ids == p).sum()
        counts[3] += (~torch.isin(ids, torch.tensor(peaks))).sum()
    n = 40 * b
    stderr = (expected * (1 - expected) / n).sqrt()
    assert ((counts / n - expected).abs() <= 4 * stderr).all(), (counts / n, expected)
    # through the Sampler: a temperature-only batch takes the kernel on CUDA
    md = SamplingMetadata(torch.zeros(b, device="cuda"), None, None, None, None)
    assert torch.equal(Sampler()(logits, md).cpu(), greedy)
