"""m0 benchmark: how fast weights reach memory (safetensors read vs dummy generation).

The file was just written, so the read comes from the page cache: this measures the loader's
overhead over a memory copy, not the disk.

Writes a checkpoint of the given config's shapes (dummy weights, saved as safetensors in a temp dir),
then times iterating it back, and reports GB/s. Prints a table and writes JSON.

    python bench.py [--model Qwen/Qwen3-0.6B] [--dtype bf16] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from folovllm import EngineConfig
from folovllm.milestone import MILESTONE
from folovllm.model_executor.model_loader import (
    get_model_config,
    iterate_dummy_weights,
    iterate_safetensors,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen/Qwen3-0.6B")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = ap.parse_args()

    mc = get_model_config(
        EngineConfig(model=args.model, load_format="dummy", dtype=args.dtype, device="cpu")
    )
    t0 = time.perf_counter()
    weights = dict(iterate_dummy_weights(mc.arch, mc.dtype))
    t_dummy = time.perf_counter() - t0
    nbytes = sum(w.numel() * w.element_size() for w in weights.values())

    with tempfile.TemporaryDirectory() as tmp:
        save_file(weights, str(Path(tmp) / "model.safetensors"))
        del weights
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            # clone() forces every byte out of the memory map into a tensor we own.
            n = sum(t.clone().numel() * t.element_size() for _, t in iterate_safetensors(Path(tmp)))
            times.append(time.perf_counter() - t0)
            assert n == nbytes
    t_read = sorted(times)[len(times) // 2]
    result = {
        "milestone": MILESTONE,
        "model": args.model,
        "dtype": str(mc.dtype),
        "parameters": mc.arch.num_parameters(),
        "bytes": nbytes,
        "dummy_init_s": t_dummy,
        "safetensors_read_s_median": t_read,
        "safetensors_read_GBps": nbytes / t_read / 1e9,
        "kv_bytes_per_token": mc.kv_bytes_per_token,
        "host": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"{'model':28s} {args.model}")
    print(
        f"{'weights':28s} {nbytes / 1e9:.2f} GB ({mc.arch.num_parameters():,} params, {mc.dtype})"
    )
    print(f"{'dummy init':28s} {t_dummy:.2f} s")
    print(
        f"{'safetensors read (median)':28s} {t_read:.2f} s = {result['safetensors_read_GBps']:.2f} GB/s"
    )
    print(f"{'KV bytes per token':28s} {mc.kv_bytes_per_token:,}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
