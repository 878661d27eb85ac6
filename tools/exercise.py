#!/usr/bin/env python3
"""Exercises: write one function of a milestone yourself, then let that milestone's tests judge it.

Usage (from the repository root; stdlib only)::

    python tools/exercise.py make m3 KVCacheManager.allocate_slots [--dir DIR] [--lang zh|en]
        copy m3_paged/ to DIR with that function's body replaced by ``raise NotImplementedError``;
        print where the function is, which sections of the note to read first, which tests name
        it and the command that runs just those
    python tools/exercise.py check [--dir DIR] [--lang zh|en] [-- PYTEST_ARGS...]
        run the milestone's own tests against the copy in DIR (or only PYTEST_ARGS, e.g.
        tests/test_scheduler.py); say which pass and which fail, and show the first failure
    python tools/exercise.py list [--lang zh|en]
        the suggested exercises

``make exercise-m3 FN=KVCacheManager.allocate_slots`` and ``make check-exercise`` call these, with
``EXERCISE_DIR`` (default: $TMPDIR/folovllm-exercise, outside the repository). The function is named
``function`` (module level) or ``Class.method``, searched in every ``folovllm/**/*.py`` of the
milestone; the signature and the docstring stay, everything after them is removed.

Language: ``--lang``, else LC_ALL, LC_MESSAGES or LANG (the first one set): ``zh*`` gives Chinese,
anything else English. The note to read is NOTE.md (Chinese) or NOTE.en.md (English).

Which tests name the function: found by reading the milestone's tests (no test is run). A test
counts if its code, or a helper or fixture it uses (in its file or in conftest.py), names the
function (``Class.method``: the method's name; a constructor or ``forward``: the class's name).
If no test does, the tests that name a function of the package that calls it are given instead
(or that calls one of those, up to three levels), with the chain of callers. Tests that reach
the function only through the engine are not listed: ``check`` without arguments runs them all.

Exit status: 0 ok (check: every test passed), 1 tests failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
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
LANGS = ("zh", "en")
MAX_NODE_IDS = 12  # more tests than this: the command names their files instead

# (milestone, function, what it trains in Chinese, in English): learn/exercises.md and
# learn/exercises.en.md show exactly these rows (tests/test_exercise.py checks it).
SUGGESTED = [
    (
        "m0",
        "SamplingParams.__post_init__",
        "参数校验：每个非法值都给出清楚的报错",
        "validation: every bad value rejected with a clear message",
    ),
    (
        "m0",
        "Request.transition",
        "请求状态机与非法的状态转换",
        "the request state machine and its illegal transitions",
    ),
    (
        "m1",
        "apply_top_p",
        "整个 batch 一起做 top-p，不写 Python 循环；并列和 p = 1 的边界",
        "top-p over a whole batch without a Python loop; ties and p = 1",
    ),
    (
        "m1",
        "apply_repetition_penalty",
        "正负 logit 的处理，prompt 和输出里出现过的 token",
        "positive and negative logits, tokens seen in prompt and output",
    ),
    (
        "m1",
        "IncrementalDetokenizer.update",
        "流式输出文字、多字节字符、stop 字符串",
        "streaming text, multi-byte characters, stop strings",
    ),
    (
        "m1",
        "RotaryEmbedding.forward",
        "按位置做 RoPE，rotate-half 布局",
        "RoPE by position, the rotate-half layout",
    ),
    (
        "m2",
        "Scheduler.schedule",
        "先 running 再 waiting，接纳新请求的三个条件",
        "running first, then waiting, under three admission limits",
    ),
    (
        "m2",
        "ModelRunner._prepare_inputs",
        "扁平 batch：`input_ids`、`positions`、`slot_mapping`、`query_start_loc`",
        "a flat batch: `input_ids`, `positions`, `slot_mapping`, `query_start_loc`",
    ),
    (
        "m3",
        "KVCacheManager.allocate_slots",
        "只在 token 需要时拿 block，要么全拿到要么一个不拿",
        "blocks only when tokens need them, all or nothing",
    ),
    (
        "m3",
        "BlockPool.allocate",
        "free queue 和引用计数",
        "the free queue and reference counts",
    ),
    (
        "m3",
        "Scheduler.schedule",
        "抢占循环：抢占最新的、重试、抢占过的那一步不接纳新请求",
        "the preemption loop: evict the newest, retry, no admission after a preemption",
    ),
    (
        "m5",
        "Scheduler._num_new_tokens",
        "一个请求这一步算几个 token：剩下的全部；开了 chunking 时切到 budget 和"
        " `long_prefill_token_threshold` 以内",
        "how many tokens a request computes this step: all it has left, or with chunking a chunk"
        " cut to the budget and `long_prefill_token_threshold`",
    ),
    (
        "m5",
        "Scheduler.schedule",
        "一个 token budget：先 running（decode 和 prefill 到一半的下一块），再把 waiting 的 prompt"
        " 切到剩下的大小",
        "one token budget: running requests first (decodes and the next chunk of a mid-prefill"
        " prompt), then waiting prompts cut to what is left",
    ),
    (
        "m6",
        "update_block_hashes",
        "hash 链：每个满 block 的 hash 包含父 hash、token id 和 salt；增量计算，算过的 block"
        " 不再算",
        "the hash chain: a full block's hash covers its parent's hash, its token ids and the"
        " salt; incremental, no block hashed twice",
    ),
    (
        "m6",
        "KVCacheManager.get_computed_blocks",
        "最长的已缓存前缀：沿 hash 链查到第一次未命中，最后一个 token 总要重算",
        "the longest cached prefix: follow the hash chain to the first miss; the last token is"
        " always computed",
    ),
    (
        "m6",
        "BlockPool.free",
        "引用计数减到 0 的 block 带着 hash 排到 LRU free queue 的末尾；不能减到 0 以下",
        "a block whose last reference goes joins the end of the LRU free queue with its hash"
        " kept; never below zero",
    ),
    (
        "m7",
        "pack_rows",
        "8 个 4-bit 值放进一个 int32：第 i 个在第 4i..4i+3 位，大于等于 2^31 的字回绕成负数",
        "eight 4-bit values per int32: value i in bits 4i..4i+3, words >= 2^31 wrap to negative",
    ),
    (
        "m7",
        "GPTQ.add_batch",
        "输入的 Hessian `H = 2/n Σ x xᵀ`，分批累加成一个滑动平均",
        "the inputs' Hessian `H = 2/n Σ x xᵀ` as a running average over uneven batches",
    ),
    (
        "m7",
        "gptq_quantize",
        "GPTQ 的列更新：逐列量化，把误差按逆 Hessian 分摊到还没量化的列；lazy batch、group、"
        "act-order",
        "GPTQ's column update: quantize one column, spread its error over the columns not yet"
        " quantized by the inverse Hessian; lazy batches, groups, act-order",
    ),
    (
        "m8",
        "AsyncScheduler.update_after_schedule",
        "异步调度的账：发射出去的一步算作已计算，每个在 GPU 上的 token 一个占位（只给会采样的那一步）",
        "async scheduling's books: a launched step counts as computed, one placeholder per token"
        " in flight (only for a step that samples)",
    ),
    (
        "m8",
        "AsyncScheduler._last_token_in_flight",
        "按长度停止是提前知道的：最后一个 token（按 `max_tokens` 或 `max_model_len`）还在途的请求"
        "不再占一行",
        "a stop by length is known ahead: a request whose last token (by `max_tokens` or"
        " `max_model_len`) is in flight gets no row",
    ),
    (
        "m8",
        "LLMEngine._step_async",
        "异步流水线的顺序：先调度并发射第 N+1 步，再处理第 N 步；什么时候要先等",
        "the async pipeline's order: schedule and launch step N+1, then apply step N; when to"
        " wait first",
    ),
    (
        "m8",
        "InputBatch.fill_placeholders",
        "在 GPU 上的 token 的 id 在设备上拷进下一步的输入，不同步",
        "the in-flight token's id copied into the next step's inputs on the device, no sync",
    ),
    (
        "m8",
        "SamplingMetadata.from_requests",
        "不经同步把采样参数送到设备上：`all_greedy` 在 host 上决定，经 pinned 内存拷贝",
        "the sampling parameters on the device without a sync: `all_greedy` decided on the"
        " host, pinned copies",
    ),
    (
        "m8",
        "IncrementalDetokenizer.catch_up",
        "请求结束时才要文本：把 token 排队，整段解码一次；只有带 stop string 时才逐个 token",
        "text only when a request ends: queue its tokens and decode the span once; token by"
        " token only with stop strings",
    ),
    (
        "m9",
        "OpenAIServing._max_tokens",
        "上下文里的 `max_tokens`：不给就是 prompt 剩下的空间；"
        "prompt + `max_tokens` 超过 `max_model_len` 是一个点名 `max_tokens` 的 400",
        "`max_tokens` within the context: unset means the room the prompt leaves; prompt +"
        " `max_tokens` over `max_model_len` is a 400 naming `max_tokens`",
    ),
    (
        "m9",
        "OpenAIServing._merge",
        "`n > 1`：一个请求的 n 条流按到达顺序合成一条；一条出错就整体出错，提前结束时取消还在跑的那些",
        "`n > 1`: one job's n streams merged in arrival order; one error fails the whole,"
        " leaving early cancels the ones still running",
    ),
    (
        "m10",
        "RowParallelLinear.shard_weight",
        "row-parallel 层每个 rank 读哪一段：按输入维切；bias 整份；只有一个 group 的 GPTQ scales 各 rank 共用",
        "which slice a row-parallel rank reads: the input dimension split; the bias whole;"
        " GPTQ scales of a single group shared by every rank",
    ),
    (
        "m10",
        "VocabParallelEmbedding.forward",
        "每个 rank 只查自己那段词表：段外的 id 给 0，all-reduce 把各段加成完整的查表结果",
        "each rank looks up only its slice of the vocabulary: ids outside give zeros, the"
        " all-reduce sums the slices into the full lookup",
    ),
    (
        "m10",
        "verify_tensor_parallel",
        "进程启动前检查每一种切分都整除：报错点名字段，并列出这个模型允许的 `tensor_parallel_size`",
        "every split exact before any process starts: the error names the field and lists the"
        " `tensor_parallel_size` values this model allows",
    ),
]

# Every line the tool prints to a learner, in both languages.
MSG = {
    "title": {
        "zh": "练习：写出 {name}（删掉了 {removed} 行）",
        "en": "exercise: write {name} ({removed} lines removed)",
    },
    "copy": {"zh": "  你的 {milestone} 拷贝：{out}", "en": "  your copy of {milestone}: {out}"},
    "where": {"zh": "  函数在：      {where}", "en": "  the function:  {where}"},
    "read": {"zh": "先读：", "en": "read first:"},
    "docstring": {
        "zh": "  函数的 docstring 就是题目；{file} 开头的模块 docstring 讲了整体设计",
        "en": "  the function's docstring is the task; the module docstring of {file} gives the design",
    },
    "no_docstring": {
        "zh": "  这个函数没有 docstring：题目就是它的测试检查的东西；{file} 开头的模块 docstring 讲了整体设计",
        "en": "  the function has no docstring: the task is what its tests check; the module docstring"
        " of {file} gives the design",
    },
    "note_sections": {"zh": "  {note} 里的这几节：", "en": "  {note}, the sections:"},
    "note_none": {
        "zh": "  {note}（笔记没有点名这个函数，从文件的 docstring 读起）",
        "en": "  {note} (the note does not name this function; start from the file's docstring)",
    },
    "tests_direct": {
        "zh": "点名测这个函数的测试（{count} 个）：",
        "en": "tests that name it ({count}):",
    },
    "tests_callers": {
        "zh": "没有测试直接点名它。包里用到它的地方：{chain}（A <- B：B 的代码点名了 A）\n"
        "点名 {last} 的测试（{count} 个）：",
        "en": "no test names it directly. Where the package uses it: {chain} (A <- B: B's code"
        " names A)\ntests that name {last} ({count}):",
    },
    "tests_none": {
        "zh": "没有测试直接点名它：跑整套测试",
        "en": "no test names it directly: run the whole suite",
    },
    "more": {"zh": "  ……还有 {count} 个", "en": "  ... and {count} more"},
    "run_these": {"zh": "只跑这些：", "en": "run just those:"},
    "run_files": {
        "zh": "只跑这些文件（里面还有别的测试）：",
        "en": "run just their files (which hold other tests too):",
    },
    "run_all": {
        "zh": "然后：make check-exercise，或者：",
        "en": "then: make check-exercise, or:",
    },
    "engine_too": {
        "zh": "经由引擎用到它的测试不在上面：最后用 make check-exercise 跑整套",
        "en": "tests that reach it only through the engine are not listed: finish with make"
        " check-exercise (the whole suite)",
    },
    "summary": {
        "zh": "{function}，{milestone}（{out}）：",
        "en": "{function} in {milestone} ({out}):",
    },
    "counts": {
        "zh": "  {passed} 个通过，{failed} 个失败，{skipped} 个跳过",
        "en": "  {passed} passed, {failed} failed, {skipped} skipped",
    },
    "all_pass": {
        "zh": "  你的版本通过了这些测试",
        "en": "  every test run passes with your version",
    },
    "first_failure": {"zh": "第一个失败：{test}", "en": "first failure: {test}"},
    "at": {"zh": "  抛出的位置：{where}", "en": "  raised at: {where}"},
    "still_blank": {
        "zh": "  （函数体还是空的：先把它写出来）",
        "en": "  (the function is still blank: write its body first)",
    },
    "no_tests": {"zh": "一个测试也没跑：{args}", "en": "no test ran: {args}"},
    "pytest_failed": {"zh": "pytest 没有运行", "en": "pytest did not run"},
    "not_exercise": {
        "zh": "{out} 不是练习目录（先用 make exercise-m3 FN=... 建一个）",
        "en": "{out} is not an exercise folder (make one with: make exercise-m3 FN=...)",
    },
    "exists": {
        "zh": "{out} 已存在且不是练习目录；换一个 --dir",
        "en": "{out} exists and is not an exercise folder; choose another --dir",
    },
}


class UsageError(Exception):
    pass


def default_lang(environ=None) -> str:
    """zh or en from the locale: the first of LC_ALL, LC_MESSAGES, LANG that is set."""
    environ = os.environ if environ is None else environ
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(var, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def say(lang: str, key: str, **kw) -> str:
    return MSG[key][lang].format(**kw)


def milestone_dir(key: str) -> Path:
    dirs = sorted(
        (p for p in REPO_ROOT.iterdir() if p.is_dir() and re.fullmatch(r"m\d+_\w+", p.name)),
        key=lambda p: int(p.name[1:].split("_")[0]),
    )
    for d in dirs:
        if d.name == key or d.name.startswith(key + "_"):
            return d
    raise UsageError(f"unknown milestone {key!r} (have: {', '.join(d.name for d in dirs)})")


def _defs(pkg: Path):
    """Every (path, class name or "", function node) defined at module or class level."""
    for path in sorted(pkg.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, "", node
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield path, node.name, item


def find_function(pkg: Path, name: str) -> tuple[Path, ast.FunctionDef]:
    """The one definition of ``name`` (``func`` or ``Class.method``) under ``pkg``."""
    cls, _, func = name.rpartition(".")
    hits = [(p, n) for p, c, n in _defs(pkg) if c == cls and n.name == func]
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


# -- what to read ---------------------------------------------------------------------------------
def note_path(mdir: Path, lang: str) -> Path:
    en = mdir / "NOTE.en.md"
    return en if lang == "en" and en.is_file() else mdir / "NOTE.md"


def note_sections(note: Path, name: str) -> list[str]:
    """Headings of ``note`` whose section names the function (``Part › section`` below a part).

    A section that names it only in a table (the list of changed files) is given only when no
    other section names it. Lines in code blocks are text, never headings."""
    if not note.is_file():
        return []
    short = name.rpartition(".")[2]
    names = re.compile(
        rf"(?<![\w.]){re.escape(name)}(?!\w)|{re.escape(short)}\(|`{re.escape(short)}`"
    )
    prose, tables = [], []
    parents: dict[int, str] = {}
    current, fenced = None, False
    for line in note.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = re.match(r"(#+)\s+(.*)", line) if not fenced else None
        if heading:
            level, text = len(heading.group(1)), heading.group(2).strip()
            parents = {k: v for k, v in parents.items() if k < level}
            parents[level] = text
            below_title = [parents[k] for k in sorted(parents) if k > 1]
            current = " › ".join(below_title) or text  # the title: the note's opening lines
            if names.search(text) and current not in prose:
                prose.append(current)
        elif current and names.search(line):
            target = tables if line.lstrip().startswith("|") else prose
            if current not in target:
                target.append(current)
    return prose or tables


# -- which tests name it --------------------------------------------------------------------------
def _idents(node: ast.AST) -> set[str]:
    """Every name a piece of code uses: variables, attributes, imports, parameters, and string
    constants that look like a name (``monkeypatch.setattr(obj, "allocate_slots", ...)``)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).rpartition(".")[2])
            out.add(n.name.rpartition(".")[2])
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            out.add(n.value)
    return out


