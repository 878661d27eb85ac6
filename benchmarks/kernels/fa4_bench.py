"""Our Triton attention kernels vs flash-attn 4 (``flash_attn.cute``) on the same paged cache.

Decode at batch x context 1x8k, 64x2k, 256x512, 256x2k, 128x8k (GB/s of K/V read, and its share
of the card's copy bandwidth measured in the same run) and causal prefill of 4k and 16k tokens
(TFLOP/s, share of the measured bf16 matmul rate). Qwen3-0.6B's attention (16 query heads, 8 KV
heads, head_dim 128), bf16, block size 16. Both are timed in a CUDA graph where one captures
(flash-attn 4 compiles per shape on its first call, done before timing), else eagerly; each row
says which.

    python benchmarks/kernels/fa4_bench.py --milestone m8 --out benchmarks/results/m8/fa4_h100.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # attention_bench.py
from _common import device_info, import_engine, write_json  # noqa: E402
from attention_bench import BS, KVH, D, H, measure_peaks, paged_inputs  # noqa: E402

DECODE = [(1, 8192), (64, 2048), (256, 512), (256, 2048), (128, 8192)]
PREFILL = [4096, 16384]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m8")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    import triton

    import_engine(args.milestone)
    from folovllm.attention.backends.abstract import CommonAttentionMetadata
    from folovllm.attention.backends.flash_attn import fa4_attention
    from folovllm.attention.backends.triton_attn import TritonAttentionBackend

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    peaks = measure_peaks(torch, triton)
    print(f"measured: copy {peaks['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
          f"bf16 matmul {peaks['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s")  # fmt: skip
    gen = torch.Generator().manual_seed(0)

    def bench(fn) -> tuple[float, str]:
        fn()  # flash-attn 4 compiles here; Triton autotunes
        torch.cuda.synchronize()
        try:
            return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median"), "graph"
        except Exception as e:  # noqa: BLE001
            print(f"  (no CUDA graph: {type(e).__name__}; timing eagerly)")
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
            return ms, "eager"

    def variants(q, cache, table, qsl, seq_lens):
        q_lens = [b - a for a, b in zip(qsl, qsl[1:])]
        common = CommonAttentionMetadata(
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device="cuda"),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
            block_table=table,
            slot_mapping=torch.full((len(q),), -1, dtype=torch.int32, device="cuda"),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            num_reqs=len(seq_lens),
            num_actual_tokens=len(q),
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
        )
        md = TritonAttentionBackend.get_builder_cls()(KVH, sms).build(common)
        impl = TritonAttentionBackend.get_impl_cls()(H, D, D**-0.5, KVH)
        k = torch.empty(len(q), KVH, D, dtype=q.dtype, device="cuda")
        return {
            "triton (ours)": lambda: impl.forward(q, k, k, cache, md),
            "flash-attn 4": lambda: fa4_attention(q, cache[0], cache[1], md, D**-0.5),
        }

    rows = []
    for L in PREFILL:
        q, cache, table, qsl = paged_inputs(torch, [L], [L], gen)
        flops = 4 * L * L / 2 * H * D
        for name, fn in variants(q, cache, table, qsl, [L]).items():
            ms, mode = bench(fn)
            rate = flops / (ms * 1e-3)
            rows.append(dict(kind="prefill", variant=name, batch=1, seq_len=L, ms=ms, timed=mode,
                             tflops=rate / 1e12, share_of_peak=rate / peaks["bf16_matmul_flops"]))  # fmt: skip
        del cache
    for B, ctx in DECODE:
        q, cache, table, qsl = paged_inputs(torch, [ctx] * B, [1] * B, gen)
        kv_bytes = 2 * B * ctx * KVH * D * 2
        for name, fn in variants(q, cache, table, qsl, [ctx] * B).items():
            ms, mode = bench(fn)
            bw = kv_bytes / (ms * 1e-3)
            rows.append(dict(kind="decode", variant=name, batch=B, seq_len=ctx, ms=ms, timed=mode,
                             gb_per_s=bw / 1e9, share_of_peak=bw / peaks["copy_bytes_per_s"]))  # fmt: skip
        del cache

    print(
        f"\n{'kind':8} {'variant':14} {'batch':>5} {'len':>6} {'ms':>9} {'rate':>13} {'of peak':>8}"
    )
    for r in rows:
        rate = (
            f"{r['tflops']:.1f} TFLOP/s" if r["kind"] == "prefill" else f"{r['gb_per_s']:.0f} GB/s"
        )
        print(f"{r['kind']:8} {r['variant']:14} {r['batch']:5} {r['seq_len']:6} {r['ms']:9.4f} "
              f"{rate:>13} {r['share_of_peak']:8.1%} {r['timed']}")  # fmt: skip
    write_json(args.out, {
        "benchmark": "attention_fa4",
        "device": device_info(),
        "shape": {"num_heads": H, "num_kv_heads": KVH, "head_dim": D, "block_size": BS},
        "peaks": peaks,
        "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
