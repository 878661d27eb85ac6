"""One GPU call per milestone: its GPU checks, then its headline benchmarks with the previous
milestone measured in the same run, written as the milestone's canonical result files.

    python benchmarks/suite.py m4                 # checks + benchmarks, into benchmarks/results/m4/
    python benchmarks/suite.py m4 m8 --out-dir $OUT --skip-checks
    python benchmarks/suite.py m8 --list          # print the steps without running them

Every file is named ``<what>_<card>.json`` (card: ``h100``, ``h200``, ... from the device name;
``--card`` must agree with it). The run starts by measuring the card's device-to-device copy rate
(``bandwidth_<card>.json``), and every benchmark judges its "share of the floor" against that
number, never against another card's. Each step's output goes to ``<what>_<card>.log`` beside
its JSON as it finishes, so a call cut short still leaves what ran. ``suite_<card>.json`` lists the
steps with their exit codes and seconds. A milestone's own ``bench.py`` (m5-m7) names its files
``m5_interference.json`` and the like; they are renamed to the same scheme
(``interference_<card>.json``). ``python tools/results_page.py`` then rebuilds the results page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MODEL = ["--model", "Qwen/Qwen3-0.6B", "--dummy-weights"]
LATENCY = ["--input-len", "128", "--output-len", "256", "--num-iters", "3"]


def mdir(key: str) -> str:
    """``m4`` -> ``m4_flash`` (the milestone's directory)."""
    for d in ROOT.iterdir():
        if d.is_dir() and re.fullmatch(rf"{key}_[a-z0-9_]+", d.name):
            return d.name
    raise SystemExit(f"no milestone directory {key}_* under {ROOT}")


def gpu_tests(key: str) -> list[tuple[str, list[str], str]]:
    """The milestone's GPU test set, then greedy tokens vs transformers (float32 and bf16)."""
    steps = [("gpu_tests", [PY, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p",
                            "no:cacheprovider"], mdir(key))]  # fmt: skip
    if int(key[1:]) >= 1:
        for dtype in ("float32", "bfloat16"):
            extra = ["--attention-backend", "triton"] if int(key[1:]) >= 4 else []
            cmd = [PY, "benchmarks/gpu_check.py", "--milestone", key, "--dtype", dtype, *extra]
            steps.append((f"gpu_check_{dtype}", cmd, "."))
    return steps


def benches(key: str, out: Path, card: str, bw: float) -> list[tuple[str, list[str], str]]:
    """The headline benchmarks of milestone ``key`` and its baseline, in the same call."""
    n = int(key[1:])
    prev = f"m{n - 1}"
    floor = ["--bandwidth", str(bw)]

    def thr(ms: str, name: str, *extra: str) -> tuple[str, list[str], str]:
        cmd = [PY, "benchmarks/throughput_test.py", "--milestone", ms, *MODEL, *extra]
        return name, [*cmd, *floor, "--out", str(out / f"{name}_{card}.json")], "."

    def lat(ms: str, name: str, *extra: str) -> tuple[str, list[str], str]:
        cmd = [PY, "benchmarks/latency_test.py", "--milestone", ms, *MODEL, *LATENCY, *extra]
        return name, [*cmd, *floor, "--out", str(out / f"{name}_{card}.json")], "."

    if n <= 3:
        if n == 1:
            return [lat("m1", "latency", "--hf")]  # against transformers' generate
        kv = ["--kv-cache-memory-gb", "16"] if n == 3 else ["--num-seqs", "32"]
        cmd = [PY, "benchmarks/compare.py", "--milestones", prev, key, "--out"]
        return [("compare", [*cmd, str(out / f"compare_{card}.json"), "--", *MODEL, *kv], ".")]
    if n == 5:  # its bench.py runs m4 and m5 in one call; then the workload on both
        return [("bench", [PY, f"{mdir(key)}/bench.py", "--out-dir", str(out), *MODEL], "."),
                thr(key, "throughput"), thr(prev, f"baseline_{prev}_throughput")]  # fmt: skip
    if n == 6:  # its bench.py runs m5 and m6 in one call
        return [("bench", [PY, f"{mdir(key)}/bench.py", "--out-dir", str(out), *MODEL], ".")]
    if n == 7:  # bf16 vs GPTQ at two shapes
        return [("bench", [PY, f"{mdir(key)}/bench.py", "--out-dir", str(out), *floor], ".")]
    return [  # m4 and later: batch-1 latency and the workload, this milestone and the previous
        lat(key, "latency"),
        lat(prev, f"baseline_{prev}_latency"),
        thr(key, "throughput"),
        thr(prev, f"baseline_{prev}_throughput"),
    ]


def extras(key: str, out: Path, card: str, bw: float) -> list[tuple[str, list[str], str]]:
    """The measurements behind a note's table beyond the headline (``--extras``): one knob off at a
    time against the headline run, named ``<knob>_off_<what>_<card>.json``. An environment
    variable a step needs is written ``env:NAME=VALUE`` ahead of the command."""
    floor = ["--bandwidth", str(bw)]

    def run(name: str, script: str, *extra: str, env: str | None = None, floor_ok: bool = True):
        cmd = [PY, f"benchmarks/{script}", "--milestone", key, *extra]
        cmd += [*(floor if floor_ok else []), "--out", str(out / f"{name}_{card}.json")]
        return name, ([f"env:{env}"] if env else []) + cmd, "."

    lat = ("latency_test.py", *MODEL, *LATENCY)
    thr = ("throughput_test.py", *MODEL)
    prof = ("step_profile.py", *MODEL, "--batch", "256", "--context", "512")
    eager = ("eager_profile.py", *MODEL, "--tokens", "64", "2048", "--cudagraph-mode")
    if key == "m4":
        return [run("latency_eager", *lat, "--enforce-eager"),
                run("prefill_step_decode_graphs", *eager, "decode", floor_ok=False),
                run("prefill_step_full_graphs", *eager, "full", floor_ok=False),
                run("step_profile", *prof, floor_ok=False)]  # fmt: skip
    if key == "m7":  # the nk kernels end to end (the headline runs the default, format)
        cmd = [PY, f"{mdir(key)}/bench.py", "--out-dir", str(out / "nk"), *floor]
        return [("nk_bench", ["env:FOLOVLLM_GPTQ_KERNEL=nk", *cmd], ".")]
    if key == "m8":
        off = ("--async-scheduling", "off")
        return [run("async_off_latency", *lat, *off),
                run("async_off_throughput", *thr, *off),
                run("pdl_off_latency", *lat, env="FOLOVLLM_PDL=0"),
                run("fused_off_latency", *lat, env="FOLOVLLM_FUSED_KERNELS=0"),
                run("fused_off_throughput", *thr, env="FOLOVLLM_FUSED_KERNELS=0"),
                run("kv_fp8_throughput", *thr, "--kv-cache-dtype", "fp8"),
                run("step_profile", *prof, "--kernels", floor_ok=False),
                run("async_off_step_profile", *prof, *off, floor_ok=False),
                run("kernels_b1", "step_profile.py", *MODEL, "--batch", "1", "--context", "256",
                    "--kernels", floor_ok=False),
                run("kv_fp8_accuracy", "kv_fp8_accuracy.py", floor_ok=False),
                run("gemv", "kernels/gemv_bench.py", "--sweep", floor_ok=False)]  # fmt: skip
    return []


def rename_bench_files(out: Path, key: str, card: str) -> list[str]:
    """``m5_interference_m4.json`` -> ``interference_m4_<card>.json`` (bench.py's names, m5-m7)."""
    renamed = []
    for path in sorted(out.glob(f"{key}_*")):
        if path.suffix in (".json", ".png"):
            new = out / f"{path.stem[len(key) + 1 :]}_{card}{path.suffix}"
            path.replace(new)
            renamed.append(new.name)
    return renamed


def card_name() -> tuple[str, str]:
    import torch

    name = torch.cuda.get_device_name()
    found = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name)
    return (found.group(1).lower() if found else re.sub(r"\W+", "_", name).lower()), name