def _named_by(cls: str, func: str) -> set[str]:
    """What code writes when it uses ``cls.func``: a constructor or a module's forward is called
    through the class (``Sampler(...)``, ``rope(...)``), anything else by its own name."""
    if cls and func in ("__init__", "__post_init__", "__new__", "__call__", "forward"):
        return {cls}
    return {func}


def _module_defs(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level functions, classes and assigned names of a test file or conftest."""
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out[n.id] = node
    return out


def _tests_of(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """(node id after ``path::``, node) of every test function and test method."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test"
        ):
            out.append((node.name, node))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(
                    item, (ast.FunctionDef, ast.AsyncFunctionDef)
                ) and item.name.startswith("test"):
                    out.append((f"{node.name}::{item.name}", item))
    return out


def tests_naming(mdir: Path, targets: set[str]) -> list[str]:
    """Node ids (``tests/test_x.py::test_y``) of the tests whose code, or a helper, fixture or
    module-level name they use (in their file or conftest.py, followed transitively), names one
    of ``targets``."""
    tdir = mdir / "tests"
    files = sorted(tdir.glob("test_*.py"))
    conftest = tdir / "conftest.py"
    shared = (
        _module_defs(ast.parse(conftest.read_text(encoding="utf-8"))) if conftest.is_file() else {}
    )
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defs = {**shared, **_module_defs(tree)}
        uses = {name: _idents(node) for name, node in defs.items()}
        # the helpers that name a target, then those that use one of them, until nothing changes
        reach = {name for name, used in uses.items() if used & targets}
        grown = True
        while grown:
            more = {name for name, used in uses.items() if name not in reach and used & reach}
            reach |= more
            grown = bool(more)
        for node_id, node in _tests_of(tree):
            names = _idents(node)
            if names & (targets | reach):
                found.append(f"{path.relative_to(mdir).as_posix()}::{node_id}")
    return found


