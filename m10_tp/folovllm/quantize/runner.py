"""Quantize a Qwen2/Qwen3 checkpoint layer by layer and write a standard GPTQ checkpoint.

The decoder layers are quantized in order, each on the outputs of the already-quantized layers
before it. Inside a layer the linears go in the order data flows ("true sequential"): q/k/v (one
input, so one Hessian), o, gate/up (one input), down; the layer is re-run before each step so the
next step sees the outputs of the quantized ones.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from folovllm.model_executor.model_loader import SUPPORTED_ARCHITECTURES, resolve_model_path
from folovllm.quantize.calibration import DEFAULT_NSAMPLES, DEFAULT_SEQLEN, calibration_ids
from folovllm.quantize.gptq import GPTQ, relative_output_error, rtn_quantize

SUBLAYERS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
GROUP_SIZES = (-1, 32, 64, 128)
METHODS = ("gptq", "rtn")
BATCH_SIZE = 8  # calibration sequences per forward
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


def check_args(bits: int, group_size: int, method: str, desc_act: bool, damp: float) -> None:
    """ValueError naming the field and its allowed values."""
    if bits != 4:
        raise ValueError(f"bits={bits} is not supported: bits must be 4")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size={group_size} is not supported: use one of {GROUP_SIZES}")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported: use one of {METHODS}")
    if desc_act and method != "gptq":
        raise ValueError("desc_act (act-order) needs method='gptq'")
    if not 0 < damp < 1:
        raise ValueError(f"damp={damp} must be in (0, 1)")


class _Stop(Exception):
    """Raised by the capture hook: nothing after the first decoder layer needs to run."""


def _layer_inputs(model, layers, ids: torch.Tensor, device) -> list[tuple[torch.Tensor, dict]]:
    """(hidden_states, kwargs) that the first decoder layer receives, per calibration batch."""
    captured = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, kwargs))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for b in range(0, len(ids), BATCH_SIZE):
            try:
                model(input_ids=ids[b : b + BATCH_SIZE].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run(layer, batches) -> list[torch.Tensor | None]:
    """The layer's output per batch (None where a hook stopped it early)."""
    outs = []
    for x, kw in batches:
        try:
            o = layer(x, **kw)
            outs.append(o[0] if isinstance(o, tuple) else o)
        except _Stop:
            outs.append(None)
    return outs


def _quantize_layer(layer, batches, prefix: str, method: str, qargs: dict) -> tuple[dict, dict]:
    """Quantize one decoder layer in place; returns ({name: packed tensors}, stats)."""
    packed, errors, float_out = {}, {}, None
    for step, names in enumerate(SUBLAYERS):
        mods = {name: layer.get_submodule(name) for name in names}
        first = mods[names[0]]
        acc = GPTQ(first.in_features, first.weight.device)  # one input, so one Hessian

        def collect(_module, args, acc=acc, step=step):
            acc.add_batch(args[0])
            if step:  # the first pass runs the whole float layer (for output_error); others stop
                raise _Stop

        hook = first.register_forward_pre_hook(collect)
        try:
            outs = _run(layer, batches)
        finally:
            hook.remove()
        if step == 0:
            float_out = outs
        for name, m in mods.items():
            w = m.weight.data.float()
            if method == "gptq":
                res = acc.quantize(w, **qargs)
            else:
                res = rtn_quantize(w, qargs["group_size"], qargs["sym"])
            errors[name] = relative_output_error(w, res.weight, acc.H)
            m.weight.data = res.weight.to(m.weight.dtype)
            packed[f"{prefix}.{name}"] = res.pack("gptq")
    outs = _run(layer, batches)
    num = sum(float((o - f).double().square().sum()) for o, f in zip(outs, float_out))
    den = sum(float(f.double().square().sum()) for f in float_out)
    batches[:] = [(o, kw) for o, (_, kw) in zip(outs, batches)]
    stats = {
        "errors": errors,
        "mean_error": sum(errors.values()) / len(errors),
        "output_error": math.sqrt(num / den) if den else 0.0,
    }
    return packed, stats


