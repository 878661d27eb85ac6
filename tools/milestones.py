#!/usr/bin/env python3
"""Milestone lineage tool: keep the engine copies (m0_init, m1_basic, ...) from drifting apart.

Every milestone directory ``mK_name/`` holds a complete copy of the engine; K orders them (as a
number: m10 comes after m9). Its ``milestone.toml`` declares the files it adds, changes and removes
relative to the milestone before it; every other file must be byte-identical to the previous
milestone's copy (see learn/architecture.md, "Lineage").

Usage (from the repository root; stdlib only)::

    python tools/milestones.py check              # manifests, lineage, diff budgets, pyproject mapping
    python tools/milestones.py list               # milestones in order, with title and claim
    python tools/milestones.py diff m2 [--stat]   # what m2_batching changes relative to m1_basic
    python tools/milestones.py port m1 folovllm/config.py [--base REV | --old-file FILE]
                                                  # carry an edit made in m1_basic on to m2, m3, ...
    python tools/milestones.py diffs [--out DIR]  # markdown diff pages for the docs (learn/diffs/)

``--root DIR`` (before or after the subcommand) runs on another tree; the default is the repository
that holds this file. Exit status: 0 ok, 1 problems found (check) or a merge conflict (port),
2 usage error (unknown milestone, missing file, ...).

A milestone's manifest::

    name = "m1_basic"
    title = "Basic inference: Qwen2/Qwen3, KV cache, sampling"
    previous = "m0_init"          # absent or "" for the first milestone
    diff_budget = 1500            # max added + removed lines under folovllm/ vs previous
    claim = "Generates text ..."
    [files]                       # paths relative to the milestone directory
    added = ["folovllm/model_executor/models/qwen2.py"]
    changed = ["folovllm/__init__.py"]
    removed = []
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
MILESTONE_DIR = re.compile(r"m(\d+)_.+")
MANIFEST = "milestone.toml"
# Top-level files that belong to one milestone only: never compared, never declared.
EXEMPT = frozenset({"README.md", "NOTE.md", "NOTE.en.md", MANIFEST})
# Generated clutter, ignored at any depth.
IGNORED_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".mypy_cache"}
)
IGNORED_DIR_SUFFIX = ".egg-info"
IGNORED_FILE_SUFFIX = ".pyc"
PACKAGE_PREFIX = "folovllm/"  # only this subtree counts against diff_budget
FILE_LISTS = ("added", "changed", "removed")


class UsageError(Exception):
    """A bad command line or a tree the command cannot work on (exit status 2)."""


# --------------------------------------------------------------------------- milestones, manifests


@dataclass
class Manifest:
    """A parsed ``milestone.toml``; ``problems`` lists what is wrong with it (without a prefix)."""

    loaded: bool = False
    name: str = ""
    title: str = ""
    previous: str = ""
    diff_budget: int | None = None
    claim: str = ""
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    files_ok: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class Milestone:
    number: int
    name: str
    path: Path
    manifest: Manifest


def load_manifest(mdir: Path, is_first: bool = False) -> Manifest:
    """Parse and validate ``mdir/milestone.toml``; never raises."""
    man = Manifest()
    path = mdir / MANIFEST
    if not path.is_file():
        man.problems.append(f"{MANIFEST} is missing")
        return man
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        man.problems.append(f"{MANIFEST} is not valid TOML: {exc}")
        return man
    man.loaded = True

    def text(key: str, required: bool) -> str:
        value = data.get(key)
        if value is None:
            if required:
                man.problems.append(f"{MANIFEST}: {key} is missing")
            return ""
        if not isinstance(value, str):
            man.problems.append(f"{MANIFEST}: {key} must be a string")
            return ""
        if required and not value.strip():
            man.problems.append(f"{MANIFEST}: {key} is empty")
        return value

    man.name = text("name", True)
    if man.name and man.name != mdir.name:
        man.problems.append(f'{MANIFEST}: name = "{man.name}" does not match the directory name')
    man.title = text("title", True)
    man.claim = text("claim", not is_first)
    man.previous = text("previous", False)

    budget = data.get("diff_budget")
    if budget is None:
        if not is_first:
            man.problems.append(f"{MANIFEST}: diff_budget is missing")
    elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        man.problems.append(f"{MANIFEST}: diff_budget must be a non-negative integer")
    else:
        man.diff_budget = budget

    files = data.get("files", {})
    if not isinstance(files, dict):
        man.problems.append(f"{MANIFEST}: [files] must be a table")
        return man
    for key in sorted(set(files) - set(FILE_LISTS)):
        man.problems.append(
            f"{MANIFEST}: unknown key [files].{key} (expected added, changed, removed)"
        )
    man.files_ok = True
    for key in FILE_LISTS:
        paths = files.get(key, [])
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            man.problems.append(f"{MANIFEST}: [files].{key} must be a list of strings")
            man.files_ok = False
        else:
            setattr(man, key, paths)
    return man


def find_milestones(root: Path) -> list[Milestone]:
    """The ``m<number>_*`` directories under ``root``, by number, manifests loaded."""
    found = []
    for entry in root.iterdir():
        match = MILESTONE_DIR.fullmatch(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry.name, entry))
    found.sort()
    return [
        Milestone(num, name, path, load_manifest(path, is_first=(i == 0)))
        for i, (num, name, path) in enumerate(found)
    ]


def resolve(milestones: list[Milestone], key: str) -> Milestone:
    """Find a milestone by full name (``m2_batching``) or short form (``m2``)."""
    for ms in milestones:
        if ms.name == key:
            return ms
    matches = [ms for ms in milestones if ms.name.startswith(key + "_")]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(ms.name for ms in milestones) or "none"
    what = "ambiguous" if matches else "unknown"
    raise UsageError(f"{what} milestone {key!r} (milestones: {known})")


def previous_of(milestones: list[Milestone], ms: Milestone) -> Milestone:
    index = milestones.index(ms)
    if index == 0:
        raise UsageError(f"{ms.name} is the first milestone: it has no previous milestone")
    return milestones[index - 1]


# --------------------------------------------------------------------------- files and diffs


def _ignored_dir(name: str) -> bool:
    return name in IGNORED_DIRS or name.endswith(IGNORED_DIR_SUFFIX)


def tracked_files(mdir: Path) -> set[str]:
    """Lineage-tracked files of a milestone, as posix paths relative to ``mdir``."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(mdir):
        dirnames[:] = [d for d in dirnames if not _ignored_dir(d)]
        rel_dir = Path(dirpath).relative_to(mdir)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if not name.endswith(IGNORED_FILE_SUFFIX) and rel not in EXEMPT:
                out.add(rel)
    return out