def callers(pkg: Path, names: list[str]) -> list[str]:
    """``Class.method`` / ``function`` of every definition in the package that names one of
    ``names`` (each ``function`` or ``Class.method``), those themselves left out."""
    targets: set[str] = set()
    for name in names:
        cls, _, func = name.rpartition(".")
        targets |= _named_by(cls, func)
    out = []
    for _, c, node in _defs(pkg):
        qual = f"{c}.{node.name}" if c else node.name
        if qual not in names and qual not in out and _idents(node) & targets:
            out.append(qual)
    return out


def find_tests(mdir: Path, name: str, depth: int = 3) -> tuple[list[str], list[list[str]]]:
    """(tests, chain): the tests that name the function, chain empty; if none, the tests that
    name a function calling it, or calling one of those (up to ``depth`` levels), and the
    callers level by level up to the one those tests name."""
    seen, level, chain = [name], [name], []
    for _ in range(depth + 1):
        targets: set[str] = set()
        for q in level:
            cls, _, func = q.rpartition(".")
            targets |= _named_by(cls, func)
        tests = tests_naming(mdir, targets)
        if tests:
            return tests, chain
        level = [q for q in callers(mdir / "folovllm", level) if q not in seen]
        if not level:
            break
        seen += level
        chain.append(level)
    return [], []


