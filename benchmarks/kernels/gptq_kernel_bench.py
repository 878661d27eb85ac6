"""GPTQ 4-bit kernels vs bf16 ``F.linear`` at decode batch sizes (m7), Qwen3-8B and -0.6B shapes.

    python benchmarks/kernels/gptq_kernel_bench.py --out benchmarks/results/m7/gptq_kernel_h100.json
    python benchmarks/kernels/gptq_kernel_bench.py --tune            # also sweep kernel configurations
    python benchmarks/kernels/gptq_kernel_bench.py --dry-run         # tiny shapes, Triton interpreter, CPU

For each (K, N) and M: first ``gptq_matmul``, ``gptq_gemm`` and dequantize + matmul are checked
against ``x @ W`` in float32, then each is timed as a CUDA graph of R launches over R different
weight copies (R * bytes > 3x the L2 cache, so every launch reads its weight from HBM, as the
layers of a decode step do), per launch. Reported: microseconds, weight bytes / time (GPTQ:
K*N/2 + scales + zeros; bf16: 2*K*N), the share of --bandwidth (default: the H100's measured
3.02e12 B/s; an H200 copies ~4.3e12), speedup vs bf16. About a minute on one GPU; --tune adds
~2-3 minutes (--tune-kernels gemv / dot and --tune-m narrow it). Every tuned configuration is
checked against the reference before it is timed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py
from _common import H100_COPY_BYTES_PER_S, device_info, import_engine, write_json  # noqa: E402

SHAPES = {  # name -> (K, N) of y = x @ W, W [K, N] (weight [N, K])
    "8b.qkv": (4096, 6144),
    "8b.o": (4096, 4096),
    "8b.gate_up": (4096, 24576),
    "8b.down": (12288, 4096),
    "0.6b.qkv": (1024, 4096),
    "0.6b.o": (2048, 1024),
    "0.6b.gate_up": (1024, 6144),
    "0.6b.down": (3072, 1024),
}
DRY_SHAPES = {"tiny.a": (256, 128), "tiny.b": (128, 72)}
TOL = 1e-2  # max |out - ref| / max |ref| for bf16 (fp32 reference on the same packed weight)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=None, help=f"subset of {list(SHAPES)}")
    ap.add_argument("--m", nargs="*", type=int, default=[1, 8, 64], help="rows (tokens)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--tune", action="store_true", help="sweep kernel configurations too")
    ap.add_argument("--tune-m", nargs="*", type=int, default=[1, 64], help="rows to tune for")
    ap.add_argument("--tune-kernels", nargs="*", default=["gemv", "dot"], help="gemv and/or dot")
    ap.add_argument("--reps", type=int, default=20, help="graph replays per timing (median)")
    ap.add_argument("--l2-mb", type=float, default=50.0, help="L2 size for weight rotation")
    ap.add_argument("--bandwidth", type=float, default=H100_COPY_BYTES_PER_S)
    ap.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes, interpreter")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch
    import triton

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device (or --dry-run)")
    dev = "cpu" if args.dry_run else "cuda"
    import_engine("m7")
    from folovllm.model_executor.layers.quantization import gptq_triton as gt

    shapes = DRY_SHAPES if args.dry_run else SHAPES
    if args.shapes:
        unknown = set(args.shapes) - set(shapes)
        if unknown:
            raise SystemExit(f"unknown shapes {sorted(unknown)}; choose from {list(shapes)}")
        shapes = {k: shapes[k] for k in args.shapes}
    m_list = [1, 3] if args.dry_run else args.m
    dtype = torch.float16 if args.dry_run else torch.bfloat16  # bf16 tl.dot is wrong on CPU
    gen = torch.Generator(device=dev).manual_seed(0)
    print(f"device: {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu (interpreter)'}, "
          f"torch {torch.__version__}, triton {triton.__version__}, dtype {dtype}")  # fmt: skip

    def make(k: int, n: int, gs: int):
        g = k // gs if gs != -1 else 1
        i32 = dict(dtype=torch.int32, device=dev, generator=gen)
        qw = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), **i32)  # random nibbles
        qz = torch.randint(-(2**31), 2**31 - 1, (g, n // 8), **i32)
        s = (torch.rand((g, n), device=dev, generator=gen) * 0.02 + 0.002).to(dtype)
        return qw, qz, s

    def gptq_bytes(k: int, n: int, gs: int) -> int:
        g = k // gs if gs != -1 else 1
        return k * n // 2 + g * n * 2 + g * n // 2

    def rel_err(out, ref) -> float:
        return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()

    def time_us(calls) -> float:
        """Median time per call of ``calls`` (a list of thunks), replayed in one CUDA graph."""
        if dev == "cpu":
            t0 = time.perf_counter()
            for c in calls:
                c()
            return (time.perf_counter() - t0) / len(calls) * 1e6
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for c in calls:
                c()  # compile, autotune-free warm-up
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for c in calls:
                c()
        graph.replay()
        torch.cuda.synchronize()
        ms = []
        for _ in range(args.reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            graph.replay()
            b.record()
            b.synchronize()
            ms.append(a.elapsed_time(b))
        del graph
        return statistics.median(ms) / len(calls) * 1e3

    gs_arg = args.group_size
    rows, tune_rows = [], []
    l2 = args.l2_mb * 2**20
    for name, (k, n) in shapes.items():
        gs = gs_arg if gs_arg == -1 or gs_arg <= k else -1
        nbytes = gptq_bytes(k, n, gs)
        copies = 1 if dev == "cpu" else int(min(256, max(4, -(-3 * l2 // nbytes))))
        sets = [make(k, n, gs) for _ in range(copies)]
        # bf16 weights of the same values (the baseline reads 4x the bytes, so fewer copies do)
        w_copies = int(max(2, min(copies, -(-3 * l2 // (2 * k * n))))) if dev == "cuda" else 1
        weights = [gt.dequantize_reference(*sets[i], gs, 1, dtype).t().contiguous()
                   for i in range(w_copies)]  # fmt: skip
        for m in m_list:
            x = torch.randn((m, k), device=dev, generator=gen).to(dtype)
            qw, qz, s = sets[0]
            ref = x.float() @ gt.dequantize_reference(qw, qz, s, gs, 1, torch.float32)
            errs = {
                "matmul": rel_err(gt.gptq_matmul(x, qw, qz, s, gs, 1), ref),
                "gemm": rel_err(gt.gptq_gemm(x, qw, qz, s, gs, 1), ref),
                "dequant": rel_err(x @ gt.gptq_dequantize(qw, qz, s, gs, 1, dtype), ref),
            }
            bad = {key: e for key, e in errs.items() if not e <= TOL}
            if bad:
                print(f"{name} M={m}: MISMATCH vs reference {bad}")
            t_bf16 = time_us(
                [lambda w=w, x=x: torch.nn.functional.linear(x, w) for w in weights]
            )  # fmt: skip
            t_gemm = time_us([lambda p=p, x=x, gs=gs: gt.gptq_gemm(x, *p, gs, 1) for p in sets])
            t_deq = time_us(
                [lambda p=p, x=x, gs=gs: x @ gt.gptq_dequantize(*p, gs, 1, dtype)
                 for p in sets[:w_copies]]
            )  # fmt: skip
            sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 8
            cfg = gt.default_config(m, n, k, sms)
            for method, us, b in [
                ("bf16_linear", t_bf16, 2 * k * n),
                ("gptq_gemm", t_gemm, nbytes),
                ("dequant_matmul", t_deq, nbytes),
            ]:
                rows.append(
                    dict(shape=name, K=k, N=n, M=m, group_size=gs, method=method, us=us,
                         gb_per_s=b / us / 1e3, share=b / us / 1e-6 / args.bandwidth,
                         speedup_vs_bf16=t_bf16 / us, weight_copies=copies,
                         rel_err=errs["gemm"] if method == "gptq_gemm" else
                         errs["dequant"] if method == "dequant_matmul" else None,
                         config=cfg.__dict__ if method == "gptq_gemm" else None)
                )  # fmt: skip
            if args.tune and m in (args.tune_m if dev == "cuda" else m_list):
                tune_rows += tune(gt, name, k, n, m, gs, x, ref, sets, nbytes, time_us, rel_err,
                                  args.bandwidth, dev, args.tune_kernels)  # fmt: skip
        del sets, weights
        if dev == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{'shape':14} {'M':>3} {'bf16 us':>8} {'gptq us':>8} {'deq+mm us':>9} "
          f"{'gptq GB/s':>9} {'share':>6} {'vs bf16':>7}  split  err")  # fmt: skip
    by = {(r["shape"], r["M"], r["method"]): r for r in rows}
    for name in shapes:
        for m in m_list:
            b, g, d = (by[(name, m, x)] for x in ("bf16_linear", "gptq_gemm", "dequant_matmul"))
            print(f"{name:14} {m:3d} {b['us']:8.2f} {g['us']:8.2f} {d['us']:9.2f} "
                  f"{g['gb_per_s']:9.0f} {g['share']:6.1%} {g['speedup_vs_bf16']:6.2f}x  "
                  f"{g['config']['split_k']:5d}  {g['rel_err']:.1e}")  # fmt: skip
    summary = {}
    if tune_rows:
        print(f"\n{'shape':14} {'M':>3} {'default us':>10} {'best us':>8}  best configuration")
        for name, m in {(r["shape"], r["M"]) for r in tune_rows}:
            ok = [r for r in tune_rows if r["shape"] == name and r["M"] == m and r["ok"]]
            if not ok:
                continue
            best = min(ok, key=lambda r: r["us"])
            d = by[(name, m, "gptq_gemm")]["us"]
            summary[f"{name}_m{m}"] = dict(best=best["config"], best_us=best["us"], default_us=d)
            print(f"{name:14} {m:3d} {d:10.2f} {best['us']:8.2f}  {best['config']}")
    write_json(args.out, {"benchmark": "gptq_kernel_bench", "device": device_info(),
                          "triton": triton.__version__, "dtype": str(dtype),
                          "bandwidth": args.bandwidth, "rows": rows, "tune": tune_rows,
                          "tune_summary": summary})  # fmt: skip


def tune(gt, name, k, n, m, gs, x, ref, sets, nbytes, time_us, rel_err, bandwidth, dev, kernels):
    """Tiles, warps and unpacking with the default split, then split counts, stages and the
    int -> float conversion around the best. ``kernels``: "gemv" (M = 1 rows only), "dot"."""
    base = gt.default_config(m, n, k, 8 if dev == "cpu" else 132)
    grid = []
    if dev == "cpu":
        grid = [dict(block_n=32), dict(block_n=32, unpack="gather"), dict(block_n=32, gemv=True)]
    else:
        if "gemv" in kernels:
            grid += [
                dict(gemv=True, block_n=bn, block_k=bk, num_warps=nw, num_stages=3)
                for bn, bk, nw in itertools.product([64, 128], [128, 256, 512], [2, 4])
            ]
        if "dot" in kernels:
            grid += [
                dict(gemv=False, block_m=max(16, base.block_m), block_n=bn, block_k=128,
                     unpack=up, num_warps=nw, num_stages=4)
                for bn, up, nw in itertools.product([64, 128, 256], ["split", "reshape"], [4, 8])
            ]  # fmt: skip
    out = []

    def run(cfg):
        qw, qz, s = sets[0]
        try:
            err = rel_err(gt.gptq_gemm(x, qw, qz, s, gs, 1, cfg), ref)
            ok = err <= TOL
            us = (
                time_us([lambda p=p: gt.gptq_gemm(x, *p, gs, 1, cfg) for p in sets]) if ok else None
            )
        except Exception as e:  # a configuration the compiler rejects (shared memory, ...)
            print(f"tune {name} M={m} {cfg}: {type(e).__name__}: {str(e)[:120]}")
            return None
        row = dict(shape=name, K=k, N=n, M=m, config=cfg.__dict__, us=us, rel_err=err, ok=ok,
                   gb_per_s=nbytes / us / 1e3 if us else None,
                   share=nbytes / us / 1e-6 / bandwidth if us else None)  # fmt: skip
        out.append(row)
        c = cfg
        print(f"tune {name} M={m} bn={c.block_n} bk={c.block_k} split={c.split_k} "
              f"warps={c.num_warps} stages={c.num_stages} unpack={c.unpack} gemv={c.gemv}: "
              f"{us if us else float('nan'):.2f} us, err {err:.1e}", flush=True)  # fmt: skip
        return row

    from dataclasses import replace

    for kw in grid:
        run(replace(base, **kw))
    ok = [r for r in out if r["ok"]]
    if ok:  # around the best: split counts, stages, plain int->float conversion
        best = gt.GemmConfig(**min(ok, key=lambda r: r["us"])["config"])
        for kw in (
            [dict(split_k=x) for x in (1, 2, 4, 8, 16, 32) if x != best.split_k]
            + [dict(num_stages=x) for x in (2, 3, 5) if x != best.num_stages]
            + [dict(magic=False)]
        ):
            run(replace(best, **kw))
    return out


if __name__ == "__main__":
    main()
