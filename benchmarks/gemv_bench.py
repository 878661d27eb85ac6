"""Decode-size linear layers: m4's weight-streaming ``fused.gemv`` vs ``F.linear`` (cuBLAS).

Qwen3-0.6B's four projections at 1 / 2 / 4 rows, bf16; each variant is checked against F.linear
in float32, then timed inside a CUDA graph (no launch overhead). GB/s counts the weight bytes
read once, against the card's copy bandwidth measured in the same run.

    python benchmarks/gemv_bench.py --milestone m4 --out benchmarks/results/m4_gemv_h200.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, import_engine, write_json  # noqa: E402

SHAPES = {"qkv": (4096, 1024), "o": (1024, 2048), "gate_up": (6144, 1024), "down": (1024, 3072)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--milestone", default="m4")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import triton.testing

    import_engine(args.milestone)
    from folovllm.model_executor.layers import fused

    def timed(fn) -> float:
        return triton.testing.do_bench_cudagraph(fn, rep=100) * 1e3  # us

    big = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    copy_bw = 2 * big.numel() / (timed(lambda: big.clone()) * 1e-6)  # read + write per second
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for m in (1, 2, 4):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x.float(), w.float())
            err = (fused.gemv(x, w).float() - ref).abs().max().item()
            t_ours = timed(lambda x=x, w=w: fused.gemv(x, w))
            t_cublas = timed(lambda x=x, w=w: torch.nn.functional.linear(x, w))
            rows.append(dict(layer=name, n=n, k=k, rows=m, max_abs_err=err, gemv_us=t_ours,
                             cublas_us=t_cublas, gemv_gb_s=w.nbytes / t_ours / 1e3, cublas_gb_s=w.nbytes / t_cublas / 1e3,
                             gemv_share_of_copy_bw=w.nbytes / (t_ours * 1e-6) / copy_bw,
                             speedup=t_cublas / t_ours))  # fmt: skip
            r = rows[-1]
            print(f"{name:8s} {n:5d}x{k:5d} M={m}: gemv {t_ours:6.2f} us ({r['gemv_gb_s']:6.0f} GB/s, "
                  f"{r['gemv_share_of_copy_bw']:.0%}), cuBLAS {t_cublas:6.2f} us "
                  f"({r['cublas_gb_s']:6.0f} GB/s) -> {r['speedup']:.2f}x, err {err:.3g}")  # fmt: skip
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s")
    write_json(args.out, {"benchmark": "gemv", "device": device_info(),
                          "copy_bandwidth_bytes_per_s": copy_bw, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