def all_tests(mdir: Path, rel: str) -> list[str]:
    """Every test of one test file, as node ids."""
    tree = ast.parse((mdir / rel).read_text(encoding="utf-8"))
    return [f"{rel}::{node_id}" for node_id, _ in _tests_of(tree)]


def _few(names: list[str], keep: int = 3) -> str:
    return ", ".join(names[:keep]) + (f" (+{len(names) - keep})" if len(names) > keep else "")


def check_command(out: Path, tests: list[str], mdir: Path) -> tuple[str, bool]:
    """The command that runs ``tests`` on the copy (none: the whole suite), and whether it had
    to name whole files that hold other tests too (too many node ids for one line)."""
    files = list(dict.fromkeys(t.split("::")[0] for t in tests))
    args = []
    for f in files:
        mine = [t for t in tests if t.split("::")[0] == f]
        args += [f] if set(mine) == set(all_tests(mdir, f)) else mine
    by_file = len(args) > MAX_NODE_IDS
    if by_file:
        args = files
    py = ".venv/bin/python" if (REPO_ROOT / ".venv" / "bin" / "python").exists() else "python3"
    cmd = [py, "tools/exercise.py", "check", "--dir", str(out)] + (["--", *args] if args else [])
    return " ".join(shlex.quote(c) for c in cmd), by_file


