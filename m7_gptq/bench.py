"""m7 benchmark: bf16 vs GPTQ 4-bit weights, each configuration in its own process.

1. Memory: bytes of the linear layers' weights and of the whole model (embeddings and lm_head stay
   bf16), from the parameters the engine actually holds.
2. Decode speed: batches of 1 / 8 / 64 requests (128-token prompts, 128 output tokens, all decoding
   together): TPOT (median over requests) and output tok/s; at batch 1 the weight bandwidth
   (linear-weight bytes read per token / TPOT) against the card's memory bandwidth.

Real shapes use dummy weights (``load_format="dummy"``; with ``quantization="gptq"`` random 4-bit
codes): the speed of a 4-bit model does not depend on the values.

3. Quality (``--quality``, a CPU run on folo-tiny): quantize the real weights with RTN and GPTQ
   (groups 128 and 32, act-order, asymmetric) into temporary checkpoints, then the perplexity of
   the original and of each on the held-out evaluation half (folovllm.quantize.perplexity), and
   each layer's relative output errors from the quantizer's summary.

    python bench.py --out-dir /tmp/m7 --models Qwen/Qwen3-0.6B Qwen/Qwen3-8B     # on a GPU
    python bench.py --out-dir /tmp/m7 --models folo-tiny --batches 1 4         # CPU smoke run
    OMP_NUM_THREADS=1 python bench.py --quality --out /tmp/m7_quality_cpu.json  # CPU, folo-tiny
Writes OUT_DIR/m7_gptq.json (and one JSON per configuration); --quality writes --out.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import H100_COPY_BYTES_PER_S, device_info, import_engine, write_json  # noqa: E402


def param_bytes(module) -> int:
    tensors = list(module.parameters(recurse=False))
    if getattr(module, "perm", None) is not None:  # act-order: the activation permutation
        tensors.append(module.perm)
    return sum(t.numel() * t.element_size() for t in tensors)


def memory(model) -> dict[str, int]:
    """Bytes the engine holds for the linear layers (q/k/v/o/gate/up/down) and for everything."""
    from folovllm.model_executor.layers.linear import Linear

    linear = sum(
        param_bytes(m) for name, m in model.named_modules()
        if isinstance(m, Linear) and not name.endswith("lm_head")
    )  # fmt: skip
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(
        b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith("perm")
    )
    return {"linear_weight_bytes": linear, "model_bytes": total}


def decode_run(engine, fv, batch: int, input_len: int, output_len: int, vocab: int, seed: int):
    rng = random.Random(seed)
    params = fv.SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    for _ in range(batch):
        engine.add_request([rng.randrange(vocab) for _ in range(input_len)], params)
    outs, t0 = [], time.perf_counter()
    while engine.has_unfinished_requests():
        outs += engine.step()
    wall = time.perf_counter() - t0
    tpot = statistics.median(o.metrics.tpot for o in outs)
    return {"batch": batch, "tpot_s": tpot, "decode_tok_s": batch / tpot, "wall_s": wall,
            "output_tokens": sum(len(o.token_ids) for o in outs)}  # fmt: skip


def worker(args) -> None:
    import torch

    fv = import_engine("m7")
    opts: dict[str, Any] = dict(
        model=args.model, load_format="dummy", max_model_len=args.input_len + args.output_len + 16,
        max_num_seqs=max(args.batches), dtype=args.dtype,
    )  # fmt: skip
    if args.quant != "bf16":
        opts["quantization"] = args.quant
    if torch.cuda.is_available():  # decode is measured: decode graphs only (faster start-up)
        opts.update(kv_cache_memory_gb=args.kv_cache_memory_gb, cudagraph_mode="decode")
    llm = fv.LLM(**opts)
    engine = llm.engine
    model = engine.runner.model
    mem = memory(model)
    vocab = min(engine.vocab_size, 10000)
    decode_run(engine, fv, max(args.batches), 16, 8, vocab, 1)  # warm-up: compile, autotune
    rows = []
    for b in args.batches:
        decode_run(engine, fv, b, args.input_len, 8, vocab, 2)  # this batch's shapes, once
        row = decode_run(engine, fv, b, args.input_len, args.output_len, vocab, 3)
        row["weight_bytes_per_s"] = mem["linear_weight_bytes"] / row["tpot_s"]
        row["share_of_bandwidth"] = row["weight_bytes_per_s"] / args.bandwidth
        rows.append(row)
        print(f"{args.model} {args.quant:5s} batch {b:3d}: TPOT {row['tpot_s'] * 1e3:7.3f} ms, "
              f"{row['decode_tok_s']:9.1f} tok/s, linear weights {row['weight_bytes_per_s'] / 1e9:7.1f} GB/s "
              f"({row['share_of_bandwidth']:.1%} of {args.bandwidth / 1e12:.2f} TB/s)")  # fmt: skip
    print(f"{args.model} {args.quant}: linear weights {mem['linear_weight_bytes'] / 2**20:.1f} MiB, "
          f"model {mem['model_bytes'] / 2**20:.1f} MiB")  # fmt: skip
    write_json(args.out, {"model": args.model, "quantization": args.quant, "memory": mem,
                          "decode": rows, "device": device_info(),
                          "settings": {k: v for k, v in vars(args).items() if k != "out"}})  # fmt: skip


def merge(parts: list[Path], out: Path) -> None:
    runs = [json.loads(p.read_text()) for p in parts]
    summary = []
    for model in dict.fromkeys(r["model"] for r in runs):
        by = {r["quantization"]: r for r in runs if r["model"] == model}
        if "bf16" not in by or "gptq" not in by:
            continue
        dense, q = by["bf16"], by["gptq"]
        row = {
            "model": model,
            "linear_bytes_bf16": dense["memory"]["linear_weight_bytes"],
            "linear_bytes_gptq": q["memory"]["linear_weight_bytes"],
            "linear_saving": 1 - q["memory"]["linear_weight_bytes"] / dense["memory"]["linear_weight_bytes"],
            "model_bytes_bf16": dense["memory"]["model_bytes"],
            "model_bytes_gptq": q["memory"]["model_bytes"],
            "model_saving": 1 - q["memory"]["model_bytes"] / dense["memory"]["model_bytes"],
            "decode": [],
        }  # fmt: skip
        for d, g in zip(dense["decode"], q["decode"]):
            row["decode"].append({
                "batch": d["batch"], "tpot_bf16_s": d["tpot_s"], "tpot_gptq_s": g["tpot_s"],
                "tpot_ratio": g["tpot_s"] / d["tpot_s"], "tok_s_bf16": d["decode_tok_s"],
                "tok_s_gptq": g["decode_tok_s"], "share_bf16": d["share_of_bandwidth"],
                "share_gptq": g["share_of_bandwidth"],
            })  # fmt: skip
        summary.append(row)
        for r in row["decode"]:
            print(f"{model} batch {r['batch']:3d}: TPOT bf16 {r['tpot_bf16_s'] * 1e3:.3f} ms, "
                  f"gptq {r['tpot_gptq_s'] * 1e3:.3f} ms ({r['tpot_ratio']:.2f}x)")  # fmt: skip
        print(
            f"{model}: linear weights -{row['linear_saving']:.1%}, whole model -{row['model_saving']:.1%}"
        )
    write_json(str(out), {"device": runs[0]["device"], "summary": summary,
                          "inputs": [p.name for p in parts]})  # fmt: skip


# (label, method, group_size, desc_act, sym) of the quality run, RTN before GPTQ at each group size.
QUALITY_VARIANTS = (
    ("RTN g128", "rtn", 128, False, True),
    ("GPTQ g128", "gptq", 128, False, True),
    ("GPTQ g128 act-order", "gptq", 128, True, True),
    ("RTN g32", "rtn", 32, False, True),
    ("GPTQ g32", "gptq", 32, False, True),
    ("GPTQ g32 act-order", "gptq", 32, True, True),
    ("GPTQ g128 asym", "gptq", 128, False, False),
)


def checkpoint_bits_per_weight(path: Path) -> float:
    """Stored bits per weight of the quantized linears (qweight + qzeros + scales + g_idx)."""
    from safetensors import safe_open

    nbytes, weights = 0, 0
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if key.rpartition(".")[2] in ("qweight", "qzeros", "scales", "g_idx"):
                t = f.get_tensor(key)
                nbytes += t.numel() * t.element_size()
                if key.endswith(".qweight"):
                    weights += t.numel() * 8
    return 8 * nbytes / weights


def quality(args) -> None:
    """Perplexity and layer errors of RTN and GPTQ variants on folo-tiny (CPU)."""
    import torch

    torch.set_num_threads(args.threads)
    import_engine("m7")
    from folovllm.quantize import quantize_model
    from folovllm.quantize.perplexity import evaluate

    t0 = time.perf_counter()
    base = evaluate(args.quality_model)
    rows = [{**base, "label": "bf16 (original)", "method": None}]
    print(f"{rows[0]['label']:22s} perplexity {base['perplexity']:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, group_size, desc_act, sym in QUALITY_VARIANTS:
            out = Path(tmp) / label.replace(" ", "_")
            t = time.perf_counter()
            summary = quantize_model(
                args.quality_model, out, group_size=group_size, desc_act=desc_act, sym=sym,
                method=method, nsamples=args.nsamples, seqlen=args.seqlen, verbose=False,
            )  # fmt: skip
            quantize_s = time.perf_counter() - t
            ppl = evaluate(out)
            layers = [
                {"layer": s["layer"], "mean_error": s["mean_error"],
                 "output_error": s["output_error"], "errors": s["errors"]}
                for s in summary["layers"]
            ]  # fmt: skip
            row = {
                "label": label, "method": method, "group_size": group_size,
                "desc_act": desc_act, "sym": sym,
                "perplexity": ppl["perplexity"], "bits_per_byte": ppl.get("bits_per_byte"),
                "tokens": ppl["tokens"], "windows": ppl["windows"],
                "perplexity_vs_original": ppl["perplexity"] / base["perplexity"],
                "mean_error": statistics.mean(s["mean_error"] for s in layers),
                "mean_output_error": statistics.mean(s["output_error"] for s in layers),
                "bits_per_weight": checkpoint_bits_per_weight(out),
                "calibration_tokens": summary["calibration_tokens"],
                "quantize_s": quantize_s, "layers": layers,
            }  # fmt: skip
            rows.append(row)
            print(f"{label:22s} perplexity {row['perplexity']:.3f} "
                  f"({row['perplexity_vs_original']:.4f}x), mean rel. error {row['mean_error']:.4f}, "
                  f"layer output error {row['mean_output_error']:.4f}, "
                  f"{row['bits_per_weight']:.3f} bits/weight, {quantize_s:.1f} s", flush=True)  # fmt: skip
    settings = {"model": args.quality_model, "nsamples": args.nsamples, "seqlen": args.seqlen,
                "damp": 0.01, "eval_seqlen": 256, "threads": args.threads,
                "calibration": "first half of models/folo-tiny/heldout_subset.txt",
                "evaluation": "second half (disjoint documents), float32"}  # fmt: skip
    write_json(args.out, {"benchmark": "m7_quality", "settings": settings, "device": device_info(),
                          "rows": rows, "wall_s": time.perf_counter() - t0})  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out-dir", default=str(Path(tempfile.gettempdir()) / "folovllm_m7_bench"))
    ap.add_argument("--models", nargs="+", default=["Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B"])
    ap.add_argument("--quants", nargs="+", default=["bf16", "gptq"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--kv-cache-memory-gb", type=float, default=4.0)
    ap.add_argument("--bandwidth", type=float, default=H100_COPY_BYTES_PER_S)
    ap.add_argument("--quality", action="store_true", help="the CPU quality run (writes --out)")
    ap.add_argument("--quality-model", default="folo-tiny")
    ap.add_argument("--nsamples", type=int, default=64, help="--quality: calibration sequences")
    ap.add_argument("--seqlen", type=int, default=256, help="--quality: calibration length")
    ap.add_argument("--threads", type=int, default=1, help="--quality: torch threads")
    ap.add_argument("--model", default=None, help="internal: the worker's model")
    ap.add_argument("--quant", default=None, help="internal: the worker's bf16 | gptq")
    ap.add_argument("--out", default=None, help="internal: the worker's JSON")
    args = ap.parse_args()
    if args.quality:
        args.out = args.out or str(Path(args.out_dir) / "m7_quality_cpu.json")
        return quality(args)
    if args.quant:
        return worker(args)
    out = Path(args.out_dir)
    parts = []
    for model in args.models:
        for quant in args.quants:
            path = out / f"m7_gptq_{Path(model).name}_{quant}.json"
            cmd = [sys.executable, __file__, *sys.argv[1:], "--model", model, "--quant", quant,
                   "--out", str(path)]  # fmt: skip
            if subprocess.call(cmd) != 0:
                print(f"{model} {quant} FAILED")
                continue
            parts.append(path)
    merge(parts, out / "m7_gptq.json")


if __name__ == "__main__":
    main()
