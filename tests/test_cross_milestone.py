"""Every milestone >= m1 gives the same greedy tokens on the same tiny model (lineage of behaviour).

Each milestone runs in its own process with only its own ``folovllm`` on the path. Milestones with
chunked prefill (m5+) run a second time with a 5-token budget, so the prompts are cut into chunks.
Milestones with prefix caching (m6+) also run with it on and generate twice: the second pass, which
is the one compared, starts every prompt after the blocks the first pass cached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def number(milestone: str) -> int:
    """m10_tp -> 10; -1 for a name that is not a milestone's."""
    match = re.fullmatch(r"m(\d+)_\w+", milestone)
    return int(match.group(1)) if match else -1


# Every milestone from m1 on, by number (m10 after m9).
MILESTONES = sorted(
    (p.name for p in ROOT.iterdir() if p.is_dir() and number(p.name) >= 1), key=number
)
PROMPTS = [
    "The for statement",
    "A list comprehension provides a concise way",
    "Hi",
    "Numbers like 12345",
]
MAX_TOKENS = [24, 9, 30, 16]
TIE = 1e-4
CHUNKED = {"max_num_batched_tokens": 5, "block_size": 4}  # m5+: prompts cut into chunks
# m6+: prefix caching on, the prompts generated twice (the second pass hits the first one's blocks)
PREFIX = {"max_num_batched_tokens": 5, "block_size": 4, "enable_prefix_caching": True, "_passes": 2}
RUNS = (
    [(m, {}) for m in MILESTONES]
    + [(m, CHUNKED) for m in MILESTONES if number(m) >= 5]
    + [(m, PREFIX) for m in MILESTONES if number(m) >= 6]
)

SCRIPT = """
import json, sys
from folovllm import LLM, SamplingParams, MILESTONE
prompts, max_tokens = json.loads(sys.argv[1]), json.loads(sys.argv[2])
params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
results = []
for model, options in json.loads(sys.argv[3]):  # one engine per job, one import for all
    passes = options.pop("_passes", 1)
    llm = LLM(model=model, device="cpu", dtype="float32", **options)
    for _ in range(passes):
        outs = llm.generate(prompts, params, use_tqdm=False)
    results.append({"milestone": MILESTONE, "tokens": [o.token_ids for o in outs],
                    "prompt_ids": [o.prompt_token_ids for o in outs],
                    "prefix_hits": getattr(llm.engine, "prefix_cache_stats", dict)().get("hits", 0)})
print(json.dumps(results))
"""


def _make_checkpoint():
    spec = importlib.util.spec_from_file_location(
        "_ckpt", ROOT / "m0_init" / "tests" / "conftest.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_checkpoint


def run_milestone(milestone: str, jobs: list[tuple[str, dict]]) -> list[dict]:
    """Every (model, options) job on ``milestone``, in one process (imports dominate)."""
    # One torch thread each: the runs go side by side, one per core (a tiny model gains nothing
    # from intra-op threads, and the processes are mostly import time).
    env = dict(os.environ, PYTHONPATH=str(ROOT / milestone), OMP_NUM_THREADS="1")
    args = [json.dumps(PROMPTS), json.dumps(MAX_TOKENS), json.dumps(jobs)]
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT / milestone,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [o["milestone"] for o in out] == [milestone] * len(jobs)
    return out


def hf_margin(model: Path, ids: list[int]) -> float:
    """Gap between the two largest next-token logits of transformers' model after ``ids``."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        top2 = m(torch.tensor([ids])).logits[0, -1].topk(2).values
    return float(top2[0] - top2[1])


KINDS = ["qwen2", "qwen3"]


def name(m: str, kw: dict) -> str:
    return m + "".join(f" {k}={v}" for k, v in kw.items())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict[str, dict]]]:
    """Each kind's model and, by run name, what every milestone generated: one process per
    milestone for both kinds, the processes side by side."""
    models = {k: _make_checkpoint()(tmp_path_factory.mktemp(k), k) for k in KINDS}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {
            m: pool.submit(
                run_milestone, m, [(str(models[k]), kw) for k in KINDS for n, kw in RUNS if n == m]
            )
            for m in reversed(MILESTONES)  # the later, slower ones first
        }
        results: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        for m, future in futures.items():
            jobs = [(k, kw) for k in KINDS for n, kw in RUNS if n == m]
            for (k, kw), out in zip(jobs, future.result()):
                results[k][name(m, kw)] = out
    return {k: (models[k], results[k]) for k in KINDS}


@pytest.mark.skipif(len(MILESTONES) < 2, reason="needs two milestones that generate")
@pytest.mark.parametrize("kind", KINDS)
def test_all_milestones_agree(runs, kind):
    model, results = runs[kind]
    for m, kw in RUNS:
        if kw.get("enable_prefix_caching"):  # the second pass really started after cached blocks
            assert results[name(m, kw)]["prefix_hits"] > 0
    ref_name = MILESTONES[0]
    ref = results[ref_name]
    for label, res in results.items():
        for i, (a, b) in enumerate(zip(ref["tokens"], res["tokens"])):
            if a == b:
                continue
            step = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
            margin = hf_margin(model, ref["prompt_ids"][i] + a[:step])
            assert margin < TIE, (
                f"{label} differs from {ref_name} on prompt {i} at step {step} (margin {margin:.2e})"
            )
            pytest.skip(
                f"prompt {i} step {step}: two logits tie within {TIE}; milestones may pick either"
            )
    assert len(ref["tokens"]) == len(PROMPTS) and [len(t) for t in ref["tokens"]] == MAX_TOKENS