def path_problem(rel: str) -> str | None:
    """Why ``rel`` cannot name a lineage-tracked file, or None if it can."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or pure.as_posix() != rel:
        return "is not a normalized relative path"
    if rel in EXEMPT:
        return "is per-milestone (exempt from lineage) and must not be declared"
    if rel.endswith(IGNORED_FILE_SUFFIX) or any(_ignored_dir(p) for p in pure.parts[:-1]):
        return "is an ignored (generated) path and must not be declared"
    return None


@dataclass
class FileDiff:
    path: str
    status: str  # "added" | "changed" | "removed"
    added: int  # lines starting with "+" in the unified diff
    removed: int  # lines starting with "-"
    text: str  # the unified diff, or a "Binary files ... differ" line
    binary: bool = False


def _decode(data: bytes) -> str | None:
    """Text of a file, or None for binary content."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _split_lines(text: str) -> list[str]:
    """Split on "\\n" only (str.splitlines also splits on form feeds and friends)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def file_diff(
    rel: str, old: bytes | None, new: bytes | None, old_label: str, new_label: str
) -> FileDiff:
    """Unified diff of one file; ``None`` content means the file does not exist on that side."""
    status = "added" if old is None else "removed" if new is None else "changed"
    a = old_label if old is not None else "/dev/null"
    b = new_label if new is not None else "/dev/null"
    old_text, new_text = _decode(old or b""), _decode(new or b"")
    if old_text is None or new_text is None:
        return FileDiff(rel, status, 0, 0, f"Binary files {a} and {b} differ\n", binary=True)
    lines = list(difflib.unified_diff(_split_lines(old_text), _split_lines(new_text), a, b))
    body = lines[2:]  # skip the ---/+++ headers; a removed "-- x" line reads "--- x"
    added = sum(line.startswith("+") for line in body)
    removed = sum(line.startswith("-") for line in body)
    if not lines:  # an empty file added or removed: show the headers at least
        lines = [f"--- {a}\n", f"+++ {b}\n"]
    text = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    return FileDiff(rel, status, added, removed, text)


def compare(prev: Milestone, cur: Milestone) -> list[FileDiff]:
    """Every tracked file that differs between two milestones, sorted by path."""
    old_files, new_files = tracked_files(prev.path), tracked_files(cur.path)
    diffs = []
    for rel in sorted(old_files | new_files):
        old = (prev.path / rel).read_bytes() if rel in old_files else None
        new = (cur.path / rel).read_bytes() if rel in new_files else None
        if old != new:
            diffs.append(file_diff(rel, old, new, f"a/{prev.name}/{rel}", f"b/{cur.name}/{rel}"))
    return diffs


def package_lines(diffs: list[FileDiff]) -> int:
    """Added + removed lines under folovllm/: what diff_budget limits."""
    return sum(d.added + d.removed for d in diffs if d.path.startswith(PACKAGE_PREFIX))


def format_stat(diffs: list[FileDiff], budget: int | None = None) -> str:
    """The ``diff --stat`` table."""
    rows = [f"{'added':>7} {'removed':>7}  {'status':<8} path"]
    for d in diffs:
        plus, minus = ("bin", "bin") if d.binary else (d.added, d.removed)
        rows.append(f"{plus:>7} {minus:>7}  {d.status:<8} {d.path}")
    total_plus = sum(d.added for d in diffs)
    total_minus = sum(d.removed for d in diffs)
    rows.append(
        f"{len(diffs)} files changed, {total_plus} insertions(+), {total_minus} deletions(-)"
    )
    budget_text = f" of a budget of {budget}" if budget is not None else ""
    rows.append(f"folovllm/ diff: {package_lines(diffs)} lines{budget_text}")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- check


def check_pair(prev: Milestone, cur: Milestone) -> tuple[list[str], str]:
    """Lineage problems of ``cur`` relative to ``prev``, and its one-line OK summary."""
    problems: list[str] = []

    def say(msg: str) -> None:
        problems.append(f"{cur.name}: {msg}")

    man = cur.manifest
    if man.loaded and man.previous != prev.name:
        say(f'previous = "{man.previous}" but the milestone before it is {prev.name}')

    diffs = compare(prev, cur)
    differing = {d.path for d in diffs}
    if man.files_ok:
        old_files, new_files = tracked_files(prev.path), tracked_files(cur.path)
        declared: dict[str, list[str]] = {}
        for key in FILE_LISTS:
            for rel in getattr(man, key):
                declared.setdefault(rel, []).append(key)
        bad = set()
        for rel, keys in declared.items():
            if len(keys) > 1:
                if len(set(keys)) == 1:
                    say(f"{rel} is listed twice in [files].{keys[0]}")
                else:
                    lists = " and ".join(f"[files].{k}" for k in dict.fromkeys(keys))
                    say(f"{rel} is declared in both {lists}")
            reason = path_problem(rel)
            if reason:
                say(f"[files] entry {rel!r} {reason}")
                bad.add(rel)

        for rel in dict.fromkeys(man.changed):
            if rel in bad:
                continue
            where = "[files].changed but"
            if rel not in old_files and rel not in new_files:
                say(f"{rel} is declared in {where} exists in neither {prev.name} nor {cur.name}")
            elif rel not in new_files:
                hint = "(declare it in [files].removed)"
                say(f"{rel} is declared in {where} does not exist in {cur.name} {hint}")
            elif rel not in old_files:
                hint = "(declare it in [files].added)"
                say(f"{rel} is declared in {where} does not exist in {prev.name} {hint}")
            elif rel not in differing:
                say(f"{rel} is declared in {where} is byte-identical to {prev.name}")
        for rel in dict.fromkeys(man.added):
            if rel in bad:
                continue
            if rel in old_files:
                say(f"{rel} is declared in [files].added but already exists in {prev.name}")
            if rel not in new_files:
                say(f"{rel} is declared in [files].added but does not exist in {cur.name}")
        for rel in dict.fromkeys(man.removed):
            if rel in bad:
                continue
            if rel in new_files:
                say(f"{rel} is declared in [files].removed but still exists in {cur.name}")
            if rel not in old_files:
                say(f"{rel} is declared in [files].removed but does not exist in {prev.name}")

        for rel in sorted((old_files | new_files) - set(declared)):
            if rel in old_files and rel in new_files:
                if rel in differing:
                    say(f"{rel} differs from {prev.name} but is not declared in [files].changed")
            elif rel in new_files:
                say(f"{rel} is new (not in {prev.name}) but is not declared in [files].added")
            else:
                say(
                    f"{rel} exists in {prev.name} but not in {cur.name}"
                    " and is not declared in [files].removed"
                )

    used = package_lines(diffs)
    if man.diff_budget is not None and used > man.diff_budget:
        say(
            f"folovllm/ diff is {used} lines (added + removed), over its diff_budget of "
            f"{man.diff_budget} by {used - man.diff_budget}"
        )

    counts = {key: sum(d.status == key for d in diffs) for key in FILE_LISTS}
    summary = (
        f"{cur.name}: OK  {counts['added']} added, {counts['changed']} changed, "
        f"{counts['removed']} removed; folovllm/ diff {used}/{man.diff_budget} lines"
    )
    return problems, summary


def _table(data: object, *keys: str) -> object:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def check_pyproject(root: Path, newest: str) -> list[str]:
    """The root pyproject.toml (if any) must install folovllm from the newest milestone."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return [f"pyproject.toml: not valid TOML: {exc}"]
    problems = []
    package_dir = _table(data, "tool", "setuptools", "package-dir")
    mapped = package_dir.get("") if isinstance(package_dir, dict) else None
    if mapped != newest:
        problems.append(
            f'pyproject.toml: [tool.setuptools.package-dir] "" is {json.dumps(mapped)}'
            f' but must be "{newest}" (the newest milestone)'
        )
    where = _table(data, "tool", "setuptools", "packages", "find", "where")
    if where != [newest]:
        problems.append(
            f"pyproject.toml: [tool.setuptools.packages.find] where is {json.dumps(where)}"
            f' but must be ["{newest}"]'
        )
    return problems


