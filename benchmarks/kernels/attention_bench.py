"""Attention alone, on the GPU: the torch reference backend (m3's path), PyTorch SDPA, and our
Triton kernels (m4) side by side, with the roofline figure of merit for each shape.

- Prefill (one causal sequence of 1k / 4k / 16k tokens): TFLOP/s, counting 4 * L^2 / 2 * H * D
  FLOPs (QK^T and PV, causal half) against the card's measured bf16 matmul rate.
- Decode (batch 1 / 16 / 64 / 256, context 512 / 2k / 8k): GB/s of K/V read (every cached K and V
  byte once) against the card's measured copy bandwidth.

    python benchmarks/kernels/attention_bench.py --out benchmarks/results/m4/attention_h100.json [--plot P.png]
Qwen3-0.6B's attention shape (16 query heads, 8 KV heads, head_dim 128), bf16, block size 16; every
variant is timed in a CUDA graph where it can be captured (no launch overhead), SDPA with enable_gqa.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import device_info, import_engine, write_json  # noqa: E402

H, KVH, D, BS = 16, 8, 128, 16


def measure_peaks(torch, triton) -> dict:
    """The two ceilings, measured here: a large device copy and a large bf16 matmul."""
    x = torch.empty(2**30 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    copy_ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return {
        "copy_bytes_per_s": 2 * x.numel() * 2 / (copy_ms * 1e-3),
        "bf16_matmul_flops": 2 * 8192**3 / (mm_ms * 1e-3),
    }


def paged_inputs(torch, seq_lens, q_lens, gen):
    """A paged cache holding the sequences in shuffled blocks, plus the step's queries."""
    blocks = [-(-s // BS) for s in seq_lens]
    num_blocks = sum(blocks)
    perm = torch.randperm(num_blocks, generator=gen, device="cpu")
    width = max(blocks)
    table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    i = 0
    for r, n in enumerate(blocks):
        table[r, :n] = perm[i : i + n]
        i += n
    cache = torch.randn(2, num_blocks, BS, KVH, D, dtype=torch.bfloat16, device="cuda")
    q = torch.randn(sum(q_lens), H, D, dtype=torch.bfloat16, device="cuda")
    qsl = [0]
    for n in q_lens:
        qsl.append(qsl[-1] + n)
    return q, cache, table.cuda(), qsl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m4")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    import triton

    import_engine(args.milestone)
    from folovllm.attention.backends.abstract import CommonAttentionMetadata
    from folovllm.attention.backends.torch_attn import TorchAttentionBackend
    from folovllm.attention.backends.triton_attn import TritonAttentionBackend

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    peaks = measure_peaks(torch, triton)
    print(
        f"measured: copy {peaks['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"bf16 matmul {peaks['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s"
    )
    gen = torch.Generator().manual_seed(0)
    scale = D**-0.5

    def bench(fn) -> float:
        """Kernel time in a CUDA graph (decode runs in graphs in the engine: launch overhead is
        not the kernel's); eager do_bench where a variant cannot be captured."""
        fn()
        torch.cuda.synchronize()
        try:
            return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")
        except Exception:
            torch.cuda.synchronize()
            return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    def backend_fn(backend, q, cache, table, qsl, seq_lens):
        q_lens = [b - a for a, b in zip(qsl, qsl[1:])]
        slots = torch.full((len(q),), -1, dtype=torch.int32, device="cuda")  # K/V already there
        common = CommonAttentionMetadata(
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device="cuda"),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
            block_table=table,
            slot_mapping=slots,
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            num_reqs=len(seq_lens),
            num_actual_tokens=len(q),
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
        )
        if backend is TorchAttentionBackend:
            builder = backend.get_builder_cls()()
            # the torch reference writes through slot_mapping with index_put: give it no tokens
            common.slot_mapping = slots[:0]
            common.num_actual_tokens = 0
        else:
            builder = backend.get_builder_cls()(KVH, sms)
        md = builder.build(common)
        impl = backend.get_impl_cls()(H, D, scale, KVH)
        k = torch.empty(len(q), KVH, D, dtype=q.dtype, device="cuda")
        return lambda: impl.forward(q, k, k, cache, md)

    rows = []
    prefill_lens = [1024, 4096] if args.quick else [1024, 4096, 16384]
    for L in prefill_lens:
        q, cache, table, qsl = paged_inputs(torch, [L], [L], gen)
        flops = 4 * L * L / 2 * H * D
        dense_q = torch.randn(1, H, L, D, dtype=torch.bfloat16, device="cuda")
        dense_k = torch.randn(1, KVH, L, D, dtype=torch.bfloat16, device="cuda")
        dense_v = torch.randn(1, KVH, L, D, dtype=torch.bfloat16, device="cuda")
        variants = {
            "torch (m3 reference)": backend_fn(TorchAttentionBackend, q, cache, table, qsl, [L]),
            "sdpa (dense, no paging)": lambda q=dense_q, k=dense_k, v=dense_v: (
                F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            ),
            "triton (ours)": backend_fn(TritonAttentionBackend, q, cache, table, qsl, [L]),
        }
        for name, fn in variants.items():
            ms = bench(fn)
            rows.append(
                dict(kind="prefill", variant=name, seq_len=L, batch=1, ms=ms,
                     tflops=flops / (ms * 1e-3) / 1e12,
                     share_of_peak=flops / (ms * 1e-3) / peaks["bf16_matmul_flops"])
            )  # fmt: skip
        del cache
    batches = [1, 64, 256] if args.quick else [1, 16, 64, 256]
    contexts = [512, 2048] if args.quick else [512, 2048, 8192]
    for B in batches:
        for ctx in contexts:
            if B * ctx > 256 * 8192:
                continue
            seq_lens = [ctx] * B
            q, cache, table, qsl = paged_inputs(torch, seq_lens, [1] * B, gen)
            kv_bytes = 2 * B * ctx * KVH * D * 2
            variants = {
                "torch (m3 reference)": backend_fn(
                    TorchAttentionBackend, q, cache, table, qsl, seq_lens
                ),
                "triton (ours)": backend_fn(TritonAttentionBackend, q, cache, table, qsl, seq_lens),
            }
            # SDPA over dense (already gathered) K/V with the same GQA heads: what a contiguous
            # cache would allow.
            dq = torch.randn(B, H, 1, D, dtype=torch.bfloat16, device="cuda")
            dk = torch.randn(B, KVH, ctx, D, dtype=torch.bfloat16, device="cuda")
            dv = torch.randn(B, KVH, ctx, D, dtype=torch.bfloat16, device="cuda")
            variants["sdpa (dense, no paging)"] = lambda dq=dq, dk=dk, dv=dv: (
                F.scaled_dot_product_attention(dq, dk, dv, enable_gqa=True)
            )
            for name, fn in variants.items():
                ms = bench(fn)
                bw = kv_bytes / (ms * 1e-3)
                rows.append(
                    dict(kind="decode", variant=name, seq_len=ctx, batch=B, ms=ms,
                         gb_per_s=bw / 1e9, share_of_peak=bw / peaks["copy_bytes_per_s"])
                )  # fmt: skip
            del cache, dk, dv

    print(
        f"\n{'kind':8} {'variant':26} {'batch':>5} {'len':>6} {'ms':>9} {'rate':>12} {'of peak':>8}"
    )
    for r in rows:
        rate = (
            f"{r['tflops']:.1f} TFLOP/s" if r["kind"] == "prefill" else f"{r['gb_per_s']:.0f} GB/s"
        )
        print(
            f"{r['kind']:8} {r['variant']:26} {r['batch']:5} {r['seq_len']:6} {r['ms']:9.4f} "
            f"{rate:>12} {r['share_of_peak']:8.1%}"
        )
    speedups = {}
    for r in rows:
        if r["variant"] == "triton (ours)":
            base = next(
                x for x in rows
                if x["variant"].startswith("torch") and x["kind"] == r["kind"]
                and x["batch"] == r["batch"] and x["seq_len"] == r["seq_len"]
            )  # fmt: skip
            speedups[f"{r['kind']}_b{r['batch']}_L{r['seq_len']}"] = base["ms"] / r["ms"]
    print("\ntriton vs torch reference:", {k: round(v, 1) for k, v in speedups.items()})
    result = {
        "benchmark": "attention",
        "device": device_info(),
        "shape": {"num_heads": H, "num_kv_heads": KVH, "head_dim": D, "block_size": BS},
        "peaks": peaks,
        "rows": rows,
        "speedup_vs_torch": speedups,
    }
    write_json(args.out, result)
    if args.plot:
        plot_roofline(result, args.plot)


def plot_roofline(result: dict, path: str) -> None:
    """Achieved rate vs arithmetic intensity, under the two measured ceilings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bw, peak = result["peaks"]["copy_bytes_per_s"], result["peaks"]["bf16_matmul_flops"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [2**i for i in range(-2, 14)]
    ax.plot(xs, [min(peak, bw * x) / 1e12 for x in xs], "k-", lw=1, label="roofline (measured)")
    markers = {"torch (m3 reference)": "o", "sdpa (dense, no paging)": "s", "triton (ours)": "^"}
    for r in result["rows"]:
        H_, KVH_, D_ = (result["shape"][k] for k in ("num_heads", "num_kv_heads", "head_dim"))
        L, B = r["seq_len"], r["batch"]
        if r["kind"] == "prefill":
            flops = 4 * L * L / 2 * H_ * D_
            nbytes = (2 * L * H_ * D_ + 2 * L * KVH_ * D_) * 2
        else:
            flops = 4 * B * L * H_ * D_
            nbytes = 2 * B * L * KVH_ * D_ * 2
        rate = flops / (r["ms"] * 1e-3) / 1e12
        ax.scatter(flops / nbytes, rate, marker=markers[r["variant"]],
                   color="C0" if r["kind"] == "prefill" else "C1", alpha=0.8)  # fmt: skip
    for name, m in markers.items():
        ax.scatter([], [], marker=m, color="gray", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(
        f"Attention roofline on {result['device'].get('gpu', 'GPU')} (prefill blue, decode orange)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
    _ = math  # keep the import for readers computing their own shapes
