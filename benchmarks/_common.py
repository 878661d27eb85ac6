"""Shared benchmark plumbing: put one milestone's engine on the path, describe the machine."""

from __future__ import annotations

import importlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def milestone_dir(name: str) -> Path:
    """'m2' or 'm2_batching' -> the milestone directory; a path to a directory (a snapshot of
    an earlier state of a milestone, for before/after runs) is used as it is."""
    if "/" in name and Path(name).is_dir():
        return Path(name).resolve()
    prefix = name.split("_")[0]
    matches = sorted(p for p in ROOT.glob(f"{prefix}_*") if p.is_dir())
    if not matches:
        raise SystemExit(f"no milestone directory for {name!r}")
    return matches[0]


def import_engine(milestone: str):
    """Import ``folovllm`` from one milestone directory (only one per process)."""
    path = milestone_dir(milestone)
    if "folovllm" in sys.modules:
        loaded = Path(sys.modules["folovllm"].__file__).resolve()
        if not loaded.is_relative_to(path):
            raise SystemExit(
                f"folovllm already imported from {loaded}; use one milestone per process"
            )
    sys.path.insert(0, str(path))
    return importlib.import_module("folovllm")


def add_engine_args(ap) -> None:
    """Flags for options that later milestones add (ignored where unset)."""
    ap.add_argument("--attention-backend", default=None, help="m4+: auto | torch | triton | flash")
    ap.add_argument("--enforce-eager", action="store_true", help="m4+: no CUDA graphs")
    ap.add_argument("--block-size", type=int, default=None, help="m3+: KV block size")
    ap.add_argument("--kv-cache-dtype", default=None, help="m4+: auto | fp8")
    ap.add_argument("--cudagraph-mode", default=None, help="m4+: full | decode")
    ap.add_argument(
        "--async-scheduling",
        choices=("on", "off"),
        default=None,
        help="m4+: overlap the host's step N+1 with step N (default: on for CUDA)",
    )


def engine_options(args) -> dict[str, Any]:
    """The later-milestone options that were given on the command line."""
    opts: dict[str, Any] = {}
    if getattr(args, "attention_backend", None):
        opts["attention_backend"] = args.attention_backend
    if getattr(args, "enforce_eager", False):
        opts["enforce_eager"] = True
    if getattr(args, "block_size", None):
        opts["block_size"] = args.block_size
    if getattr(args, "kv_cache_dtype", None):
        opts["kv_cache_dtype"] = args.kv_cache_dtype
    if getattr(args, "cudagraph_mode", None):
        opts["cudagraph_mode"] = args.cudagraph_mode
    if getattr(args, "async_scheduling", None):
        opts["async_scheduling"] = args.async_scheduling == "on"
    return opts


# The H100's measured device-to-device copy rate (bytes read + written per second), the bandwidth
# every "share of the floor" is judged against; --bandwidth overrides it for other cards.
H100_COPY_BYTES_PER_S = 3.02e12


def add_floor_args(ap) -> None:
    ap.add_argument(
        "--bandwidth", type=float, default=H100_COPY_BYTES_PER_S,
        help="memory bandwidth for the floor, bytes/s (default: the H100's measured 3.02e12)",
    )  # fmt: skip


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count
        )
    return info


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