def measure_bandwidth(nbytes: int = 2**30, iters: int = 20) -> float:
    """Device-to-device copy rate, bytes read + written per second (gpt-fast's yardstick)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * nbytes * iters / (start.elapsed_time(end) / 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("milestones", nargs="+", help="m4 m8 ...")
    ap.add_argument("--card", default=None, help="expected card (h100, h200): refuse another")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--skip-benches", action="store_true")
    ap.add_argument("--extras", action="store_true", help="also the one-knob-off runs (m4, m7, m8)")
    ap.add_argument("--only", default="", help="comma-separated step names: run just these")
    ap.add_argument("--list", action="store_true", help="print the steps, run nothing")
    args = ap.parse_args()
    if args.list:
        card, device, bw = args.card or "CARD", "(not measured)", 0.0
    else:
        card, device = card_name()
        if args.card and args.card.lower() != card:
            raise SystemExit(f"--card {args.card} but this machine has {device} ({card})")
        bw = measure_bandwidth()
        print(f"{device}: device-to-device copy {bw / 1e12:.2f} TB/s", flush=True)
    failed = 0
    for key in args.milestones:
        out = Path(args.out_dir) / key
        out.mkdir(parents=True, exist_ok=True)
        steps = [] if args.skip_checks else gpu_tests(key)
        steps += [] if args.skip_benches else benches(key, out, card, bw)
        steps += extras(key, out, card, bw) if args.extras else []
        if args.only:
            steps = [s for s in steps if s[0] in args.only.split(",")]
        record = {"milestone": mdir(key), "card": card, "device": device,
                  "copy_bytes_per_s": bw, "steps": []}  # fmt: skip
        if not args.list:
            (out / f"bandwidth_{card}.json").write_text(json.dumps(
                {"device": device, "copy_bytes_per_s": bw}, indent=2) + "\n")  # fmt: skip
        for name, cmd, cwd in steps:
            print(f"== {key} {name}: {' '.join(cmd)}", flush=True)
            if args.list:
                continue
            t0 = time.perf_counter()
            env_path = {"PYTHONPATH": "."} if cwd != "." else {}
            while cmd[0].startswith("env:"):
                name_value, cmd = cmd[0][4:], cmd[1:]
                env_path[name_value.split("=")[0]] = name_value.split("=", 1)[1]
            with open(out / f"{name}_{card}.log", "w") as log:
                rc = subprocess.call(cmd, cwd=ROOT / cwd, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env_path})  # fmt: skip
            secs = time.perf_counter() - t0
            if name == "bench":
                print("files:", " ".join(rename_bench_files(out, key, card)), flush=True)
            tail = (out / f"{name}_{card}.log").read_text().strip().splitlines()[-3:]
            print("\n".join(tail), f"\n-> rc {rc}, {secs:.0f} s", flush=True)
            failed += rc != 0
            record["steps"].append({"name": name, "rc": rc, "seconds": round(secs, 1)})
            (out / f"suite_{card}.json").write_text(json.dumps(record, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
