"""The table of ``benchmarks/results/README.md``, generated from the JSON in the milestone folders.

    python tools/results_page.py            # rewrite the table in benchmarks/results/README.md
    python tools/results_page.py --check    # exit 1 if the committed table is not what the JSON gives
    python tools/results_page.py --print    # print the table

One row per milestone, card and headline measurement that has a baseline measured in the same run:

- ``latency_<card>.json`` (batch-1 TPOT), against ``baseline_<mK>_latency_<card>.json`` or, for m1,
  against transformers' ``generate`` in the same file;
- ``throughput_<card>.json`` (output tok/s on a workload), against
  ``baseline_<mK>_throughput_<card>.json``;
- ``compare_<card>.json`` (``benchmarks/compare.py``: two milestones on one workload);
- ``<switch>_off_<what>_<card>.json`` against ``<switch>_on_<what>_<card>.json``, or against the
  headline ``<what>_<card>.json`` where there is no ``_on_`` file (``suite.py --extras``), ``<what>``
  being ``latency`` or ``throughput``: one engine with one feature on and off;
- ``gptq_<card>.json`` (batch-1 TPOT, GPTQ against bf16) and ``prefix_<card>.json`` (tok/s with and
  without prefix caching), the merged files of m7's and m6's ``bench.py``.

The share of the floor divides the floor's bytes (``floor`` in a throughput file, ``floor_tpot_s``
in a latency file) by the card's copy bandwidth: the one ``benchmarks/suite.py`` measured in the same
run (``bandwidth_<card>.json`` beside the file, equal to the bandwidth the file's floor used), else
``reference.json``'s figure for that card; a card without either gets no share. The spread is the
run-to-run spread the data holds (a latency file repeats its run): max - min over the median, the
larger of the two sides; a change within it reads "no measurable change". A file with one run says so.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = RESULTS / "README.md"
H100_DEFAULT_BANDWIDTH = 3.02e12  # what benchmarks/_common.py's floors assume without --bandwidth
SWITCHES = {
    "async": "async scheduling",
    "fastpath": "async scheduling + decode GEMV + fused q/k-norm and RoPE + one-pass sampler",
    "host_cuts": "host-work cuts + PDL",
    "pdl": "programmatic dependent launch (PDL)",
    "kv_fp8": "fp8 KV cache",
    "fused": "m8's kernels: fused RMSNorm, RoPE, SiLU-mul and q/k-norm, the decode GEMV, the one-pass sampler",
}
COLUMNS = [
    "milestone",
    "card",
    "model",
    "workload",
    "output tok/s",
    "TPOT",
    "share of the floor",
    "same-run baseline",
    "change",
    "run-to-run spread",
]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def milestone_dirs() -> list[Path]:
    found = [p for p in RESULTS.iterdir() if p.is_dir() and re.fullmatch(r"m\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name[1:]))


def milestone_name(key: str) -> str:
    found = [p.name for p in ROOT.glob(f"{key}_*") if p.is_dir()]
    return found[0] if found else key


def card_label(device: dict | None, card: str) -> str:
    gpu = (device or {}).get("gpu") or card.upper()
    return gpu.removeprefix("NVIDIA ")


def card_bandwidth(folder: Path, card: str, used: float | None) -> tuple[float | None, str]:
    """The copy bandwidth to judge a file by, and where it comes from."""
    measured = folder / f"bandwidth_{card}.json"
    if measured.is_file() and used:
        bw = load(measured)["copy_bytes_per_s"]
        if abs(bw - used) <= 1e-6 * bw:
            return bw, "measured in this run"
    ref = load(RESULTS / "reference.json").get(card, {})
    if "d2d_copy_TBps" in ref:
        return ref["d2d_copy_TBps"] * 1e12, "reference.json"
    return None, f"no {card.upper()} figure in reference.json"


def model_label(config: dict) -> str:
    name = Path(config.get("model", "?")).name
    return f"{name} (dummy weights)" if config.get("dummy_weights") else name


def spread(*sides: list[float]) -> float | None:
    """max - min over the median, the larger over the sides; None if a side has one value."""
    if not sides or any(len(s) < 2 for s in sides):
        return None
    return max((max(s) - min(s)) / statistics.median(s) for s in sides)


# --------------------------------------------------------------------------- one kind of file each


def latency_side(data: dict, engine: str = "folovllm") -> dict:
    res = data["results"][engine]
    return {
        "tok_s": res["tokens_per_s"],
        "tpot": res["tpot_s"],
        "runs": [r["tpot_s"] for r in res.get("runs", [])],
        "floor_tpot": res.get("floor_tpot_s"),
        "bw_used": data["config"].get("bandwidth") or H100_DEFAULT_BANDWIDTH,
    }


def latency_workload(data: dict) -> str:
    c = data["config"]
    return (
        f"batch {c['batch_size']}, prompt {c['input_len']}, {c['output_len']} new tokens, "
        f"median of {c['num_iters']}"
    )


def throughput_side(data: dict) -> dict:
    floor = data.get("floor") or {}
    return {
        "tok_s": data["output_tokens_per_s"],
        "tpot": data["engine_stats"]["tpot_mean"],
        "runs": [],
        "elapsed": data["elapsed_s"],
        "floor_bytes": floor.get("bytes"),
        "bw_used": floor.get("bandwidth_bytes_per_s"),
        "nano_vllm": is_nano_vllm(data),
    }


def is_nano_vllm(data: dict) -> bool:
    c = data["config"]
    lengths = (c["min_input_len"], c["max_input_len"], c["min_output_len"], c["max_output_len"])
    return data["num_requests"] == 256 and lengths == (100, 1024, 100, 1024) and c["seed"] == 0


def throughput_workload(data: dict) -> str:
    c = data["config"]
    if is_nano_vllm(data):
        text = (
            f"nano-vllm's: {data['num_requests']} requests, {data['output_tokens']:,} output tokens"
        )
    else:
        text = (
            f"{data['num_requests']} requests, prompts {c['min_input_len']}-{c['max_input_len']}, "
            f"outputs {c['min_output_len']}-{c['max_output_len']} tokens"
        )
    if c.get("kv_cache_memory_gb"):
        text += f", {c['kv_cache_memory_gb']:g} GiB of KV"
    if c.get("kv_cache_dtype"):
        text += f", {c['kv_cache_dtype']} KV"
    return text


def share(side: dict, folder: Path, card: str) -> str:
    bw, source = card_bandwidth(folder, card, side.get("bw_used"))
    if "floor_bytes" in side:  # a workload
        if side["floor_bytes"] and bw:
            return f"{side['floor_bytes'] / bw / side['elapsed']:.0%} ({source})"
        ref = load(RESULTS / "reference.json").get(card, {})
        if side["nano_vllm"] and "workload_floor_tok_per_s" in ref:
            return f"{side['tok_s'] / ref['workload_floor_tok_per_s']:.0%} (reference.json)"
        return "no floor in this file" if bw else source
    if side.get("floor_tpot") and bw:
        return f"{side['floor_tpot'] * side['bw_used'] / bw / side['tpot']:.0%} ({source})"
    return "no floor in this file" if bw else source


def row(ms, card, device, model, workload, ours, base, base_label, folder, metric) -> list[str]:
    """metric: "tok_s" (higher is better) or "tpot" (lower is better)."""
    change = ours[metric] / base[metric]
    what = "tok/s" if metric == "tok_s" else "TPOT"
    s = spread(ours["runs"], base["runs"])  # the runs hold the same metric
    if s is None:
        spread_text = "not measured (one run each)"
        change_text = f"{change:.2f}x {what}"
    else:
        spread_text = f"{s:.1%} ({len(ours['runs'])} runs each)"
        small = abs(change - 1) <= s
        change_text = (
            f"no measurable change ({change:.2f}x {what})" if small else f"{change:.2f}x {what}"
        )
    base_value = (
        f"{base['tok_s']:,.0f} tok/s" if metric == "tok_s" else f"{base['tpot'] * 1e3:.2f} ms"
    )
    tpot = f"{ours['tpot'] * 1e3:.2f} ms" + (" (mean)" if "floor_bytes" in ours else "")
    return [
        ms,
        card_label(device, card),
        model,
        workload,
        f"{ours['tok_s']:,.0f}",
        tpot,
        share(ours, folder, card),
        f"{base_label}: {base_value}",
        change_text,
        spread_text,
    ]


def rows_for(folder: Path) -> list[list[str]]:
    key, out = folder.name, []
    name = milestone_name(key)
    cards = sorted(
        {m.group(1) for p in folder.glob("*.json") if (m := re.search(r"_(h\d+)\.json$", p.name))}
    )
    for card in cards:
        lat = folder / f"latency_{card}.json"
        if lat.is_file():
            data = load(lat)
            base_files = sorted(folder.glob(f"baseline_*_latency_{card}.json"))
            if base_files:
                base, label = load(base_files[0]), base_files[0].name.split("_")[1]
                base_side = latency_side(base)
            elif "transformers" in data["results"]:
                base_side, label = latency_side(data, "transformers"), "transformers generate"
            else:
                base_side = None
            if base_side:
                out.append(row(name, card, data["device"], model_label(data["config"]),
                               latency_workload(data), latency_side(data), base_side, label,
                               folder, "tpot"))  # fmt: skip
        thr = folder / f"throughput_{card}.json"
        base_files = sorted(folder.glob(f"baseline_*_throughput_{card}.json"))
        if thr.is_file() and base_files:
            data, base = load(thr), load(base_files[0])
            out.append(row(name, card, data["device"], model_label(data["config"]),
                           throughput_workload(data), throughput_side(data), throughput_side(base),
                           base_files[0].name.split("_")[1], folder, "tok_s"))  # fmt: skip
        cmp = folder / f"compare_{card}.json"
        if cmp.is_file():
            data = load(cmp)
            prev, cur = (data["results"][m] for m in data["milestones"])
            out.append(row(name, card, cur["device"], model_label(cur["config"]),
                           throughput_workload(cur), throughput_side(cur), throughput_side(prev),
                           data["milestones"][0], folder, "tok_s"))  # fmt: skip
        for off in sorted(folder.glob(f"*_off_*_{card}.json")):
            switch, what = re.fullmatch(rf"(\w+?)_off_(\w+)_{card}\.json", off.name).groups()
            on = folder / off.name.replace("_off_", "_on_", 1)
            on = on if on.is_file() else folder / f"{what}_{card}.json"  # the headline run
            if what not in ("latency", "throughput") or not on.is_file():
                continue
            data, base = load(on), load(off)
            side, work = (
                (latency_side, latency_workload)
                if what == "latency"
                else (throughput_side, throughput_workload)
            )
            label = f"{name}: {SWITCHES.get(switch, switch)}"
            out.append(row(label, card, data["device"], model_label(data["config"]), work(data),
                           side(data), side(base), "off", folder,
                           "tpot" if what == "latency" else "tok_s"))  # fmt: skip
        out += gptq_rows(folder, name, card) + prefix_rows(folder, name, card)
    return out


def gptq_rows(folder: Path, name: str, card: str) -> list[list[str]]:
    path = folder / f"gptq_{card}.json"
    if not path.is_file():
        return []
    data, out = load(path), []
    for model in data["summary"]:
        parts = {
            q: load(folder / f"gptq_{Path(model['model']).name}_{q}_{card}.json")
            for q in ("bf16", "gptq")
        }
        sides = {}
        for q, part in parts.items():
            d = next(r for r in part["decode"] if r["batch"] == 1)
            used = part["settings"].get("bandwidth") or H100_DEFAULT_BANDWIDTH
            sides[q] = {"tok_s": d["decode_tok_s"], "tpot": d["tpot_s"], "runs": [],
                        "weight_share": d["share_of_bandwidth"], "bw_used": used}  # fmt: skip
        s = part["settings"]
        workload = f"batch 1, prompt {s['input_len']}, {s['output_len']} new tokens, GPTQ 4-bit"
        r = row(f"{name}: GPTQ", card, data["device"], f"{Path(model['model']).name} (dummy weights)",
                workload, sides["gptq"], sides["bf16"], "bf16", folder, "tpot")  # fmt: skip
        bw, source = card_bandwidth(folder, card, sides["gptq"]["bw_used"])
        gptq = sides["gptq"]
        r[6] = (
            f"{gptq['weight_share'] * gptq['bw_used'] / bw:.0%} of the weights' floor ({source})"
            if bw
            else source
        )
        out.append(r)
    return out


def prefix_rows(folder: Path, name: str, card: str) -> list[list[str]]:
    path = folder / f"prefix_{card}.json"
    if not path.is_file():
        return []
    data = load(path)
    parts = {m: load(folder / f"prefix_{m}_{card}.json") for m in ("m5", "m6")}
    settings, out = data["settings"], []
    for key, workload in (
        ("few_shot", f"{settings['fewshot_reqs']} requests sharing {settings['fewshot_examples']} "
                     f"few-shot examples of {settings['example_len']} tokens"),
        ("no_sharing", f"{settings['nosharing_reqs']} requests of {settings['nosharing_len']} "
                       "tokens, nothing shared"),
    ):  # fmt: skip
        sides = {}
        for m, part in parts.items():
            d = part[key]
            sides[m] = {"tok_s": d["output_tok_s"], "tpot": float("nan"),
                        "runs": [r["output_tok_s"] for r in d.get("runs", [])]}  # fmt: skip
        r = row(f"{name}: prefix caching", card, data["device"], model_label(settings), workload,
                sides["m6"], sides["m5"], "m5", folder, "tok_s")  # fmt: skip
        r[5], r[6] = "-", "not computed for this benchmark"
        out.append(r)
    return out


def table() -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    listing = []
    for folder in milestone_dirs():
        for r in rows_for(folder):
            lines.append("| " + " | ".join(r) + " |")
        files = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".png"))
        listing.append(f"- `{folder.name}/` ({milestone_name(folder.name)}): " + ", ".join(files))
    return "\n".join(lines + ["", "Every file, by milestone:", ""] + listing)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT / "tools"))
    import docs_numbers

    if "--print" in argv:
        print(table())
        return 0
    text = README.read_text(encoding="utf-8")
    if "<!--results_table()-->" not in text:
        raise SystemExit(f"{README}: no <!--results_table()--> block")
    if "--check" in argv:
        found = docs_numbers.problems(text, str(README.relative_to(ROOT)))
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    README.write_text(docs_numbers.refresh(text, str(README.relative_to(ROOT))), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
