"""Command line: ``python -m folovllm info|generate|demo|serve|quantize|perplexity``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from folovllm.config import EngineConfig
from folovllm.milestone import MILESTONE


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="folo-tiny", help="local directory, hub id or a name in models/"
    )
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    p.add_argument("--dummy-weights", action="store_true", help="same as --load-format dummy")
    p.add_argument(
        "--quantization", default=None, choices=["gptq"], help="default: from the checkpoint"
    )
    p.add_argument(
        "--tensor-parallel-size", "--tp", type=int, default=None, help="ranks (GPUs) per model"
    )


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        load_format="dummy" if args.dummy_weights else args.load_format,
        quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size,
    )


def cmd_info(args: argparse.Namespace) -> int:
    """Print what the engine would load: architecture, size, dtype, KV bytes per token, configs."""
    from folovllm.model_executor.model_loader import count_checkpoint_parameters, get_model_config

    config = _engine_config(args)
    mc = get_model_config(config)
    arch = mc.arch
    n_params = arch.num_parameters()
    if mc.load_format == "safetensors" and mc.quant_config is None:  # packed tensors: shapes
        n_params = count_checkpoint_parameters(mc.path)
    kv = mc.kv_bytes_per_token
    dtype_bytes = mc.dtype.itemsize
    print(f"FoloVLLM {MILESTONE}")
    print(f"model            {mc.model}  ({mc.path})")
    print(f"architecture     {arch.architecture} ({arch.model_type})")
    print(f"parameters       {n_params:,} ({n_params * dtype_bytes / 2**20:.1f} MiB in {mc.dtype})")
    print(f"weights          {mc.load_format}")
    if mc.quant_config is not None:
        q = mc.quant_config
        print(
            f"quantization     gptq {q.bits}-bit, group {q.group_size}, desc_act {q.desc_act}, "
            f"sym {q.sym}, format {q.checkpoint_format} (linear layers; embeddings stay dense)"
        )
    print(f"dtype / device   {mc.dtype} / {mc.device}")
    print(
        f"layers / hidden  {arch.num_hidden_layers} / {arch.hidden_size}; heads {arch.num_attention_heads} q, "
        f"{arch.num_key_value_heads} kv, head_dim {arch.head_dim}"
    )
    print(
        f"KV cache         {kv:,} bytes/token = 2 (K,V) x {arch.num_hidden_layers} layers x "
        f"{arch.num_key_value_heads} kv heads x {arch.head_dim} dim x {dtype_bytes} B"
    )
    print(
        f"max_model_len    {mc.max_model_len} -> {kv * mc.max_model_len / 2**20:.1f} MiB of KV per full sequence"
    )
    print("\nparsed configs:")
    print(f"  {arch}")
    print(f"  {dataclasses.replace(config.scheduler_config, max_model_len=mc.max_model_len)}")
    print(f"  {config.cache_config}")
    print(
        f"  EngineConfig({', '.join(f'{f.name}={getattr(config, f.name)!r}' for f in dataclasses.fields(config) if getattr(config, f.name) not in (None, {}))})"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate a continuation of each --prompt and print it."""
    from folovllm import LLM, SamplingParams

    llm = LLM(engine_config=_engine_config(args), log_level=args.log_level)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    prompts = [
        [int(t) for t in p.split(",")] if llm.tokenizer is None else p for p in args.prompt
    ]  # a model without a tokenizer takes comma-separated token ids
    for out in llm.generate(prompts, params, use_tqdm=False):
        m = out.metrics
        print(f"\033[1m{out.prompt or out.prompt_token_ids}\033[0m{out.text or out.token_ids}")
        print(
            f"  [{len(out.token_ids)} tokens, finish={out.finish_reason}, TTFT {m.ttft * 1e3:.1f} ms"
            + (f", TPOT {m.tpot * 1e3:.1f} ms]" if m.tpot else "]")
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate text with the repo's own model (or dummy Qwen3-0.6B weights if it is missing)."""
    from folovllm.model_executor.model_loader import REPO_MODELS_DIR

    prompts = ["The for statement", "A list comprehension", "The import system"]
    if (REPO_MODELS_DIR / "folo-tiny" / "config.json").is_file():
        argv = ["generate", "--model", "folo-tiny", "--temperature", "0", "--max-tokens", "48"]
    else:
        print(
            "models/folo-tiny is not there yet: Qwen3-0.6B shapes with DUMMY (random) weights, so the text is noise\n"
        )
        argv = ["generate", "--model", "Qwen/Qwen3-0.6B", "--dummy-weights", "--max-tokens", "16"]
        prompts = ["1,2,3,4", "100,200,300"]  # no tokenizer in a config-only directory: token ids
    for p in prompts:
        argv += ["--prompt", p]
    return cmd_generate(build_parser().parse_args(argv))


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize a checkpoint to 4 bits (GPTQ or round-to-nearest) and write a GPTQ checkpoint."""
    from folovllm.quantize import quantize_model

    quantize_model(
        args.model,
        args.out,
        bits=args.bits,
        group_size=args.group_size,
        desc_act=args.desc_act,
        sym=not args.asym,
        damp=args.damp,
        method=args.method,
        calib_file=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        device=args.device,
    )
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    """Perplexity of plain or GPTQ model directories on the held-out evaluation text."""
    from folovllm.quantize import perplexity

    argv = [*args.models, "--device", args.device] + (["--json", args.json] if args.json else [])
    return perplexity.main(argv)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the model over HTTP with OpenAI's API (m9); needs the ``serve`` extra."""
    from folovllm.entrypoints.openai.api_server import ServerArgs, run_server

    config = dataclasses.replace(
        _engine_config(args),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks=args.num_gpu_blocks,
        block_size=args.block_size,
        enable_prefix_caching=args.enable_prefix_caching or None,
        enforce_eager=args.enforce_eager,
        kv_cache_memory_gb=args.kv_cache_memory_gb,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    fields = {f.name for f in dataclasses.fields(ServerArgs)}
    return run_server(config, ServerArgs(**{k: v for k, v in vars(args).items() if k in fields}))


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    _add_engine_args(p)
    for flag in ("--max-num-seqs", "--max-num-batched-tokens", "--num-gpu-blocks", "--block-size"):
        p.add_argument(flag, type=int, default=None)
    p.add_argument("--kv-cache-memory-gb", type=float, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--enable-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", default=None, help="require it as a Bearer token (or $FOLOVLLM_API_KEY)"
    )
    p.add_argument(
        "--served-model-name", default=None, help="the name clients use (default: --model)"
    )
    p.add_argument("--max-queue-len", type=int, default=1024, help="waiting requests before 429")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--chat-template", default=None, help="a Jinja file (default: the tokenizer's)")
    p.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish at shutdown"
    )
    p.add_argument("--log-level", default="info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m folovllm", description=f"FoloVLLM ({MILESTONE})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a model: architecture, size, KV bytes per token")
    _add_engine_args(info)
    info.set_defaults(func=cmd_info)
    gen = sub.add_parser("generate", help="generate text")
    _add_engine_args(gen)
    gen.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--log-level", default="WARNING")
    gen.set_defaults(func=cmd_generate)
    demo = sub.add_parser("demo", help="what `make demo` runs at this milestone")
    demo.set_defaults(func=cmd_demo)
    from folovllm.quantize.calibration import DEFAULT_NSAMPLES, DEFAULT_SEQLEN

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server")
    _add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)
    quant = sub.add_parser("quantize", help="quantize a model to 4 bits (GPTQ checkpoint format)")
    quant.add_argument("--model", default="folo-tiny", help="local directory or a name in models/")
    quant.add_argument("--out", required=True, help="directory to write the checkpoint to")
    quant.add_argument("--bits", type=int, default=4)
    quant.add_argument("--group-size", type=int, default=128, help="-1, 32, 64 or 128")
    quant.add_argument("--desc-act", action="store_true", help="act-order (GPTQ only)")
    quant.add_argument("--asym", action="store_true", help="a zero point per group (default sym)")
    quant.add_argument("--damp", type=float, default=0.01, help="fraction of mean diag(H) added")
    quant.add_argument("--method", default="gptq", choices=["gptq", "rtn"])
    quant.add_argument("--calib", default=None, help="calibration text file (default: held-out)")
    quant.add_argument("--nsamples", type=int, default=DEFAULT_NSAMPLES)
    quant.add_argument("--seqlen", type=int, default=DEFAULT_SEQLEN)
    quant.add_argument("--device", default="cpu")
    quant.set_defaults(func=cmd_quantize)
    ppl = sub.add_parser("perplexity", help="perplexity on the held-out evaluation text")
    ppl.add_argument("models", nargs="+", help="model directories (plain or GPTQ)")
    ppl.add_argument("--device", default="cpu")
    ppl.add_argument("--json", default=None)
    ppl.set_defaults(func=cmd_perplexity)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