def check_tree(root: Path) -> tuple[list[str], list[str]]:
    """All lineage problems of the tree, and the per-milestone OK summaries."""
    milestones = find_milestones(root)
    if not milestones:
        return [f"no milestone directories (m<number>_<name>) under {root}"], []
    problems: list[str] = []
    summaries: list[str] = []
    seen: dict[int, str] = {}
    for ms in milestones:
        if ms.number in seen:
            problems.append(f"{ms.name}: has the same number as {seen[ms.number]}")
        seen.setdefault(ms.number, ms.name)
        problems.extend(f"{ms.name}: {p}" for p in ms.manifest.problems)

    first = milestones[0]
    if first.manifest.previous:
        problems.append(
            f'{first.name}: previous = "{first.manifest.previous}" but it is the first milestone'
            ' (leave previous absent or "")'
        )
    summaries.append(f"{first.name}: OK  first milestone, {len(tracked_files(first.path))} files")
    for prev, cur in zip(milestones, milestones[1:]):
        pair_problems, summary = check_pair(prev, cur)
        problems.extend(pair_problems)
        summaries.append(summary)
    problems.extend(check_pyproject(root, milestones[-1].name))
    return problems, summaries


def cmd_check(root: Path) -> int:
    problems, summaries = check_tree(root)
    if problems:
        for line in problems:
            print(line)
        print(f"lineage check FAILED: {len(problems)} problem(s)")
        return 1
    for line in summaries:
        print(line)
    print(f"lineage check OK: {len(summaries)} milestones")
    return 0


