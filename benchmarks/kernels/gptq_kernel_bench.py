"""GPTQ 4-bit kernels vs bf16 ``F.linear`` (m7), Qwen3-8B and -0.6B layer shapes, one run.

    python benchmarks/kernels/gptq_kernel_bench.py --out benchmarks/results/m7/gptq_kernel_h100.json
    python benchmarks/kernels/gptq_kernel_bench.py --sweep --out sweep_h100.json   # + tune configs
    python benchmarks/kernels/gptq_kernel_bench.py --dry-run [--sweep]  # tiny shapes, interpreter

Methods, all on the same random 4-bit weights (group 128):
  bf16_linear     ``F.linear`` on the dequantized bf16 weight (the baseline)
  gptq_nk         the engine's path (gptq_nk.py: repacked layout, GEMV / tl.dot / dequantize + cuBLAS)
  gptq_old        the format-layout kernels (gptq_triton.py ``gptq_matmul``), for comparison
  dequant_matmul  gptq_nk's dequantize kernel, then cuBLAS (what larger M runs)
``--kernel`` picks which of gptq_nk / gptq_old run. Each is first checked against ``x @ W`` in
float32, then timed as a CUDA graph of R launches over R different weight copies (R * bytes > 3x
the L2 cache, so every launch reads its weight from HBM, as a decode step's layers do), per
launch. Reported: microseconds, weight bytes / time (GPTQ: K*N/2 + scales + zeros; bf16: 2*K*N),
the share of the device-to-device copy rate measured at the start of the same run (and of the
H100 reference 3.02e12 B/s, ``share_of_3_02``), and the speed-up vs bf16.

``--sweep``: for every shape and M in --sweep-m, candidate gptq_nk configurations (GEMV for
M <= 4, tl.dot above; tiles, warps, stages, nibble conversion, prefetch; then split-K around
the best, its partial sums added by a second kernel or by the last program), each checked
against the reference before it is timed. Prints the best per (shape, M) and writes it to the
JSON as ``best`` and as ``tuned`` (the entries of gptq_nk.TUNED, keyed "M,N,K"). About 3-4
minutes on one H100 with a cold Triton cache.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
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
    ap.add_argument("--kernel", nargs="*", default=["new", "old"], choices=["new", "old"])
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--sweep", action="store_true", help="tune gptq_nk configurations too")
    ap.add_argument("--sweep-m", nargs="*", type=int, default=[1, 2, 4, 8, 16, 32, 64, 256])
    ap.add_argument("--reps", type=int, default=20, help="graph replays per timing (median)")
    ap.add_argument("--l2-mb", type=float, default=50.0, help="L2 size for weight rotation")
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
    from folovllm.model_executor.layers.quantization import gptq_nk as nk
    from folovllm.model_executor.layers.quantization import gptq_triton as gt
    from folovllm.model_executor.layers.quantization.utils import gptq_pack

    shapes = DRY_SHAPES if args.dry_run else SHAPES
    if args.shapes:
        unknown = set(args.shapes) - set(shapes)
        if unknown:
            raise SystemExit(f"unknown shapes {sorted(unknown)}; choose from {list(shapes)}")
        shapes = {k: shapes[k] for k in args.shapes}
    m_list = [1, 3, 17] if args.dry_run else args.m
    sweep_m = [1, 2, 17] if args.dry_run else args.sweep_m
    dtype = torch.float16 if args.dry_run else torch.bfloat16  # bf16 tl.dot is wrong on CPU
    gen = torch.Generator(device=dev).manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 8
    print(f"device: {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu (interpreter)'}, "
          f"torch {torch.__version__}, triton {triton.__version__}, dtype {dtype}")  # fmt: skip

    def make(k: int, n: int, gs: int):
        """Standard-format (qweight, qzeros, scales) and the same weight repacked for gptq_nk."""
        g = k // gs if gs != -1 else 1
        i32 = dict(dtype=torch.int32, device=dev, generator=gen)
        qw = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), **i32)  # random nibbles
        qz = torch.randint(-(2**31), 2**31 - 1, (g, n // 8), **i32)
        s = (torch.rand((g, n), device=dev, generator=gen) * 0.02 + 0.002).to(dtype)
        return (qw, qz, s), (gptq_pack.repack_nk(gptq_pack.unpack_rows(qw)), qz, s)

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
                c()  # compile, warm up
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

    copy_rate = measure_copy_rate(torch, dev, time_us)
    print(f"device-to-device copy: {copy_rate / 1e12:.2f} TB/s (read + write), the share's basis")

    gs_arg = args.group_size
    rows, sweep_rows, best = [], [], {}

    def save() -> None:  # after every shape too: a run cut short keeps what it measured
        tuned = {f"{b['M']},{b['N']},{b['K']}": b["config"] for b in best.values()
                 if b["M"] <= nk.FUSED_MAX_M or b["us"] < b["dequant_us"]}  # fmt: skip
        write_json(args.out, {"benchmark": "gptq_kernel_bench", "device": device_info(),
                              "triton": triton.__version__, "dtype": str(dtype),
                              "copy_bytes_per_s": copy_rate, "rows": rows, "sweep": sweep_rows,
                              "best": best, "tuned": tuned})  # fmt: skip

    l2 = args.l2_mb * 2**20
    for name, (k, n) in shapes.items():
        gs = gs_arg if gs_arg == -1 or gs_arg <= k else -1
        nbytes = gptq_bytes(k, n, gs)
        copies = 1 if dev == "cpu" else int(min(256, max(4, -(-3 * l2 // nbytes))))
        sets = [make(k, n, gs) for _ in range(copies)]
        old_sets, new_sets = [s[0] for s in sets], [s[1] for s in sets]
        # bf16 weights of the same values (the baseline reads 4x the bytes, so fewer copies do)
        w_copies = int(max(2, min(copies, -(-3 * l2 // (2 * k * n))))) if dev == "cuda" else 1
        weights = [gt.dequantize_reference(*old_sets[i], gs, 1, dtype).t().contiguous()
                   for i in range(w_copies)]  # fmt: skip
        w_ref = gt.dequantize_reference(*old_sets[0], gs, 1, torch.float32)
        for m in sorted(set(m_list) | (set(sweep_m) if args.sweep else set())):
            x = torch.randn((m, k), device=dev, generator=gen).to(dtype)
            ref = x.float() @ w_ref
            t_bf16 = time_us([lambda w=w, x=x: torch.nn.functional.linear(x, w) for w in weights])
            base = dict(shape=name, K=k, N=n, M=m, group_size=gs, weight_copies=copies)
            methods = [("bf16_linear", None, 2 * k * n)]
            if "new" in args.kernel:
                methods += [
                    ("gptq_nk", lambda p, x=x, k=k, gs=gs: nk.gptq_nk_matmul(x, *p, k, gs, 1),
                     nbytes),
                    ("dequant_matmul", lambda p, x=x, k=k, gs=gs: torch.nn.functional.linear(
                        x, nk.gptq_nk_dequantize(*p, k, gs, 1, dtype)), nbytes),
                ]  # fmt: skip
            if "old" in args.kernel:
                methods += [("gptq_old", lambda p, x=x, gs=gs: gt.gptq_matmul(x, *p, gs, 1),
                             nbytes)]  # fmt: skip
            for method, fn, b in methods:
                if fn is None:
                    us, err, cfg = t_bf16, None, None
                else:
                    ps = old_sets if method == "gptq_old" else new_sets
                    err = rel_err(fn(ps[0]), ref)
                    if not err <= TOL:
                        print(f"{name} M={m} {method}: MISMATCH vs reference ({err:.1e})")
                    few = ps[:w_copies] if method == "dequant_matmul" else ps
                    us = time_us([lambda p=p, fn=fn: fn(p) for p in few])
                    cfg = None
                    if method == "gptq_nk" and m <= nk.FUSED_MAX_M:
                        cfg = asdict(nk.default_config(m, n, k, sms))
                rows.append(dict(base, method=method, us=us, gb_per_s=b / us / 1e3,
                                 share=b / us / 1e-6 / copy_rate,
                                 share_of_3_02=b / us / 1e-6 / H100_COPY_BYTES_PER_S,
                                 speedup_vs_bf16=t_bf16 / us, rel_err=err, config=cfg))  # fmt: skip
            if args.sweep and m in sweep_m:
                found = sweep(nk, name, k, n, m, gs, x, ref, new_sets, nbytes, t_bf16, time_us,
                              rel_err, copy_rate, sms, dev)  # fmt: skip
                sweep_rows += found
                ok = [r for r in found if r["ok"]]
                if ok:
                    b = min(ok, key=lambda r: r["us"])
                    best[f"{name.replace('.', '_')}_m{m}"] = dict(shape=name, K=k, N=n, M=m, config=b["config"], us=b["us"],
                                                share=b["share"], speedup_vs_bf16=b["speedup_vs_bf16"],
                                                default_us=next(r["us"] for r in rows if r["shape"] == name
                                                                and r["M"] == m and r["method"] == "gptq_nk"),
                                                dequant_us=next(r["us"] for r in rows if r["shape"] == name
                                                                and r["M"] == m and r["method"] == "dequant_matmul"))  # fmt: skip
        del sets, weights
        if dev == "cuda":
            torch.cuda.empty_cache()
        save()

    by = {(r["shape"], r["M"], r["method"]): r for r in rows}
    ms_run = sorted({r["M"] for r in rows})
    print(f"\n{'shape':14} {'M':>3} {'bf16 us':>8} {'nk us':>8} {'share':>6} {'vs bf16':>7} "
          f"{'old us':>8} {'vs bf16':>7} {'deq+mm us':>9}  nk err")  # fmt: skip
    for name in shapes:
        for m in ms_run:
            b, g, o, d = (by.get((name, m, x)) for x in
                          ("bf16_linear", "gptq_nk", "gptq_old", "dequant_matmul"))  # fmt: skip
            line = f"{name:14} {m:3d} {b['us']:8.2f} "
            line += (f"{g['us']:8.2f} {g['share']:6.1%} {g['speedup_vs_bf16']:6.2f}x "
                     if g else " " * 33)  # fmt: skip
            line += f"{o['us']:8.2f} {o['speedup_vs_bf16']:6.2f}x " if o else " " * 17
            line += f"{d['us']:9.2f}  {g['rel_err']:.1e}" if g else ""
            print(line)
    if best:
        print(f"\n{'shape':14} {'M':>3} {'default us':>10} {'best us':>8} {'share':>6} "
              f"{'vs bf16':>7} {'deq+mm':>8}  best configuration")  # fmt: skip
        for b in best.values():
            print(f"{b['shape']:14} {b['M']:3d} {b['default_us']:10.2f} {b['us']:8.2f} "
                  f"{b['share']:6.1%} {b['speedup_vs_bf16']:6.2f}x {b['dequant_us']:8.2f}  "
                  f"{b['config']}")  # fmt: skip
        print("\ngptq_nk.TUNED entries (M, N, K) -> config:")
        for b in best.values():
            if b["M"] > nk.FUSED_MAX_M and b["us"] >= b["dequant_us"]:
                continue  # dequantize + cuBLAS is faster there: no entry
            fields = {f: v for f, v in b["config"].items() if v != getattr(nk.NKConfig(), f)}
            print(f"    ({b['M']}, {b['N']}, {b['K']}): {fields},")
    save()


def measure_copy_rate(torch, dev, time_us) -> float:
    """Bytes read + written per second by a device-to-device copy of 1 GiB (the share's basis)."""
    if dev == "cpu":
        return 1e10
    a = torch.empty(2**30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    us = time_us([lambda a=a, b=b: b.copy_(a)] * 4)
    return 2 * 2**30 / us / 1e-6


def candidates(nk, m: int, n: int, k: int, sms: int, dev: str) -> list:
    """First-round gptq_nk configurations for M rows (each with the heuristic's split-K)."""
    if dev == "cpu":
        if m <= nk.GEMV_MAX_M:
            grid = [dict(block_n=32, deq=d, prefetch=p) for d in ("mantissa", "exponent")
                    for p in (False, True)]  # fmt: skip
        else:
            grid = [dict(block_m=16, block_n=32), dict(block_m=16, block_n=16, split_k=2)]
    elif m <= nk.GEMV_MAX_M:
        grid = [dict(block_n=bn, block_k=128, deq=d, prefetch=p, num_warps=4, num_stages=1)
                for bn, d, p in itertools.product([64, 128, 256], ["mantissa", "exponent"],
                                                  [False, True])]  # fmt: skip
        grid += [
            dict(block_n=256, block_k=128, deq=d, num_warps=8, num_stages=1)
            for d in ("mantissa", "exponent")
        ]  # fewer registers per thread for 4 rows
    else:
        bms = [16] if m <= 16 else [32] if m <= 32 else [64] if m <= 64 else [64, 128]
        grid = [dict(block_m=bm, block_n=bn, block_k=128, num_warps=w, num_stages=st)
                for bm, bn, (w, st) in itertools.product(bms, [64, 128], [(4, 3), (4, 4), (8, 3)])]  # fmt: skip
        if m <= 16:  # the GEMV in blocks of 4 rows (repeat reads of a tile's words hit L2)
            grid += [dict(kernel="gemv", block_n=bn, block_k=128, deq=d, num_stages=1)
                     for bn, d in itertools.product([64, 128], ["mantissa", "exponent"])]  # fmt: skip
    out = []
    for kw in grid:
        cfg = replace(nk.default_config(m, n, k, sms), **kw)
        if "split_k" not in kw:  # the heuristic's split for these tiles
            rows = min(m, 4) if m <= nk.GEMV_MAX_M or cfg.kernel == "gemv" else cfg.block_m
            tiles = -(-m // rows) * -(-n // cfg.block_n)
            split = 1
            while split * 2 <= 16 and tiles * split < 4 * sms and k // 128 // (split * 2) >= 2:
                split *= 2
            cfg = replace(cfg, split_k=split)
        out.append(cfg)
    return out


def sweep(nk, name, k, n, m, gs, x, ref, sets, nbytes, t_bf16, time_us, rel_err, copy_rate,
          sms, dev):  # fmt: skip
    """Time candidate configurations of gptq_nk_gemm, checked first; then split-K (and how
    its partial sums are added) around the best."""
    out = []

    def run(cfg):
        try:
            err = rel_err(nk.gptq_nk_gemm(x, *sets[0], k, gs, 1, cfg), ref)
            ok = err <= TOL
            us = (
                time_us([lambda p=p: nk.gptq_nk_gemm(x, *p, k, gs, 1, cfg) for p in sets])
                if ok
                else None
            )
        except Exception as e:  # a configuration the compiler rejects (shared memory, ...)
            print(f"sweep {name} M={m} {cfg}: {type(e).__name__}: {str(e)[:120]}")
            return
        if not ok:
            print(f"sweep {name} M={m} {cfg}: MISMATCH vs reference ({err:.1e})")
        out.append(dict(shape=name, K=k, N=n, M=m, config=asdict(cfg), us=us, rel_err=err, ok=ok,
                        gb_per_s=nbytes / us / 1e3 if us else None,
                        share=nbytes / us / 1e-6 / copy_rate if us else None,
                        speedup_vs_bf16=t_bf16 / us if us else None))  # fmt: skip

    t0 = time.perf_counter()
    seen = set()
    for cfg in candidates(nk, m, n, k, sms, dev):
        if cfg not in seen:
            seen.add(cfg)
            run(cfg)
    ok = [r for r in out if r["ok"]]
    if ok and dev == "cuda":
        b = nk.NKConfig(**min(ok, key=lambda r: r["us"])["config"])
        more = [replace(b, split_k=1)]
        more += [replace(b, split_k=s, reduce=r) for s in (2, 4, 8, 16, 32)
                 for r in ("kernel", "serial")]  # fmt: skip
        for cfg in more:
            if cfg not in seen:
                seen.add(cfg)
                run(cfg)
    ok = [r for r in out if r["ok"]]
    if ok:
        b = min(ok, key=lambda r: r["us"])
        print(f"sweep {name:13} M={m:3d}: {len(out)} configs in {time.perf_counter() - t0:5.1f} s, "
              f"best {b['us']:7.2f} us ({b['share']:.0%} of copy, {b['speedup_vs_bf16']:.2f}x bf16)",
              flush=True)  # fmt: skip
    return out


if __name__ == "__main__":
    main()
