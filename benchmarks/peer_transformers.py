"""The peer baseline: Hugging Face transformers' continuous batching on nano-vllm's workload.

Same workload and JSON shape as ``throughput_test.py`` (its ``make_workload``: 256 prompts of
100-1024 random ids, 100-1024 output tokens each, temperature 0.6, ignore_eos -> 133,966 output
tokens), run through transformers' own ``ContinuousBatchingManager`` (``model.init_continuous_batching()``,
transformers >= 5): paged KV cache, a background scheduling loop, one ``add_request`` per request with
its own ``max_new_tokens`` and ``eos_token_id=-1`` (no EOS), plain temperature sampling (no top-k/top-p).

    python benchmarks/peer_transformers.py --model Qwen/Qwen3-0.6B --dummy-weights \
        --out benchmarks/results/peer_transformers_throughput.json
    python benchmarks/peer_transformers.py --model /tmp/tiny-qwen3 --num-seqs 4 --max-input-len 32 \
        --min-input-len 8 --max-output-len 16 --min-output-len 4      # CPU smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, add_floor_args, device_info, peak_memory_bytes, write_json  # noqa: E402
from throughput_test import add_workload_args, make_workload  # noqa: E402

ATTN_CHOICES = ("auto", "sdpa", "paged|sdpa", "eager", "paged|eager")


class PeerUnavailable(RuntimeError):
    """The installed transformers cannot run this benchmark (no continuous batching API)."""


def resolve_model_dir(name: str) -> Path:
    """A local directory, the local HF cache (no download), or the repo's models/<name>."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not cached: fall through to the repo copy
            pass
    repo_copy = ROOT / "models" / Path(name).name
    if repo_copy.is_dir():
        return repo_copy.resolve()
    raise SystemExit(f"model {name!r}: not a local directory, not in the HF cache, not in models/")


def cb_api() -> tuple[Any, Any, set[str]]:
    """(ContinuousBatchingConfig, WorkloadHints or None, the config's field names); raises
    PeerUnavailable when this transformers has no continuous batching manager."""
    import transformers

    try:
        from transformers import ContinuousBatchingConfig
        from transformers.generation.continuous_batching import ContinuousBatchingManager
        from transformers.generation.continuous_batching.continuous_api import ContinuousMixin
    except ImportError as e:
        raise PeerUnavailable(
            f"transformers {transformers.__version__} has no continuous batching manager "
            f"(ContinuousBatchingConfig / ContinuousBatchingManager): {e}; needs transformers 5.x"
        ) from e
    if not hasattr(ContinuousMixin, "init_continuous_batching"):
        raise PeerUnavailable(
            f"transformers {transformers.__version__}: no init_continuous_batching"
        )
    import inspect

    params = inspect.signature(ContinuousBatchingManager.add_request).parameters
    if not {"max_new_tokens", "eos_token_id"} <= set(params):
        raise PeerUnavailable(
            f"transformers {transformers.__version__}: ContinuousBatchingManager.add_request has no "
            "per-request max_new_tokens / eos_token_id"
        )
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints
    except ImportError:  # older 5.x: sized without hints
        WorkloadHints = None
    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    return ContinuousBatchingConfig, WorkloadHints, fields


def pick_attn_implementation(requested: str, cb_fields: set[str]) -> str:
    """What to load the model with so that the manager keeps SDPA over the paged cache, without
    trying flash-attn (not installed on the GPU machine). 5.17 prefixes any implementation with
    ``paged|`` itself unless it already has it (and would try FA2/FA3 kernels first otherwise);
    5.24 dropped the prefix for SDPA (``paged|sdpa`` is refused there) and has
    ``auto_switch_to_flash`` to turn the flash attempt off."""
    new_style = "auto_switch_to_flash" in cb_fields
    if requested == "auto":
        return "sdpa" if new_style else "paged|sdpa"
    if new_style and requested == "paged|sdpa":
        return "sdpa"
    if not new_style and requested in ("sdpa", "eager"):
        return f"paged|{requested}"
    return requested