# --------------------------------------------------------------------------- list, diff, diffs


def cmd_list(root: Path) -> int:
    for ms in find_milestones(root):
        print(f"{ms.name}: {ms.manifest.title or '(no title)'}")
        for line in ms.manifest.claim.strip().splitlines():
            print(f"    {line}")
    return 0


def cmd_diff(root: Path, key: str, stat: bool) -> int:
    milestones = find_milestones(root)
    cur = resolve(milestones, key)
    diffs = compare(previous_of(milestones, cur), cur)
    if stat:
        sys.stdout.write(format_stat(diffs, cur.manifest.diff_budget))
    else:
        sys.stdout.write("".join(d.text for d in diffs))
    return 0


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def diff_page(prev: Milestone, cur: Milestone, diffs: list[FileDiff]) -> str:
    """The markdown page of one milestone's diff."""
    man = cur.manifest
    budget = f" of a budget of {man.diff_budget}" if man.diff_budget is not None else ""
    out = [f"# {cur.name}: {man.title} — diff from {prev.name}", ""]
    if man.claim.strip():
        out += [f"**Claim:** {man.claim.strip()}", ""]
    out += [
        f"`folovllm/` diff: **{package_lines(diffs)} lines** (added + removed){budget}. "
        f"Regenerate with `python tools/milestones.py diffs`; "
        f"see it locally with `make diff-m{cur.number}`.",
        "",
        "| File | Status | Added | Removed |",
        "| --- | --- | ---: | ---: |",
    ]
    for d in diffs:
        plus, minus = ("binary", "binary") if d.binary else (d.added, d.removed)
        out.append(f"| `{_md_cell(d.path)}` | {d.status} | {plus} | {minus} |")
    total_plus, total_minus = sum(d.added for d in diffs), sum(d.removed for d in diffs)
    out += [f"| **{len(diffs)} files** | | {total_plus} | {total_minus} |", ""]
    # One section per file, the engine first; tests and benchmarks folded (click to open).
    engine = [d for d in diffs if not _is_test_or_bench(d.path)]
    rest = [d for d in diffs if _is_test_or_bench(d.path)]
    out += ["## The engine, file by file", ""]
    for d in engine:
        fence = _fence(d.text)
        out += [f"### `{d.path}` ({d.status}, +{d.added} -{d.removed})", ""]
        out += [f"{fence}diff", d.text.rstrip("\n"), fence, ""]
    if rest:
        out += ["## Tests and benchmarks", ""]
    for d in rest:
        fence = _fence(d.text)
        out += [f'??? note "`{d.path}` ({d.status}, +{d.added} -{d.removed})"', ""]
        block = [f"{fence}diff", *d.text.rstrip("\n").split("\n"), fence]
        out += [f"    {line}" if line else "" for line in block] + [""]
    return "\n".join(out)