# -- the commands ---------------------------------------------------------------------------------
def cmd_make(key: str, name: str, out: Path, force: bool, lang: str) -> int:
    mdir = milestone_dir(key)
    path, node = find_function(mdir / "folovllm", name)
    rel = path.relative_to(mdir)
    if out.exists():
        state = out / STATE
        if not (force or state.is_file()):
            raise UsageError(say(lang, "exists", out=out))
        shutil.rmtree(out)
    shutil.copytree(mdir, out, ignore=IGNORE)
    removed = blank_out(out / rel, node, name)
    (out / STATE).write_text(
        json.dumps({"milestone": mdir.name, "function": name, "file": str(rel)}, indent=2) + "\n",
        encoding="utf-8",
    )
    note = note_path(mdir, lang)
    sections = note_sections(note, name)
    tests, chain = find_tests(mdir, name)
    print(say(lang, "title", name=name, removed=removed))
    print(say(lang, "copy", milestone=mdir.name, out=out))
    print(say(lang, "where", where=f"{out / rel}:{node.lineno}"))
    print(say(lang, "read"))
    has_doc = ast.get_docstring(node) is not None
    print(say(lang, "docstring" if has_doc else "no_docstring", file=rel.as_posix()))
    note_rel = f"{mdir.name}/{note.name}"
    if sections:
        print(say(lang, "note_sections", note=note_rel))
        for s in sections:
            print(f"    - {s}")
    else:
        print(say(lang, "note_none", note=note_rel))
    if not tests:
        print(say(lang, "tests_none"))
        print(say(lang, "run_all"))
        print(f"  {check_command(out, [], mdir)[0]}")
        return 0
    if chain:
        levels = [[name], *chain]
        via = " <- ".join(_few(level) for level in levels)
        print(say(lang, "tests_callers", chain=via, last=_few(chain[-1]), count=len(tests)))
    else:
        print(say(lang, "tests_direct", count=len(tests)))
    for t in tests[:20]:
        print(f"  {t}")
    if len(tests) > 20:
        print(say(lang, "more", count=len(tests) - 20))
    cmd, by_file = check_command(out, tests, mdir)
    print(say(lang, "run_files" if by_file else "run_these"))
    print(f"  {cmd}")
    print(say(lang, "engine_too"))
    return 0


