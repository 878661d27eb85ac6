import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from folovllm import SamplingParams
from folovllm.request import Request
from folovllm.sample.sampler import (
    Sampler,
    SamplingMetadata,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
)

NEG = float("-inf")


def md_for(params: list[SamplingParams], vocab: int, seen=None, gens=None) -> SamplingMetadata:
    reqs = [Request(str(i), None, seen[i] if seen else [0], p) for i, p in enumerate(params)]
    return SamplingMetadata.from_requests(reqs, vocab, torch.device("cpu"), gens)


def test_top_k_exact_on_hand_made_logits():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, 0.0, 1.0, 0.5, -1.0]])
    out = apply_top_k(logits, torch.tensor([2, 1]))
    assert out.tolist() == [[NEG, 5.0, NEG, 4.0, NEG], [NEG, NEG, 1.0, NEG, NEG]]
    # ties at the k-th value are kept (transformers' rule)
    tied = apply_top_k(torch.tensor([[3.0, 3.0, 1.0]]), torch.tensor([1]))
    assert tied.tolist() == [[3.0, 3.0, NEG]]


def test_top_p_exact_on_hand_made_logits():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # 0.5 + 0.3 = 0.8 covers 0.75: the two most likely stay
    kept = apply_top_p(logits, torch.tensor([0.75])).isfinite().tolist()
    assert kept == [[True, True, False, False]]
    kept = apply_top_p(logits, torch.tensor([0.85])).isfinite().tolist()
    assert kept == [[True, True, True, False]]
    # a tiny p still keeps the single most likely token
    assert apply_top_p(logits, torch.tensor([0.01])).isfinite().tolist() == [
        [True, False, False, False]
    ]


@pytest.mark.parametrize("k", [1, 3, 50])
@pytest.mark.parametrize("p", [0.3, 0.9, 1.0])
def test_top_k_top_p_equal_transformers_warpers(k, p):
    torch.manual_seed(k * 100 + int(p * 10))
    logits = torch.randn(4, 64) * 3
    ours = apply_top_p(apply_top_k(logits, torch.full((4,), k)), torch.full((4,), p))
    theirs = (
        TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, logits.clone()))
        if p < 1
        else TopKLogitsWarper(k)(None, logits.clone())
    )
    assert torch.equal(ours.isfinite(), theirs.isfinite())
    torch.testing.assert_close(ours[ours.isfinite()], theirs[theirs.isfinite()])


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_equals_transformers(penalty):
    torch.manual_seed(0)
    logits = torch.randn(2, 32) * 4
    seen = [[1, 5, 5, 9, 31], [0, 2, 3]]
    ours = apply_repetition_penalty(logits, torch.full((2,), penalty), seen)
    proc = RepetitionPenaltyLogitsProcessor(penalty)
    for i in range(2):
        theirs = proc(torch.tensor([seen[i]]), logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i : i + 1], theirs)


def test_temperature_matches_transformers_and_sharpens():
    torch.manual_seed(1)
    logits = torch.randn(1, 16)
    torch.testing.assert_close(logits / 0.5, TemperatureLogitsWarper(0.5)(None, logits.clone()))
    # lower temperature -> the argmax gets more probability
    assert (logits / 0.5).softmax(-1).max() > logits.softmax(-1).max()


def test_greedy_rows_take_argmax_and_mixed_batches_work():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.0, 0.0]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1)]
    out = Sampler()(logits, md_for(params, 3))
    assert out.tolist() == [1, 0]


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    torch.manual_seed(0)
    logits = torch.randn(1, 1000)
    params = [SamplingParams(temperature=1.0, seed=42)]

    def draw(seed: int) -> list[int]:
        gens = {"0": torch.Generator().manual_seed(seed)}
        return [Sampler()(logits, md_for(params, 1000, gens=gens)).item() for _ in range(20)]

    assert draw(42) == draw(42)
    assert draw(42) != draw(43)


def test_empirical_distribution_matches_softmax():
    """20,000 seeded draws; every probability within 4 standard errors (about 0.013 at p = 0.5)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    n = 20_000
    expected = (logits[0] / 0.8).softmax(-1)
    gen = torch.Generator().manual_seed(7)
    md = md_for([SamplingParams(temperature=0.8, seed=7)], 5, gens={"0": gen})
    counts = torch.zeros(5)
    batch = logits.expand(n, 5)
    md_batch = SamplingMetadata(md.temperature.expand(n), None, None, None, None, {})
    torch.manual_seed(7)
    for t in Sampler()(batch, md_batch).tolist():
        counts[t] += 1
    freq = counts / n
    stderr = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() <= 4 * stderr).all(), (freq, expected)
    # and the top-p mask really removes the tail: with p=0.6 only tokens 0 and 1 appear
    md_p = SamplingMetadata(torch.ones(n), None, torch.full((n,), 0.6), None, None, {})
    assert set(Sampler()(batch, md_p).tolist()) == {0, 1}
