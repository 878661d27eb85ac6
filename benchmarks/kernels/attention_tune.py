"""Kernel tuning with numbers: sweep our attention kernels' tile sizes, warps, stages and split
counts on the GPU, check every variant against the default one, and time each in a CUDA graph
(no launch overhead), Qwen3-0.6B's attention shape, bf16.

    python benchmarks/kernels/attention_tune.py --out benchmarks/results/m4/attention_tune_h100.json
Prints the best configuration per shape and how far the default is from it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import device_info, import_engine, write_json  # noqa: E402

H, KVH, D = 16, 8, 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m4")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    import triton

    import_engine(args.milestone)
    from folovllm.attention.ops.decode_attention import choose_num_splits, split_kv_decode
    from folovllm.attention.ops.paged_attention import paged_attention

    bs = args.block_size
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator().manual_seed(0)

    def inputs(q_lens, seq_lens):
        blocks = [-(-s // bs) for s in seq_lens]
        perm = torch.randperm(sum(blocks), generator=gen)
        table = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32)
        i = 0
        for r, n in enumerate(blocks):
            table[r, :n] = perm[i : i + n]
            i += n
        cache = torch.randn(2, sum(blocks), bs, KVH, D, dtype=torch.bfloat16, device="cuda")
        q = torch.randn(sum(q_lens), H, D, dtype=torch.bfloat16, device="cuda")
        qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
        qsl[1:] = torch.tensor(q_lens).cumsum(0)
        i32 = dict(dtype=torch.int32, device="cuda")
        return q, cache, qsl.cuda(), torch.tensor(seq_lens, **i32), table.cuda()

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")

    rows = []
    # Decode: one kernel (16-row GQA tiles) vs split-KV at several split counts.
    for batch, ctx in [(1, 1024), (1, 8192), (16, 2048), (64, 2048), (256, 1024)]:
        q, cache, qsl, sl, table = inputs([1] * batch, [ctx] * batch)
        nbytes = 2 * batch * ctx * KVH * D * 2
        ref = torch.empty_like(q)
        paged_attention(q, cache[0], cache[1], ref, qsl, sl, table, D**-0.5, batch, batch, 1)
        default_splits = choose_num_splits(batch, KVH, sms)
        variants = []
        for block_n, warps in itertools.product([32, 64, 128], [4, 8]):
            variants.append(("one-pass", dict(block_n=block_n, num_warps=warps), 1))
        for splits, block_n in itertools.product([4, 8, 16, 32, 64], [64]):
            if batch * KVH * splits <= 8 * sms:
                variants.append(("split-kv", dict(block_n=block_n), splits))
        for kind, kw, splits in variants:
            out = torch.empty_like(q)
            if kind == "one-pass":
                fn = partial(paged_attention, q, cache[0], cache[1], out, qsl, sl, table,
                             D**-0.5, batch, batch, 1, **kw)  # fmt: skip
            else:
                fn = partial(split_kv_decode, q, cache[0], cache[1], out, qsl, sl, table,
                             D**-0.5, batch, splits, **kw)  # fmt: skip
            try:
                ms = timed(fn)
            except Exception as e:  # a configuration the compiler rejects (shared memory, ...)
                print(f"decode b{batch} L{ctx} {kind} {kw} splits={splits}: {type(e).__name__}")
                continue
            err = (out.float() - ref.float()).abs().max().item()
            rows.append(
                dict(kind="decode", batch=batch, seq_len=ctx, variant=kind, splits=splits, **kw,
                     ms=ms, gb_per_s=nbytes / ms / 1e6, max_err_vs_default=err,
                     is_default=(kind == "split-kv" and splits == default_splits and kw["block_n"] == 64)
                     if default_splits > 1 else (kind == "one-pass" and kw == dict(block_n=64, num_warps=4)))
            )  # fmt: skip
        del cache
    # Prefill: one causal sequence.
    for L in [1024, 4096, 16384]:
        q, cache, qsl, sl, table = inputs([L], [L])
        flops = 4 * L * L / 2 * H * D
        ref = torch.empty_like(q)
        paged_attention(q, cache[0], cache[1], ref, qsl, sl, table, D**-0.5, 1, L, L)
        for block_m, block_n, warps, stages in itertools.product(
            [64, 128], [64, 128], [4, 8], [2, 3]
        ):
            out = torch.empty_like(q)
            kw = dict(block_m=block_m, block_n=block_n, num_warps=warps, num_stages=stages)
            fn = partial(paged_attention, q, cache[0], cache[1], out, qsl, sl, table,
                         D**-0.5, 1, L, L, **kw)  # fmt: skip
            try:
                ms = timed(fn)
            except Exception as e:
                print(f"prefill L{L} {kw}: {type(e).__name__}")
                continue
            err = (out.float() - ref.float()).abs().max().item()
            rows.append(
                dict(kind="prefill", batch=1, seq_len=L, variant="one-pass", splits=1, **kw, ms=ms,
                     tflops=flops / ms / 1e9, max_err_vs_default=err,
                     is_default=kw == dict(block_m=64, block_n=64, num_warps=4, num_stages=2))
            )  # fmt: skip
        del cache

    best = {}
    for r in rows:
        key = f"{r['kind']}_b{r['batch']}_L{r['seq_len']}"
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    print(f"\n{'shape':22} {'default ms':>10} {'best ms':>9} {'gain':>6}  best configuration")
    summary = {}
    for key, b in best.items():
        d = next((r for r in rows if r.get("is_default") and
                  f"{r['kind']}_b{r['batch']}_L{r['seq_len']}" == key), None)  # fmt: skip
        cfg = {
            k: b[k]
            for k in ("variant", "splits", "block_m", "block_n", "num_warps", "num_stages")
            if k in b
        }
        summary[key] = {"best": cfg, "best_ms": b["ms"], "default_ms": d["ms"] if d else None}
        gain = f"{d['ms'] / b['ms']:.2f}x" if d else "-"
        print(f"{key:22} {d['ms'] if d else float('nan'):10.4f} {b['ms']:9.4f} {gain:>6}  {cfg}")
    bad = [r for r in rows if r["max_err_vs_default"] > 5e-2]
    print(f"variants checked against the default: {len(rows)}, disagreeing (> 5e-2): {len(bad)}")
    write_json(args.out, {"benchmark": "attention_tune", "device": device_info(),
                          "block_size": bs, "rows": rows, "summary": summary})  # fmt: skip


if __name__ == "__main__":
    main()