def _write_checkpoint(src: Path, out: Path, packed: dict, config: dict) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                module, _, leaf = key.rpartition(".")
                if module in packed and leaf == "weight":
                    continue
                t = sf.get_tensor(key)
                tensors[key] = t.half() if module in packed and leaf == "bias" else t
    for prefix, parts in packed.items():
        tensors.update({f"{prefix}.{k}": v.contiguous() for k, v in parts.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    qc = config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")


@torch.no_grad()
def quantize_model(
    model_dir: str | Path,
    out_dir: str | Path,
    bits: int = 4,
    group_size: int = 128,
    desc_act: bool = False,
    sym: bool = True,
    damp: float = 0.01,
    method: str = "gptq",
    calib_file: str | Path | None = None,
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int = DEFAULT_SEQLEN,
    device: str = "cpu",
    verbose: bool = True,
) -> dict:
    """Quantize every decoder-layer linear of ``model_dir`` to 4 bits; write a GPTQ checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_args(bits, group_size, method, desc_act, damp)
    src, out = resolve_model_path(model_dir), Path(out_dir).resolve()
    if out == src:
        raise ValueError("out_dir must differ from the model directory")
    config = json.loads((src / "config.json").read_text())
    if config.get("quantization_config"):
        raise ValueError(f"{src} is already quantized (config.json has a quantization_config)")
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ValueError(
            f"architecture {archs} is not supported: use one of {list(SUPPORTED_ARCHITECTURES)}"
        )

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, trust_remote_code=False, local_files_only=True
    )
    model = model.to(device).eval()
    layers = model.model.layers
    for names in SUBLAYERS:
        for name in names:
            m = layers[0].get_submodule(name)
            if group_size != -1 and m.in_features % group_size:
                raise ValueError(
                    f"group_size={group_size} does not divide {name}'s {m.in_features} input features"
                )
            if m.in_features % 8 or m.out_features % 8:
                raise ValueError(
                    f"{name} is {m.in_features}x{m.out_features}: both must be multiples of 8"
                )
    ids = calibration_ids(tokenizer, nsamples, seqlen, calib_file)
    batches = _layer_inputs(model, layers, ids, device)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    qargs = {"group_size": group_size, "sym": sym, "desc_act": desc_act, "damp": damp}

    packed, per_layer = {}, []
    for i, layer in enumerate(layers):
        t = time.perf_counter()
        p, stats = _quantize_layer(layer, batches, f"{prefix}.{i}", method, qargs)
        packed.update(p)
        stats = {"layer": i, "seconds": time.perf_counter() - t, **stats}
        per_layer.append(stats)
        if verbose:
            print(
                f"layer {i + 1}/{len(layers)}  {stats['seconds']:.1f} s  {method} mean rel. error "
                f"{stats['mean_error']:.4f}  layer output error {stats['output_error']:.4f}",
                flush=True,
            )

    config["quantization_config"] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "desc_act": desc_act,
        "sym": sym,
        "damp_percent": damp,
        "checkpoint_format": "gptq",
        "static_groups": False,
        "true_sequential": True,
        "meta": {"quantizer": "folovllm", "method": method, "nsamples": nsamples, "seqlen": seqlen},
    }
    _write_checkpoint(src, out, packed, config)
    summary = {
        "model": str(src),
        "out_dir": str(out),
        **{k: v for k, v in config["quantization_config"].items() if k != "meta"},
        "method": method,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "calibration": str(calib_file) if calib_file else "folo-tiny held-out, calibration half",
        "calibration_tokens": int(ids.numel()),
        "seconds": time.perf_counter() - t0,
        "layers": per_layer,
    }
    (out / "quantize_log.json").write_text(json.dumps(summary, indent=2) + "\n")
    if verbose:
        print(f"wrote {out} in {summary['seconds']:.1f} s", flush=True)
    return summary