def _is_test_or_bench(rel: str) -> bool:
    return rel.startswith("tests/") or rel in ("bench.py", "conftest.py")


def cmd_diffs(root: Path, out_dir: Path | None) -> int:
    milestones = find_milestones(root)
    out_dir = out_dir or root / "learn" / "diffs"
    out_dir.mkdir(parents=True, exist_ok=True)
    index = [
        "# Milestone diffs",
        "",
        "What each milestone changes relative to the one before it "
        "(generated by `tools/milestones.py diffs`).",
        "",
        "| Milestone | Title | `folovllm/` lines | Budget |",
        "| --- | --- | ---: | ---: |",
    ]
    for prev, cur in zip(milestones, milestones[1:]):
        diffs = compare(prev, cur)
        page = out_dir / f"{cur.name}.md"
        page.write_text(diff_page(prev, cur, diffs), encoding="utf-8", newline="\n")
        budget = cur.manifest.diff_budget if cur.manifest.diff_budget is not None else ""
        index.append(
            f"| [{cur.name}]({cur.name}.md) | {_md_cell(cur.manifest.title)} "
            f"| {package_lines(diffs)} | {budget} |"
        )
    (out_dir / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8", newline="\n")
    print(f"wrote {max(len(milestones) - 1, 0)} diff pages and index.md to {out_dir}")
    return 0


# --------------------------------------------------------------------------- port


def git_show(root: Path, rev: str, rel: str) -> bytes:
    """``git show REV:./rel`` run in ``root`` (``./`` makes the path relative to ``root``)."""
    spec = f"{rev}:./{rel}"
    try:
        proc = subprocess.run(["git", "show", spec], cwd=root, capture_output=True)
    except FileNotFoundError as exc:
        raise UsageError("git is not installed") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise UsageError(f"cannot read the old content with git show {spec}: {err}")
    return proc.stdout


def merge3(
    base: bytes, ours: bytes, theirs: bytes, labels: tuple[str, str, str]
) -> tuple[bytes, int]:
    """Three-way merge with ``git merge-file -p``: (merged content, number of conflicts)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_bytes(data)
            paths.append(str(path))
        cmd = ["git", "merge-file", "-p"]
        for label in labels:
            cmd += ["-L", label]
        try:
            proc = subprocess.run(cmd + paths, capture_output=True)
        except FileNotFoundError as exc:
            raise UsageError("git is not installed (port merges with git merge-file)") from exc
    if proc.returncode > 127:  # git merge-file returns -1 (255) on error, else the conflict count
        raise UsageError(f"git merge-file failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout, proc.returncode


def conflict_hunks(merged: bytes) -> list[str]:
    """The ``<<<<<<< ... >>>>>>>`` regions of a merge result, each with its line number."""
    hunks, current = [], None
    for number, line in enumerate(merged.decode("utf-8", "replace").split("\n"), 1):
        if line.startswith("<<<<<<<"):
            current = [f"conflict at line {number}:", line]
        elif current is not None:
            current.append(line)
            if line.startswith(">>>>>>>"):
                hunks.append("\n".join(current))
                current = None
    return hunks


def cmd_port(root: Path, key: str, rel: str, base: str, old_file: Path | None) -> int:
    milestones = find_milestones(root)
    src = resolve(milestones, key)
    rel = rel.removeprefix(f"{src.name}/")
    reason = path_problem(rel)
    if reason:
        raise UsageError(f"{rel!r} {reason}")
    if not (src.path / rel).is_file():
        raise UsageError(f"{src.name}/{rel} does not exist")
    new = (src.path / rel).read_bytes()
    if old_file is not None:
        old, old_from = old_file.read_bytes(), str(old_file)
    else:
        old, old_from = git_show(root, base, f"{src.name}/{rel}"), base
    if old == new:
        print(f"{src.name}/{rel} is the same as in {old_from}: nothing to port")
        return 0

    print(f"porting the change to {src.name}/{rel} (old content from {old_from})")
    later = milestones[milestones.index(src) + 1 :]
    if not later:
        print(f"{src.name} is the newest milestone: nothing to carry forward")
    conflict = False
    from_name = src.name
    for ms in later:
        target = ms.path / rel
        if not target.is_file():
            print(f"{ms.name}: {rel} does not exist (removed or renamed); stopping here")
            break
        cur = target.read_bytes()
        if cur == new:
            result = cur
            print(f"{ms.name}: {rel} already has the change")
        elif cur == old:
            result = new
            target.write_bytes(result)
            print(f"{ms.name}: {rel} updated (it was identical to {from_name}'s old version)")
        else:
            labels = (
                f"{ms.name}/{rel}",
                f"{from_name}/{rel} (before)",
                f"{from_name}/{rel} (after)",
            )
            result, conflicts = merge3(old, cur, new, labels)
            if conflicts:
                print(
                    f"{ms.name}: CONFLICT: {conflicts} conflict(s) merging the change into "
                    f"{ms.name}/{rel}; file left untouched, later milestones not visited"
                )
                for hunk in conflict_hunks(result):
                    print(hunk)
                conflict = True
                break
            target.write_bytes(result)
            print(f"{ms.name}: {rel} merged (three-way: its own edits kept, the change applied)")
        old, new, from_name = cur, result, ms.name
        if old == new:
            print(f"{ms.name}: nothing left to carry forward; later milestones untouched")
            break
    else:
        if later:
            print(f"done: carried through to {later[-1].name}")

    problems, _ = check_tree(root)
    if problems:
        print("lineage check now reports (a manifest may need a [files].changed entry):")
        for line in problems:
            print(f"  {line}")
    else:
        print("lineage check OK")
    return 1 if conflict else 0


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        default=argparse.SUPPRESS,
        help="repository root holding the mK_name/ directories (default: %(prog)s's repository)",
    )
    parser = argparse.ArgumentParser(
        prog="milestones.py",
        description="Check, diff and port across the milestone copies of the engine.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", parents=[common], help="verify manifests, lineage and budgets")
    sub.add_parser("list", parents=[common], help="milestones in order with title and claim")
    p = sub.add_parser("diff", parents=[common], help="unified diff of mK vs its previous")
    p.add_argument("milestone", help="m2 or m2_batching")
    p.add_argument("--stat", action="store_true", help="per-file added/removed counts instead")
    p = sub.add_parser(
        "port", parents=[common], help="carry an edit of mK/PATH to later milestones"
    )
    p.add_argument("milestone", help="the milestone whose working-tree file has the edit")
    p.add_argument("path", help="path relative to the milestone directory, e.g. folovllm/config.py")
    old = p.add_mutually_exclusive_group()
    old.add_argument("--base", default="HEAD", help="git revision with the old content (HEAD)")
    old.add_argument("--old-file", type=Path, help="a file with the old content instead of git")
    p = sub.add_parser("diffs", parents=[common], help="write markdown diff pages for the docs")
    p.add_argument("--out", type=Path, help="output directory (default: learn/diffs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    root = getattr(args, "root", REPO_ROOT).resolve()
    try:
        if not root.is_dir():
            raise UsageError(f"--root {root} is not a directory")
        if args.command == "check":
            return cmd_check(root)
        if args.command == "list":
            return cmd_list(root)
        if args.command == "diff":
            return cmd_diff(root, args.milestone, args.stat)
        if args.command == "port":
            return cmd_port(root, args.milestone, args.path, args.base, args.old_file)
        return cmd_diffs(root, args.out)
    except UsageError as exc:
        print(f"milestones.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
