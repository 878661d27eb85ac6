"""Decode-size linear layers: m8's weight-streaming ``gemv`` (layers/ops/gemv.py) vs ``F.linear`` (cuBLAS).

Qwen3-0.6B's four projections at 1 / 2 / 4 rows, bf16. Each variant is checked against F.linear
in float32, then timed as a model runs it: a CUDA graph calls it once on each of enough distinct
weight copies to overflow the L2 cache (a layer's weights are never in L2 when its turn comes;
timing one matrix over and over would measure L2, not HBM). GB/s counts the weight bytes read
once, against the card's copy bandwidth measured in the same run. ``--sweep`` also times every
(BLOCK_N, BLOCK_K, num_warps) and reports the best per shape.

    python benchmarks/kernels/gemv_bench.py --milestone m8 --sweep --out /tmp/gemv_h100.json
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import device_info, import_engine, write_json  # noqa: E402

SHAPES = {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024), "down": (1024, 3072)}
L2_FLUSH_BYTES = 256 * 2**20  # more than any current GPU's L2


def cold_time_us(torch, op, weights, x, iters: int = 10) -> float:
    """Per-call time of ``op(x, w)`` over the distinct ``weights``, replayed from a CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for w in weights[:2]:  # warm up (compiles) outside the capture
            op(x, w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for w in weights:
            op(x, w)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (iters * len(weights))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m8")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    import_engine(args.milestone)
    from folovllm.model_executor.layers import fused
    from folovllm.model_executor.layers.ops import gemv as gemv_ops

    big = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    copy_us = cold_time_us(torch, lambda x, w: w.clone(), [big], None)
    copy_bw = 2 * big.numel() / (copy_us * 1e-6)  # read + write per second
    del big
    linear = torch.nn.functional.linear
    rows, sweep, silu = [], [], None
    configs = list(itertools.product((1, 2, 4, 8), (512, 1024, 2048), (1, 2, 4)))
    for name, (n, k) in SHAPES.items():
        copies = -(-L2_FLUSH_BYTES // (n * k * 2))
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
                   for _ in range(copies)]  # fmt: skip
        nbytes = weights[0].nbytes
        for m in (1, 2, 4):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = linear(x.float(), weights[0].float())
            err = (gemv_ops.gemv(x, weights[0]).float() - ref).abs().max().item()
            t_cublas = cold_time_us(torch, linear, weights, x)
            t_ours = cold_time_us(torch, gemv_ops.gemv, weights, x)
            best = None
            if args.sweep and m == 1:
                for cfg in configs:
                    try:
                        t = cold_time_us(torch, lambda x, w, c=cfg: gemv_ops.gemv(x, w, None, c),
                                         weights, x)  # fmt: skip
                    except Exception as e:  # noqa: BLE001 (a config the compiler rejects)
                        print(f"  {cfg}: {type(e).__name__}")
                        continue
                    sweep.append(dict(layer=name, rows=m, config=cfg, us=t))
                    if best is None or t < best[1]:
                        best = (cfg, t)
            rows.append(dict(layer=name, n=n, k=k, rows=m, max_abs_err=err, gemv_us=t_ours,
                             cublas_us=t_cublas, gemv_gb_s=nbytes / t_ours / 1e3,
                             cublas_gb_s=nbytes / t_cublas / 1e3,
                             gemv_share_of_copy_bw=nbytes / (t_ours * 1e-6) / copy_bw,
                             speedup=t_cublas / t_ours, default_config=gemv_ops.gemv_config(n, k),
                             best_config=best and best[0], best_us=best and best[1]))  # fmt: skip
            r = rows[-1]
            print(f"{name:8s} {n:5d}x{k:5d} M={m}: gemv {t_ours:6.2f} us ({r['gemv_gb_s']:5.0f} GB/s"
                  f", {r['gemv_share_of_copy_bw']:.0%}), cuBLAS {t_cublas:6.2f} us "
                  f"({r['cublas_gb_s']:5.0f} GB/s) -> {r['speedup']:.2f}x, err {err:.3g}"
                  + (f"; best {best[0]} {best[1]:.2f} us ({t_cublas / best[1]:.2f}x)" if best else ""))  # fmt: skip
        if name == "down" and "silu_mul" in inspect.signature(gemv_ops.gemv).parameters:
            # The MLP's SiLU-mul inside the down GEMV vs the two kernels it replaces, one row. Only
            # for a gemv that takes silu_mul (a variant m8 does not keep: it was slower;
            # m8/gemv_h100.json keeps the timing).
            gate_up = torch.randn(1, 2 * k, device="cuda", dtype=torch.bfloat16)
            two = cold_time_us(torch, lambda x, w: gemv_ops.gemv(fused.silu_and_mul(x), w),
                               weights, gate_up)  # fmt: skip
            one = cold_time_us(
                torch, lambda x, w: gemv_ops.gemv(x, w, silu_mul=True), weights, gate_up
            )
            silu = dict(two_kernels_us=two, fused_us=one, speedup=two / one)
            print(
                f"down + SiLU-mul, M=1: silu_and_mul + gemv {two:6.2f} us, one kernel {one:6.2f} us"
            )
        del weights
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s")
    write_json(args.out, {"benchmark": "gemv", "device": device_info(),
                          "copy_bandwidth_bytes_per_s": copy_bw, "rows": rows, "sweep": sweep,
                          "down_silu_mul": silu})  # fmt: skip


if __name__ == "__main__":
    main()
