"""Download flash-attn 4 and its runtime wheels (CPython 3.12, x86-64 Linux) into .whl/ for carrying
to the GPU machine, which has no network.

A wheel over 60 MiB is split into parts (``split -b 60m``), and the files are packed into folders
.whl/1, .whl/2, ... of at most 62 MiB each, so each fits one device call's carry (64 MiB): carry
one folder per call, copying it to /tmp/whl, then reassemble and install (the printed commands).

    .venv/bin/python tools/fa4_wheels.py [--pip .venv/bin/pip]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

WHEELS = [
    "flash-attn-4==4.0.0b40",
    "nvidia-cutlass-dsl==4.8.1",
    "nvidia-cutlass-dsl-libs-base==4.8.1",
    "nvidia-cutlass-dsl-libs-core==4.8.1",
    "nvidia-cutlass-dsl-libs-cu13==4.8.1",
    "cuda-bindings",
    "cuda-pathfinder",
    "apache-tvm-ffi>=0.1.11,<0.2",  # flash-attn-4's own bounds
    "torch-c-dlpack-ext",
    "quack-kernels>=0.5.3",
    "einops==0.8.1",
]
PLATFORM = ["--python-version", "3.12", "--implementation", "cp"] + [
    a
    for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    for a in ("--platform", p)
]
MiB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pip", default=".venv/bin/pip")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1] / ".whl"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for w in WHEELS:
        cmd = [args.pip, "download", "-q", "--pre", "--no-deps", "--only-binary=:all:", *PLATFORM]
        subprocess.run([*cmd, "-d", str(root), w], check=True)
    for f in sorted(root.glob("*.whl")):
        if f.stat().st_size > 60 * MiB:
            subprocess.run(["split", "-b", "60m", f.name, f.name + ".part-"], cwd=root, check=True)
            f.unlink()
    folders: list[list[Path]] = []
    for f in sorted(root.iterdir(), key=lambda p: -p.stat().st_size):
        size = f.stat().st_size
        fit = next(
            (d for d in folders if sum(x.stat().st_size for x in d) + size <= 62 * MiB), None
        )
        fit.append(f) if fit is not None else folders.append([f])
    for i, files in enumerate(folders, 1):
        total = sum(f.stat().st_size for f in files) / MiB
        (root / str(i)).mkdir()
        for f in files:
            f.rename(root / str(i) / f.name)
        print(f".whl/{i}: {len(files)} files, {total:.1f} MiB")
    print("\nOn the GPU machine, one device call per folder (carry .whl/N):")
    print("  mkdir -p /tmp/whl && cp .whl/N/* /tmp/whl/")
    print("then, in the last call:")
    print(
        '  cd /tmp/whl && for p in *.part-aa; do [ -e "$p" ] && cat "${p%.part-aa}".part-* '
        '> "${p%.part-aa}"; done; cd - >/dev/null\n'
        "  pip install -q --no-index --no-deps --target /tmp/site /tmp/whl/*.whl\n"
        "  export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH"
    )


if __name__ == "__main__":
    main()