def _node_id(case: ET.Element) -> str:
    """pytest's node id of a junit (xunit1) test case."""
    file, cls, name = case.get("file"), case.get("classname", ""), case.get("name", "")
    if not cls:  # a module that could not be collected (an import or syntax error)
        return file or name
    if not file:
        return f"{cls}::{name}"
    module = file[:-3].replace("/", ".") if file.endswith(".py") else file
    inner = cls[len(module) + 1 :] if cls.startswith(module + ".") else ""
    return "::".join(p for p in (file, *inner.split("."), name) if p)


def describe_failure(element: ET.Element, max_lines: int = 12) -> dict:
    """What a junit failure or error element says: ``statement`` (the test's line that failed),
    ``message`` (the exception, or pytest's explanation of a failed assert, as lines),
    ``test_at`` and ``raised_at`` (``file:line`` of the test's frame and of the innermost one)."""
    lines = (element.text or "").splitlines()
    explained = [line[1:].strip() for line in lines if line.startswith("E ")]
    message = explained or (element.get("message") or "").splitlines()
    message = [m for m in message if m.strip()] or ["(no message)"]
    if len(message) > max_lines:
        message = message[:max_lines] + ["..."]
    marked = [line[1:].strip() for line in lines if line.startswith(">")]
    places = [
        f"{m.group(1)}:{m.group(2)}"
        for m in (re.match(r"^(\S+\.py):(\d+): ", line) for line in lines)
        if m
    ]
    return {
        "statement": marked[0] if marked else None,
        "message": message,
        "test_at": places[0] if places else None,
        "raised_at": places[-1] if places else None,
    }


