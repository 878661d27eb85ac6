#!/usr/bin/env python3
"""Exercises: write one function of a milestone yourself, then let that milestone's tests judge it.

Usage (from the repository root; stdlib only)::

    python tools/exercise.py make m3 KVCacheManager.allocate_slots [--dir DIR]
        copy m3_paged/ to DIR with that function's body replaced by ``raise NotImplementedError``;
        print where the function is, what to read first and which tests exercise it
    python tools/exercise.py check [--dir DIR] [-- PYTEST_ARGS...]
        run the milestone's own tests against the copy in DIR (or only PYTEST_ARGS, e.g.
        tests/test_scheduler.py); say which pass and which fail
    python tools/exercise.py list
        the suggested exercises

``make exercise-m3 FN=KVCacheManager.allocate_slots`` and ``make check-exercise`` call these, with
``EXERCISE_DIR`` (default: $TMPDIR/folovllm-exercise, outside the repository). The function is named
``function`` (module level) or ``Class.method``, searched in every ``folovllm/**/*.py`` of the
milestone; the signature and the docstring stay, everything after them is removed. Exit status:
0 ok (check: every test passed), 1 tests failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = Path(tempfile.gettempdir()) / "folovllm-exercise"
STATE = ".exercise.json"
IGNORE = shutil.ignore_patterns(
    "__pycache__", ".pytest_cache", ".hypothesis", "*.pyc", "*.egg-info"
)

# (milestone, function, what it teaches): the list on the site's exercises page.
SUGGESTED = [
    (
        "m0",
        "SamplingParams.__post_init__",
        "validation: every bad value rejected with a clear message",
    ),
    ("m0", "Request.transition", "the request state machine and its illegal transitions"),
    ("m1", "apply_top_p", "top-p over a batch without a Python loop, ties and p = 1"),
    (
        "m1",
        "apply_repetition_penalty",
        "positive and negative logits, tokens seen in prompt and output",
    ),
    ("m1", "IncrementalDetokenizer.update", "streaming text, multi-byte characters, stop strings"),
    ("m1", "RotaryEmbedding.forward", "RoPE by position, rotate-half layout"),
    ("m2", "Scheduler.schedule", "running first, then waiting under three limits"),
    (
        "m2",
        "ModelRunner._prepare_inputs",
        "a flat batch: input_ids, positions, slot_mapping, query_start_loc",
    ),
    ("m3", "KVCacheManager.allocate_slots", "blocks only when tokens need them, all or nothing"),
    ("m3", "BlockPool.allocate", "the free queue and reference counts"),
    (
        "m3",
        "Scheduler.schedule",
        "the preemption loop: evict the newest, retry, no admission after",
    ),
    (
        "m8",
        "AsyncScheduler.update_after_schedule",
        "async scheduling's books: computed at launch, one placeholder per token in flight",
    ),
    (
        "m8",
        "AsyncScheduler._last_token_in_flight",
        "a stop by length is known ahead: no row for a request whose last token is in flight",
    ),
    (
        "m8",
        "LLMEngine._step_async",
        "the async pipeline's order: launch step N+1, then apply step N",
    ),
    (
        "m8",
        "InputBatch.fill_placeholders",
        "the in-flight token's id into the next inputs, on the device",
    ),
    (
        "m8",
        "SamplingMetadata.from_requests",
        "sampling parameters on the device without a sync: all_greedy on the host, pinned copies",
    ),
    (
        "m8",
        "IncrementalDetokenizer.catch_up",
        "text only when a request ends: queue the tokens, decode the span once",
    ),
]


class UsageError(Exception):
    pass


def milestone_dir(key: str) -> Path:
    dirs = sorted(
        (p for p in REPO_ROOT.iterdir() if p.is_dir() and re.fullmatch(r"m\d+_\w+", p.name)),
        key=lambda p: int(p.name[1:].split("_")[0]),
    )
    for d in dirs:
        if d.name == key or d.name.startswith(key + "_"):
            return d
    raise UsageError(f"unknown milestone {key!r} (have: {', '.join(d.name for d in dirs)})")


def find_function(pkg: Path, name: str) -> tuple[Path, ast.FunctionDef]:
    """The one definition of ``name`` (``func`` or ``Class.method``) under ``pkg``."""
    cls, _, func = name.rpartition(".")
    hits = []
    for path in sorted(pkg.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        scopes = (
            [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
            if cls
            else [tree]
        )
        for scope in scopes:
            for node in scope.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func:
                    hits.append((path, node))
    if not hits:
        raise UsageError(f"no function {name!r} in {pkg.parent.name}/folovllm (give Class.method)")
    if len(hits) > 1:
        where = ", ".join(str(p.relative_to(pkg.parent)) for p, _ in hits)
        raise UsageError(f"{name!r} is defined more than once ({where}); give Class.method")
    return hits[0]


def blank_out(path: Path, node: ast.FunctionDef, name: str) -> int:
    """Replace the body after the docstring with ``raise NotImplementedError``; lines removed."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    body = node.body
    has_doc = (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    if has_doc and len(body) == 1:
        raise UsageError(f"{name} has only a docstring: nothing to write")
    first = body[1] if has_doc else body[0]
    start = first.lineno - 1  # 0-based first line of the code to remove
    if first.lineno == node.lineno:  # one-line "def f(): return x"
        raise UsageError(f"{name} is a one-liner; pick a function with a body")
    indent = " " * first.col_offset
    raise_line = f'{indent}raise NotImplementedError("exercise: write {name}")\n'
    removed = node.end_lineno - start
    lines[start : node.end_lineno] = [raise_line]
    path.write_text("".join(lines), encoding="utf-8")
    return removed


def reading_list(mdir: Path, name: str) -> tuple[list[str], list[str]]:
    """Headings of the note that mention the function, and the test files that use it."""
    short = name.rpartition(".")[2]
    headings, current = [], None
    note = mdir / "NOTE.md"
    if note.is_file():
        for line in note.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                current = line.lstrip("# ").strip()
            elif current and (name in line or f"{short}(" in line or f"`{short}`" in line):
                if current not in headings:
                    headings.append(current)
    tests = sorted(
        str(p.relative_to(mdir))
        for p in (mdir / "tests").glob("test_*.py")
        if short in p.read_text(encoding="utf-8")
    )
    return headings, tests


def cmd_make(key: str, name: str, out: Path, force: bool) -> int:
    mdir = milestone_dir(key)
    path, node = find_function(mdir / "folovllm", name)
    rel = path.relative_to(mdir)
    if out.exists():
        state = out / STATE
        if not (force or state.is_file()):
            raise UsageError(f"{out} exists and is not an exercise folder; choose another --dir")
        shutil.rmtree(out)
    shutil.copytree(mdir, out, ignore=IGNORE)
    removed = blank_out(out / rel, node, name)
    (out / STATE).write_text(
        json.dumps({"milestone": mdir.name, "function": name, "file": str(rel)}, indent=2) + "\n",
        encoding="utf-8",
    )
    headings, tests = reading_list(mdir, name)
    print(f"exercise: write {name} ({removed} lines removed)")
    print(f"  your copy of {mdir.name}: {out}")
    print(f"  the function:  {out / rel}:{node.lineno}")
    print("read first:")
    print(f"  {mdir.name}/NOTE.md (or NOTE.en.md), the sections:")
    for h in headings or ["(the note does not name it; start from the file's docstring)"]:
        print(f"    - {h}")
    print("tests that exercise it:")
    for t in tests or ["(run them all)"]:
        print(f"  {t}")
    print("then: make check-exercise  (or python tools/exercise.py check --dir ...)")
    return 0


def cmd_check(out: Path, pytest_args: list[str]) -> int:
    state_file = out / STATE
    if not state_file.is_file():
        raise UsageError(
            f"{out} is not an exercise folder (make one with: make exercise-m3 FN=...)"
        )
    state = json.loads(state_file.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ, PYTHONPATH=str(out))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        cmd += [f"--junitxml={report}", *(pytest_args or ["tests"])]
        proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        if not report.is_file():
            sys.stdout.write(proc.stdout + proc.stderr)
            raise UsageError("pytest did not run")
        passed, failed = [], []
        for case in ET.parse(report).getroot().iter("testcase"):
            test = f"{case.get('classname', '').rpartition('.')[2]}.py::{case.get('name')}"
            if case.find("skipped") is not None:
                continue
            bad = case.find("failure") is not None or case.find("error") is not None
            (failed if bad else passed).append(test)
    print(f"{state['function']} in {state['milestone']} ({out}):")
    print(f"  {len(passed)} passed, {len(failed)} failed")
    for t in failed:
        print(f"  FAIL {t}")
    if not failed:
        print("  every test of the milestone passes with your version")
    return 1 if failed else 0


def cmd_list() -> int:
    for m, fn, what in SUGGESTED:
        print(f"make exercise-{m} FN={fn:<32} # {what}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="copy a milestone with one function blanked out")
    mk.add_argument("milestone")
    mk.add_argument("function")
    mk.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    mk.add_argument(
        "--force", action="store_true", help="replace DIR even if it is not an exercise"
    )
    ck = sub.add_parser("check", help="run the milestone's tests against the exercise")
    ck.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ck.add_argument("pytest_args", nargs="*")
    sub.add_parser("list", help="suggested exercises")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "make":
            return cmd_make(args.milestone, args.function, args.dir.resolve(), args.force)
        if args.cmd == "check":
            return cmd_check(args.dir.resolve(), args.pytest_args)
        return cmd_list()
    except UsageError as exc:
        print(f"exercise.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