def build_model(args, device: str, dtype, attn: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_dir(args.model)
    config = AutoConfig.from_pretrained(str(path))
    if args.dummy_weights:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
        model = model.to(device)  # a no-op where the device context already placed it
    else:
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise SystemExit(f"{path} has no weights; pass --dummy-weights for random weights")
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, attn_implementation=attn
        ).to(device)
    return model.eval(), path


def cb_config_kwargs(args, cb_fields: set[str]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.page_size is not None:  # 5.17: block_size; 5.24: page_size (block_size deprecated)
        kw["page_size" if "page_size" in cb_fields else "block_size"] = args.page_size
    for flag, name in (
        ("num_blocks", "num_blocks"),
        ("max_batch_tokens", "max_batch_tokens"),
        ("max_memory_percent", "max_memory_percent"),
        ("batch_size", "max_requests_per_batch"),
        ("scheduler", "scheduler_type"),
        ("compile_level", "default_compile_level"),
    ):
        value = getattr(args, flag)
        if value is not None:
            kw[name] = value
    if args.cuda_graph != "auto":
        kw["use_cuda_graph"] = args.cuda_graph == "on"
    if args.no_prefix_sharing:
        kw["allow_block_sharing"] = False
    if "auto_switch_to_flash" in cb_fields:
        kw["auto_switch_to_flash"] = False  # no flash-attn on the GPU machine; keep the chosen one
    if "seed" in cb_fields:
        kw["seed"] = args.seed
    unknown = set(kw) - cb_fields
    if unknown:
        raise SystemExit(f"this transformers' ContinuousBatchingConfig lacks {sorted(unknown)}")
    return kw


def plain(value: Any) -> Any:
    """JSON-friendly copy of a config value."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return repr(value)


def run_requests(manager, prompts, max_tokens, prefix: str, timeout_s: float) -> dict[str, Any]:
    """Submit every request (own max_new_tokens, no EOS) and wait for all of them."""
    ids = []
    for i, (p, m) in enumerate(zip(prompts, max_tokens)):
        rid = manager.add_request(
            input_ids=p, request_id=f"{prefix}{i}", max_new_tokens=m, eos_token_id=-1
        )
        if rid is None:
            raise RuntimeError(f"the manager dropped request {i} (not accepting requests)")
        ids.append(rid)
    pending, results = set(ids), {}
    deadline = time.perf_counter() + timeout_s
    while pending:
        out = manager.get_result(timeout=0.5)
        if out is None:
            if not manager.is_running():
                status = getattr(manager, "background_thread_status", None)
                error = getattr(status, "fatal_error", None)
                raise RuntimeError(
                    f"transformers' generation thread stopped with {len(pending)} requests left"
                    + (f": {error!r}" if error is not None else "")
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(f"timed out with {len(pending)} of {len(ids)} requests left")
            continue
        if out.request_id in pending and out.is_finished():
            if out.error is not None:
                raise RuntimeError(f"request {out.request_id} failed: {out.error}")
            results[out.request_id] = out
            pending.discard(out.request_id)
    return {rid: results[rid] for rid in ids}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="Qwen/Qwen3-0.6B", help="local dir, cached hub id or models/"
    )
    ap.add_argument("--dummy-weights", action="store_true", help="random weights from config.json")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--device", default="auto")
    add_workload_args(ap)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument(
        "--attn-implementation", default="auto", choices=ATTN_CHOICES,
        help="auto: SDPA over the paged cache ('paged|sdpa' on 5.17, 'sdpa' on 5.24)",
    )  # fmt: skip
    cb = ap.add_argument_group("ContinuousBatchingConfig (unset: transformers' own default)")
    cb.add_argument("--page-size", type=int, default=None, help="tokens per page/block (256)")
    cb.add_argument("--num-blocks", type=int, default=None, help="KV blocks (auto: from memory)")
    cb.add_argument("--max-batch-tokens", type=int, default=None, help="auto: from memory")
    cb.add_argument(
        "--max-memory-percent", type=float, default=None, help="auto: 0.8 with sampling"
    )
    cb.add_argument("--batch-size", type=int, default=None, help="max_requests_per_batch")
    cb.add_argument("--scheduler", default=None, help="scheduler_type: fifo | prefill_first")
    cb.add_argument("--compile-level", type=int, default=None, help="default_compile_level 0-3")
    cb.add_argument("--cuda-graph", default="auto", choices=("auto", "on", "off"))
    cb.add_argument("--no-prefix-sharing", action="store_true", help="allow_block_sharing=False")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the results")
    ap.add_argument("--out", default=None)
    add_floor_args(ap)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)

    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    ContinuousBatchingConfig, WorkloadHints, cb_fields = cb_api()

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    attn = pick_attn_implementation(args.attn_implementation, cb_fields)
    model, model_dir = build_model(args, device, dtype, attn)

    prompts, max_tokens = make_workload(args)
    if max(max(p) for p in prompts) >= model.config.vocab_size:
        raise SystemExit(
            f"--vocab-cap {args.vocab_cap} >= the model's vocab {model.config.vocab_size}"
        )

    # Plain temperature sampling, as our engine does: no top-k / top-p, no EOS.
    gen_config = GenerationConfig(
        do_sample=True,
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max(max_tokens),
        eos_token_id=-1,
        pad_token_id=0,
    )
    cb_kwargs = cb_config_kwargs(args, cb_fields)
    cb_config = ContinuousBatchingConfig(**cb_kwargs)
    hints = None
    if WorkloadHints is not None:
        hints = WorkloadHints(
            max_prompt_length=max(len(p) for p in prompts),
            max_generated_length=max(max_tokens),
            num_requests=len(prompts),
        )
    manager = model.init_continuous_batching(
        generation_config=gen_config, continuous_batching_config=cb_config, workload_hints=hints
    )
    effective_attn = model.config._attn_implementation
    cb_processors = getattr(manager, "logit_processor", None)
    processors = [type(p).__name__ for p in getattr(cb_processors, "logits_processor", [])]

    try:
        if hasattr(manager, "warmup"):
            manager.warmup()  # pre-captures CUDA graphs / compiles where those are on
        with torch.inference_mode():  # 5.24's loop copies the caller's inference mode
            manager.start()
        # Warm-up: a few short requests through the running loop (prefill and decode paths).
        warm = [[(7 * i + j) % args.vocab_cap for j in range(16)] for i in range(4)]
        run_requests(manager, warm, [8] * len(warm), "warmup_", args.timeout)

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        steps_before = getattr(manager, "current_batch", None)
        t0 = time.perf_counter()
        outs = run_requests(manager, prompts, max_tokens, "req_", args.timeout)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        steps_after = getattr(manager, "current_batch", None)
        resolved = manager.continuous_batching_config
    finally:
        manager.stop(block=True, timeout=60)
        if hasattr(manager, "destroy"):
            manager.destroy()

    per_request = [len(o.generated_tokens) for o in outs.values()]
    out_tokens = sum(per_request)
    wrong = [(i, n, m) for i, (n, m) in enumerate(zip(per_request, max_tokens)) if n != m]
    if wrong:
        raise SystemExit(
            f"{len(wrong)} requests did not produce exactly max_tokens (index, got, want): {wrong[:5]}"
        )

    # The floor, as throughput_test.py computes it: every step reads the weights once; output
    # token t of a request reads the K/V of its prompt and its first t - 1 outputs.
    tc = model.config.get_text_config()
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_bytes = 2 * tc.num_hidden_layers * tc.num_key_value_heads * head_dim * dtype.itemsize
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: once
    kv_token_reads = sum(len(p) * m + m * (m - 1) // 2 for p, m in zip(prompts, max_tokens))
    num_steps = None if steps_before is None else steps_after - steps_before
    floor = None
    if num_steps:
        floor_bytes = num_steps * weight_bytes + kv_token_reads * kv_bytes
        floor_s = floor_bytes / args.bandwidth
        floor = {
            "bytes": floor_bytes,
            "kv_token_reads": kv_token_reads,
            "num_steps": num_steps,
            "bandwidth_bytes_per_s": args.bandwidth,
            "seconds": floor_s,
            "output_tokens_per_s": out_tokens / floor_s,
            "share": floor_s / elapsed,
        }

    prompt_tokens = sum(len(p) for p in prompts)
    cb_resolved = {
        f.name: plain(getattr(resolved, f.name))
        for f in dataclasses.fields(resolved)
        if f.name
        in (
            "page_size", "block_size", "num_blocks", "max_batch_tokens", "max_memory_percent",
            "max_requests_per_batch", "max_blocks_per_request", "allow_block_sharing",
            "use_async_batching", "use_cuda_graph", "default_compile_level", "scheduler_type",
            "varlen_compile_config", "decode_compile_config", "auto_switch_to_flash", "seed",
        )
    }  # fmt: skip
    result = {
        "benchmark": "throughput",
        "milestone": "transformers_cb",
        "engine": {
            "name": "transformers continuous batching (ContinuousBatchingManager)",
            "transformers": transformers.__version__,
            "api": "model.init_continuous_batching() + add_request(max_new_tokens=m, eos_token_id=-1)",
            "per_request_max_new_tokens": True,
            "attn_implementation_requested": attn,
            "attn_implementation": effective_attn,
            "logits_processors": processors,
            "continuous_batching_config_given": {k: plain(v) for k, v in cb_kwargs.items()},
            "continuous_batching_config": cb_resolved,
        },
        "config": {k: v for k, v in vars(args).items() if k != "out"}
        | {"model_dir": str(model_dir), "dtype_resolved": str(dtype).removeprefix("torch.")},
        "device": device_info() | {"device": device},
        "num_requests": len(outs),
        "prompt_tokens": prompt_tokens,
        "output_tokens": out_tokens,
        "elapsed_s": elapsed,
        "output_tokens_per_s": out_tokens / elapsed,
        "total_tokens_per_s": (prompt_tokens + out_tokens) / elapsed,
        "requests_per_s": len(outs) / elapsed,
        "peak_memory_bytes": peak_memory_bytes(),
        "floor": floor,
        "engine_stats": {
            "num_steps": num_steps,
            "mean_tokens_per_step": (prompt_tokens + out_tokens) / num_steps if num_steps else None,
        },
        "output_tokens_per_request": per_request,
    }

    where = result["device"].get("gpu", result["device"]["cpu"])
    print(
        f"\ntransformers {transformers.__version__} continuous batching on {where}: "
        f"{args.model}{' (dummy)' if args.dummy_weights else ''}, attention {effective_attn}, "
        f"cuda graphs {cb_resolved.get('use_cuda_graph')}, compile level "
        f"{cb_resolved.get('default_compile_level')}"
    )
    print(
        f"KV: {cb_resolved.get('num_blocks')} blocks of "
        f"{cb_resolved.get('page_size', cb_resolved.get('block_size'))} tokens, max batch tokens "
        f"{cb_resolved.get('max_batch_tokens')}, max requests/batch "
        f"{cb_resolved.get('max_requests_per_batch')}"
    )
    print(
        f"{'requests':>8s} {'prompt tok':>11s} {'output tok':>11s} {'seconds':>9s} "
        f"{'output tok/s':>13s} {'total tok/s':>12s} {'req/s':>7s}"
    )
    print(
        f"{len(outs):8d} {prompt_tokens:11,d} {out_tokens:11,d} {elapsed:9.2f} "
        f"{result['output_tokens_per_s']:13,.1f} {result['total_tokens_per_s']:12,.1f} "
        f"{result['requests_per_s']:7.2f}"
    )
    if num_steps:
        print(
            f"{num_steps} steps, {result['engine_stats']['mean_tokens_per_step']:.1f} tokens/step"
        )
    if floor is not None:
        print(
            f"hardware floor ({floor['bytes'] / 1e12:.2f} TB moved at {args.bandwidth / 1e12:.2f} TB/s,"
            f" {num_steps} steps): {floor['seconds']:.2f} s = {floor['output_tokens_per_s']:,.0f} tok/s"
            f" -> this run at {floor['share']:.0%} of the floor"
        )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    try:
        main()
    except PeerUnavailable as e:
        raise SystemExit(f"peer_transformers: {e}") from e