def cmd_check(out: Path, pytest_args: list[str], lang: str) -> int:
    state_file = out / STATE
    if not state_file.is_file():
        raise UsageError(say(lang, "not_exercise", out=out))
    state = json.loads(state_file.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ, PYTHONPATH=str(out))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        cmd += ["-o", "junit_family=xunit1", f"--junitxml={report}", *(pytest_args or ["tests"])]
        proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
        if not report.is_file():
            sys.stdout.write(proc.stdout + proc.stderr)
            raise UsageError(say(lang, "pytest_failed"))
        passed, failed, skipped = [], [], 0
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("skipped") is not None:
                skipped += 1
                continue
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is None:
                passed.append(_node_id(case))
            else:
                failed.append((_node_id(case), bad))
    if not passed and not failed:
        if proc.returncode not in (0, 5):
            sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise UsageError(say(lang, "no_tests", args=" ".join(pytest_args or ["tests"])))
    print(say(lang, "summary", function=state["function"], milestone=state["milestone"], out=out))
    print(say(lang, "counts", passed=len(passed), failed=len(failed), skipped=skipped))
    for t, _ in failed[:30]:
        print(f"  FAIL {t}")
    if len(failed) > 30:
        print(say(lang, "more", count=len(failed) - 30))
    if not failed:
        print(say(lang, "all_pass"))
        return 0
    test, element = failed[0]
    info = describe_failure(element)
    print(say(lang, "first_failure", test=test))
    if info["statement"]:
        print(
            f"  {info['test_at']}: {info['statement']}"
            if info["test_at"]
            else f"  {info['statement']}"
        )
    for line in info["message"]:
        print(f"    {line}")
    if info["raised_at"] and info["raised_at"] != info["test_at"]:
        print(say(lang, "at", where=info["raised_at"]))
    if f"exercise: write {state['function']}" in "\n".join(info["message"]):
        print(say(lang, "still_blank"))
    return 1


def cmd_list(lang: str) -> int:
    for m, fn, zh, en in SUGGESTED:
        print(f"make exercise-{m} FN={fn:<36} # {zh if lang == 'zh' else en}")
    return 0


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--lang",
        choices=LANGS,
        default=None,
        help="language of the output and of the note to read (default: from LC_ALL / LANG)",
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser(
        "make", parents=[common], help="copy a milestone with one function blanked out"
    )
    mk.add_argument("milestone")
    mk.add_argument("function")
    mk.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    mk.add_argument(
        "--force", action="store_true", help="replace DIR even if it is not an exercise"
    )
    ck = sub.add_parser(
        "check", parents=[common], help="run the milestone's tests against the exercise"
    )
    ck.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ck.add_argument("pytest_args", nargs="*")
    sub.add_parser("list", parents=[common], help="suggested exercises")
    args = parser.parse_args(argv)
    lang = args.lang or default_lang()
    try:
        if args.cmd == "make":
            return cmd_make(args.milestone, args.function, args.dir.resolve(), args.force, lang)
        if args.cmd == "check":
            return cmd_check(args.dir.resolve(), args.pytest_args, lang)
        return cmd_list(lang)
    except UsageError as exc:
        print(f"exercise.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
