"""Run every milestone's test suite, each in its own process, a few at a time, reusing results.

``make test`` calls this (``make test-mK`` still runs one whole suite). Each suite is CPU-bound
Python plus small torch ops, so on a 2-core machine two suites side by side, one torch thread
each, finish sooner than one after the other with two threads each (measured: m5 + m6 in 181 s
instead of 257 s). The longest suites start first.

Most test modules are carried forward unchanged, and some of the engine code they exercise is too;
running such a module again proves nothing new. A test module ``tests/test_x.py`` of milestone mK
is **the same as** mJ's (J < K) when every file it depends on is byte-identical in both; mK then
does not run it, and the report says ``tests/test_x.py: same as m4_flash (passed)``: mJ's outcome
in this same run counts for mK (a failure in mJ fails mK too). mJ is the first milestone with
those files. Which suite runs what is decided before any runs, so the suites stay independent.

What a test module depends on (found with ``ast``, never by running it):

- itself; every ``conftest.py`` under ``tests/``, and each other ``.py`` file there that is not a
  test module (a helper) when the module, a conftest or such a helper imports it or names it in
  a string; the data under ``tests/`` whose first folder or file name (``fixtures``) the module or
  a helper writes in a string, all of it when the module lists its own folder; every test module
  when it imports one.
- The engine modules it *uses*, from its imports and its helpers' (anywhere in the file,
  relative ones resolved; a string naming ``folovllm.x``, as for ``mock.patch``, is one). A module
  imported whole (``import a``, ``from p import a`` for a submodule ``a``: any attribute of it can
  be read) brings everything it imports. A name imported from a module (``from a import f``)
  brings the module and what its code reads when it runs, not an import it reads only in
  annotations under ``from __future__ import annotations`` (never evaluated) or not at all; a
  name the module only re-exports (``from folovllm import SamplingParams``) is followed to the
  module it comes from instead.
- The ``__init__.py`` of every package above a used module (it runs first). What is imported but
  not used only *runs*: it counts only if importing it does more than define names (a call, an
  attribute assignment, an unknown decorator, a dynamic import or a process at its top level;
  a module that starts processes only inside its functions does so for whoever calls them). Whether it imports cleanly is
  still checked in every milestone: test_isolation.py always runs, and it imports the package.
- Every non-``.py`` file under ``folovllm/`` (data the engine may read).
- The whole ``folovllm/`` package, when the module or an engine module it uses imports by other
  means (``importlib``, ``__import__``, ``runpy``, ``pkgutil``, spec loading), starts processes
  (``subprocess``, ``multiprocessing``: ``python -m folovllm``) or writes a path into the package.
- A file or folder at the top of the milestone (``bench.py``, ...) named in one of its strings.

``folovllm/milestone.py`` names its milestone (``MILESTONE``) and lists all (``MILESTONES``), so
it differs in every milestone; it is compared with those two assignments masked. What then still
differs is the engine's answer to "is this milestone's feature here?" (a knob of a milestone
after mJ is refused in mJ with "needs milestone ..." and accepted in mK), so a test that can see
it always runs: a module whose text mentions ``milestone`` in any case (``MILESTONE``,
``has_milestone``, ``folovllm.milestone``, that message) or a milestone's directory name
(``m7_gptq``); every module when a helper under ``tests/`` does; ``test_isolation.py``; and a
module that uses ``__file__`` other than as ``Path(__file__)[.resolve()]`` then ``.parent...`` or
``.parents[i]`` pointing into ``tests/`` or outside the milestone (the milestone's own folder can
be listed or its name read).

Known gaps: a test that expects a later milestone's knob to be refused without writing
"milestone" or a milestone's name anywhere would be reused where the knob became legal; an effect
of the other modules in the same pytest process (shared session fixtures, global state) is not
modelled. ``--no-reuse`` runs everything; ``--plan`` prints what would run and why.

    python tools/run_suites.py m0_init m1_basic ... [--jobs 2] [--no-reuse | --plan] [-- PYTEST_ARGS]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
MILESTONE_DIR = re.compile(r"m(\d+)_.+")
PACKAGE = "folovllm"
TESTS = "tests"
MILESTONE_FILE = f"{PACKAGE}/milestone.py"
ALWAYS_RUN = frozenset({"test_isolation.py"})
IGNORED_DIRS = frozenset({"__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"})
# Modules whose use means "code runs that the imports don't show": depend on the whole package.
DYNAMIC_MODULES = frozenset({"subprocess", "multiprocessing", "runpy", "pkgutil"})
DYNAMIC_CALLS = frozenset(
    {"import_module", "__import__", "spec_from_file_location", "run_module", "run_path"}
    | {"walk_packages", "iter_modules", "exec_module", "load_module", "load_source"}
)
# Path(__file__) / Path(__file__).resolve(), then .parent... or .parents[i]
FILE_REF = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?:((?:\.parent\b)+)|\.parents\[(\d+)\])")
# A test whose text says this can tell one milestone from another.
NAMES_MILESTONE = re.compile(r"(?i:milestone)|\bm\d+_[a-z]")
# Listing a directory (with __file__: the test's own folder) sees every file in it.
LISTING = re.compile(r"\b(?:glob|rglob|iterdir|listdir|scandir|walk)\(")
MASKS = (
    (re.compile(r"^MILESTONE\s*=.*$", re.M), "MILESTONE = ..."),
    (re.compile(r"^MILESTONES\s*=\s*\([^)]*\)", re.M), "MILESTONES = (...)"),
)


def milestone_number(name: str) -> int:
    """``m10_tp`` -> 10 (milestones sort by number: m10 after m9, not after m1)."""
    match = MILESTONE_DIR.fullmatch(Path(name).name)
    if not match:
        raise ValueError(f"not a milestone directory name (m<number>_<name>): {name}")
    return int(match.group(1))


def _is_test_module(rel: PurePosixPath) -> bool:
    """pytest's default ``python_files``: test_*.py and *_test.py."""
    return rel.suffix == ".py" and (rel.name.startswith("test_") or rel.stem.endswith("_test"))


def _walk(top: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        out += [Path(dirpath) / n for n in sorted(filenames) if not n.endswith(".pyc")]
    return out


def _digest(path: Path, rel: str) -> str:
    data = path.read_bytes()
    if rel == MILESTONE_FILE:
        for pattern, repl in MASKS:
            data = pattern.sub(repl, data.decode()).encode()
    return hashlib.sha256(data).hexdigest()


# Decorators that only wrap what they decorate (a registering decorator would be a side effect).
PURE_DECORATORS = frozenset(
    {"dataclass", "dataclasses.dataclass", "triton.jit", "jit", "triton.autotune"}
    | {"triton.heuristics", "cache", "functools.cache", "lru_cache", "functools.lru_cache"}
    | {"cached_property", "functools.cached_property", "wraps", "functools.wraps"}
    | {"contextmanager", "contextlib.contextmanager", "torch.no_grad", "torch.inference_mode"}
    | {"staticmethod", "classmethod", "property", "abstractmethod", "abc.abstractmethod"}
    | {"overload", "typing.overload"}
)


def _pure(body: list[ast.stmt]) -> bool:
    """Importing this code only defines names: imports, defs, classes, ``name = ...``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            decorators = (d.func if isinstance(d, ast.Call) else d for d in node.decorator_list)
            if any(ast.unparse(d) not in PURE_DECORATORS for d in decorators):
                return False
            if isinstance(node, ast.ClassDef) and (node.keywords or not _pure(node.body)):
                return False
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = (
                t for target in targets for t in ast.walk(target) if not isinstance(t, ast.Tuple)
            )
            if not all(isinstance(t, (ast.Name, ast.Store)) for t in names):
                return False
        elif isinstance(node, ast.If):
            if ast.unparse(node.test) not in ("__name__ == '__main__'", '__name__ == "__main__"'):
                if not (_pure(node.body) and _pure(node.orelse)):
                    return False
        elif isinstance(node, ast.Try):
            parts = [node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)]
            if not all(_pure(part) for part in parts):
                return False
        else:
            return False
    return True


Import = tuple[str, "str | None"]  # (module, a name imported from it; None: the module itself)


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


@dataclass(frozen=True)
class Source:
    """One .py file: what it imports; the names its top level binds by importing them (how a
    package re-exports); whether it reaches code its imports don't show (dynamic); whether
    importing it only defines names (pure)."""

    imports: frozenset[Import]
    runtime: frozenset[Import]  # those whose names its code reads (not only in annotations)
    exports: dict[str, Import]
    dynamic: bool
    pure: bool
    text: str
    strings: frozenset[str]  # its string constants, docstrings left out


def _target(node: ast.ImportFrom, modname: str, is_pkg: bool) -> str:
    """The absolute module of ``from X import ...``, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = modname.split(".") if is_pkg else modname.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _runs_on_import(body: list[ast.stmt]):
    """The nodes of ``body`` that run when the module is imported: not function bodies (their
    decorators and defaults do run, as does a class body), docstrings or annotations (the
    engine's modules use ``from __future__ import annotations``)."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = stmt.args
            parts = [*stmt.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d)]
        elif isinstance(stmt, ast.ClassDef):
            parts = [*stmt.decorator_list, *stmt.bases, *stmt.keywords]
            yield from _runs_on_import(stmt.body)
        elif isinstance(stmt, ast.AnnAssign):
            parts = [stmt.target, *([stmt.value] if stmt.value else [])]
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            parts = []  # a docstring
        elif isinstance(stmt, (ast.If, ast.Try)):
            parts = [stmt.test] if isinstance(stmt, ast.If) else []
            for block in (stmt.body, stmt.orelse, getattr(stmt, "finalbody", [])):
                yield from _runs_on_import(block)
            for handler in getattr(stmt, "handlers", []):
                yield from _runs_on_import(handler.body)
        else:
            parts = [stmt]
        for part in parts:
            yield from ast.walk(part)


def _dynamic_on_import(body: list[ast.stmt], imports: set[Import]) -> bool:
    """Whether importing the module itself does something dynamic: a dynamic call, a path into
    the package, or a use of a process-starting module at its top level. A module that only
    *defines* functions doing so is dynamic for whoever calls them (its users), not for a test
    that merely imports it."""
    bound = {
        a.asname or a.name.split(".")[0]
        for node in body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for a in node.names
        for module in [node.module if isinstance(node, ast.ImportFrom) else a.name]
        if module and module.split(".")[0] in DYNAMIC_MODULES
    }
    for node in _runs_on_import(body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Name) and (node.id in DYNAMIC_CALLS or node.id in bound):
            return True
        if isinstance(node, ast.Attribute) and node.attr in DYNAMIC_CALLS:
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if f"{PACKAGE}/" in node.value:
                return True
    return False


def _parse(path: Path, modname: str, is_pkg: bool) -> Source:
    text = path.read_bytes().decode("utf-8", "replace")
    try:
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError):  # pytest will say what is wrong; depend on everything
        return Source(frozenset(), frozenset(), {}, True, False, text, frozenset())
    imports: set[Import] = set()
    strings: set[str] = set()
    dynamic = False
    # Bare strings (docstrings) name paths for the reader, not for the code.
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _target(node, modname, is_pkg)
            imports.update((target, None if a.name == "*" else a.name) for a in node.names)
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare
        ):
            strings.add(node.value)
            if _in_package(node.value):  # a module named in a string (mock.patch, import_module)
                imports.add((node.value, None))
            dynamic |= f"{PACKAGE}/" in node.value  # a path into the package: read, not imported
        elif isinstance(node, ast.Name) and node.id in DYNAMIC_CALLS:
            dynamic = True
        elif isinstance(node, ast.Attribute) and node.attr in DYNAMIC_CALLS:
            dynamic = True
    dynamic |= any(module.split(".")[0] in DYNAMIC_MODULES for module, _ in imports)

    exports: dict[str, Import] = {}
    defined: set[str] = set()

    def bind(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    exports[a.asname or a.name.split(".")[0]] = (
                        a.name if a.asname else a.name.split(".")[0],
                        None,
                    )
            elif isinstance(node, ast.ImportFrom):
                target = _target(node, modname, is_pkg)
                exports.update((a.asname or a.name, (target, a.name)) for a in node.names)
            elif isinstance(node, ast.Try):
                for part in (
                    node.body,
                    node.orelse,
                    node.finalbody,
                    *(h.body for h in node.handlers),
                ):
                    bind(part)
            elif isinstance(node, ast.If):
                bind(node.body)
                bind(node.orelse)
            else:
                defined.update(
                    n.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                )
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    defined.add(node.name)

    bind(tree.body)
    defined.update(n for g in ast.walk(tree) if isinstance(g, ast.Global) for n in g.names)
    exports = {k: v for k, v in exports.items() if k not in defined and k != "*"}
    pure = _pure(tree.body) and not _dynamic_on_import(tree.body, imports)
    runtime = _runtime_imports(tree, modname, is_pkg, text)
    return Source(frozenset(imports), runtime, exports, dynamic, pure, text, frozenset(strings))


def _runtime_imports(tree: ast.Module, modname: str, is_pkg: bool, text: str) -> frozenset[Import]:
    """The imports whose bound names the module's code reads when it runs: not those read only
    in annotations under ``from __future__ import annotations`` (never evaluated), nor unread."""
    lazy = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__"
        for n in tree.body
        if any(a.name == "annotations" for a in getattr(n, "names", []))
    )
    skip: set[int] = set()
    if lazy:
        for node in ast.walk(tree):
            notes = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                args = [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                notes = [node.returns, *(x.annotation for x in args if x is not None)]
            elif isinstance(node, ast.AnnAssign):
                notes = [node.annotation]
            skip.update(id(n) for note in notes if note is not None for n in ast.walk(note))
    read = {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and id(n) not in skip
    }
    everything = bool(re.search(r"\b(?:globals|vars)\(|__dict__|sys\.modules", text))
    out: set[Import] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if everything or (a.asname or a.name.split(".")[0]) in read:
                    out.add((a.name, None))
        elif isinstance(node, ast.ImportFrom):
            target = _target(node, modname, is_pkg)
            for a in node.names:
                if everything or a.name == "*" or (a.asname or a.name) in read:
                    out.add((target, None if a.name == "*" else a.name))
    return frozenset(out)


@dataclass
class Tree:
    """One milestone's files, as paths relative to its directory."""

    name: str
    path: Path
    modules: dict[str, str]  # folovllm dotted name -> its .py file
    package_files: list[str]  # everything under folovllm/
    support: list[str]  # files under tests/ that are not test modules
    tests: list[str]  # test modules
    top: dict[str, list[str]]  # top-level entry (besides tests/, folovllm/) -> its files
    sources: dict[str, Source] = field(default_factory=dict)  # read once per run
    digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Tree:
        def rel(p: Path) -> str:
            return p.relative_to(path).as_posix()

        modules, package_files = {}, []
        for p in _walk(path / PACKAGE):
            r = rel(p)
            package_files.append(r)
            if r.endswith(".py"):
                dotted = r[: -len(".py")].replace("/", ".")
                modules[dotted.removesuffix(".__init__")] = r
        support, tests = [], []
        for p in _walk(path / TESTS):
            (tests if _is_test_module(PurePosixPath(rel(p))) else support).append(rel(p))
        top = {}
        for entry in sorted(path.iterdir()):
            if entry.name not in (PACKAGE, TESTS, *IGNORED_DIRS) and not entry.name.endswith(
                ".egg-info"
            ):
                files = _walk(entry) if entry.is_dir() else [entry]
                top[entry.name] = [rel(p) for p in files]
        return cls(path.name, path, modules, package_files, support, tests, top)

    def source(self, rel: str) -> Source:
        if rel not in self.sources:
            dotted = rel[: -len(".py")].replace("/", ".")
            is_pkg = dotted.endswith(".__init__")
            self.sources[rel] = _parse(self.path / rel, dotted.removesuffix(".__init__"), is_pkg)
        return self.sources[rel]

    def digest(self, rel: str) -> str:
        if rel not in self.digests:
            self.digests[rel] = _digest(self.path / rel, rel)
        return self.digests[rel]

    def closure(self, roots: set[Import]) -> set[str] | None:
        """The folovllm files a test importing ``roots`` depends on; None: the whole package.

        How a module is reached decides what of it counts. *Whole* (``import a``, ``from p
        import a`` for a module ``a``: any attribute of it can be read): the module and all it
        imports, as its importer would. *A name* (``from a import f``): the module, and what its
        code reads at run time (an import used only in annotations or not at all just runs); a
        name that ``a`` itself only imports (a package's re-export, ``from folovllm import
        SamplingParams``) is followed to where it comes from instead. *Run*: the packages above
        anything reached, and what is imported but not read: it counts only if importing it does
        more than define names (``_pure``). That it imports at all is checked in every milestone
        by test_isolation.py, which always runs and imports the package.
        """
        run, name_, whole = 0, 1, 2
        kind: dict[str, int] = {}
        followed: set[Import] = set()
        stack = [(m, n, name_ if n else whole) for m, n in roots if _in_package(m)]
        while stack:
            module, name, how = stack.pop()
            if name is not None and f"{module}.{name}" in self.modules:
                module, name = f"{module}.{name}", None  # `from a import b`, b a submodule
                how = max(how, whole) if how else run
            while module not in self.modules and "." in module:
                module, name = module.rsplit(".", 1)[0], None  # not a module: its package
            if module not in self.modules:
                continue
            parts = module.split(".")
            stack += [(".".join(parts[:i]), None, run) for i in range(1, len(parts))]
            rel = self.modules[module]
            src = self.source(rel)
            if how == name_ and name in src.exports:
                if (module, name) not in followed:  # a re-export: where the name comes from
                    followed.add((module, name))
                    stack.append((*src.exports[name], name_))
                how = run
            if not src.pure:
                how = max(how, name_)
            if rel in kind and kind[rel] >= how:
                continue
            kind[rel] = how
            if how != run and src.dynamic:
                return None
            for m, n in src.imports:
                if _in_package(m):
                    read = how == whole or (how == name_ and (m, n) in src.runtime)
                    stack.append((m, n, (name_ if n else whole) if read else run))
        used = {rel for rel, how in kind.items() if how != run}
        parents = {
            self.modules[".".join(parts[:i])]
            for rel in used
            for parts in [rel.removesuffix(".py").split("/")]
            for i in range(1, len(parts))
            if ".".join(parts[:i]) in self.modules
        }
        return used | parents


@dataclass
class Plan:
    """Where one test module's result comes from."""

    rel: str
    fingerprint: str | None  # None: always run
    why: str
    same_as: str | None = None  # the earlier milestone that runs it


def _names(strings: frozenset[str], path: str) -> bool:
    """Whether a string of the code names ``path`` (``bench.py``, ``bench``, ``fixtures``)."""
    words = {path, PurePosixPath(path).stem}
    pattern = "|".join(re.escape(w) for w in words)
    return any(re.search(rf"(?<![\w.-])(?:{pattern})(?![\w-])", s) for s in strings)


def _used_helpers(tree: Tree, src: Source) -> list[str]:
    """The ``.py`` files under ``tests/`` that can affect a module: every ``conftest.py`` (pytest
    loads it), and a plain helper only when the module, a conftest or a helper already counted
    imports it or names it in a string (``pytest_plugins``)."""
    files = {p: tree.source(p) for p in tree.support if p.endswith(".py")}
    used = [p for p in files if PurePosixPath(p).name == "conftest.py"]
    frontier = [src, *(files[p] for p in used)]
    while frontier:
        cur = frontier.pop()
        named = {m.split(".")[0] for m, _ in cur.imports} | {
            m.split(".")[-1] for m, _ in cur.imports
        }
        for p, helper in files.items():
            stem = PurePosixPath(p).stem
            if p not in used and (stem in named or stem in cur.strings):
                used.append(p)
                frontier.append(helper)
    return sorted(used)


def dependencies(tree: Tree, rel: str) -> tuple[dict[str, str] | None, str]:
    """Every file ``rel`` depends on (see the module docstring) with its digest; or None: it
    always runs, and why."""
    if PurePosixPath(rel).name in ALWAYS_RUN:
        return None, "always run"
    src = tree.source(rel)
    if NAMES_MILESTONE.search(src.text):
        return None, "mentions the milestone"
    used = _used_helpers(tree, src)
    helpers = [tree.source(p) for p in used]
    if any(NAMES_MILESTONE.search(h.text) for h in helpers):
        return None, "a helper under tests/ mentions the milestone"
    lists = False
    if "__file__" in src.text:
        refs = FILE_REF.findall(src.text)
        if len(refs) != src.text.count("__file__"):
            return None, "uses __file__"
        for parents, index in refs:
            up = parents.count(".parent") - 1 if parents else int(index)
            parents = PurePosixPath(rel).parents
            if up < len(parents) and parents[up].parts[:1] != (TESTS,):
                return None, "reads the milestone directory"
        lists = bool(LISTING.search(src.text))
    strings = src.strings.union(*(h.strings for h in helpers))
    roots = src.imports.union(*(h.imports for h in helpers))
    deps = {rel, *used}
    deps.update(p for p in tree.package_files if not p.endswith(".py"))
    for p in tree.support:  # data under tests/, by its entry there: tests/fixtures/** if named
        if not p.endswith(".py") and (lists or _names(strings, PurePosixPath(p).parts[1])):
            deps.add(p)
    stems = {PurePosixPath(p).stem for p in tree.tests}  # helpers are deps already
    if lists or any(module.split(".")[0] in stems | {TESTS} for module, _ in roots):
        deps.update(tree.tests)
    for name, files in tree.top.items():
        if _names(src.strings, name):
            deps.update(files)
    dynamic = src.dynamic or any(h.dynamic for h in helpers)
    engine = None if dynamic else tree.closure(roots)
    deps.update(tree.package_files if engine is None else engine)
    return {dep: tree.digest(dep) for dep in sorted(deps)}, ""


def _differing(old: dict[str, str], new: dict[str, str]) -> str:
    """The files two dependency maps disagree on, for the report."""
    paths = sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))
    more = f" (+{len(paths) - 3} more)" if len(paths) > 3 else ""
    return ", ".join(paths[:3]) + more


def plan(trees: list[Tree], reuse: bool = True) -> dict[str, list[Plan]]:
    """Per milestone (in order), each test module: run here, or the same as an earlier one."""
    first: dict[tuple[str, str], str] = {}  # (module, fingerprint) -> the milestone that runs it
    last: dict[str, tuple[str, dict[str, str]]] = {}  # module -> its latest milestone, deps
    out = {}
    for tree in trees:
        plans = []
        for rel in tree.tests:
            deps, why = dependencies(tree, rel) if reuse else (None, "reuse off")
            digest = None
            if deps is not None:
                digest = hashlib.sha256(json.dumps(deps).encode()).hexdigest()
                before = last.get(rel)
                why = (
                    f"differs from {before[0]}: {_differing(before[1], deps)}" if before else "new"
                )
                last[rel] = (tree.name, deps)
            p = Plan(rel, digest, why)
            if digest is not None:
                p.same_as = first.setdefault((rel, digest), tree.name)
                p.same_as = None if p.same_as == tree.name else p.same_as
            plans.append(p)
        out[tree.name] = plans
    return out


# --------------------------------------------------------------------------- running

# Run inside each suite's pytest process (python -c, so nothing is added to sys.path): per test
# module, its outcome counts and whether every selected item ran; written as JSON at the end.
RECORDER = r"""
import collections, json, resource, sys, time
import pytest

class Recorder:
    def __init__(self, out):
        self.out, self.failed, self.items = out, set(), collections.Counter()
        self.done, self.outcome, self.counts = collections.Counter(), {}, {}
        self.seconds, self.cpu, self.started = collections.Counter(), collections.Counter(), 0.0

    @staticmethod
    def module(nodeid):
        return nodeid.split("::")[0]

    def count(self, path, key):
        self.counts.setdefault(path, collections.Counter())[key] += 1

    def pytest_collectreport(self, report):
        path = self.module(report.nodeid)
        if path.endswith(".py"):
            self.items[path] += 0
            if report.failed:
                self.failed.add(path)
                self.count(path, "failed")

    def pytest_collection_finish(self, session):
        for item in session.items:
            self.items[self.module(item.nodeid)] += 1

    def pytest_runtest_logreport(self, report):
        self.seconds[self.module(report.nodeid)] += report.duration
        old = self.outcome.get(report.nodeid, "passed")
        new = "failed" if report.failed else "skipped" if report.skipped else "passed"
        if old != "failed" and (new != "passed" or report.when == "call"):
            self.outcome[report.nodeid] = new

    def pytest_runtest_logstart(self, nodeid, location):
        self.started = time.process_time()

    def pytest_runtest_logfinish(self, nodeid, location):
        path = self.module(nodeid)
        self.cpu[path] += time.process_time() - self.started
        self.done[path] += 1
        outcome = self.outcome.get(nodeid, "passed")
        self.count(path, outcome)
        if outcome == "failed":
            self.failed.add(path)

    def pytest_sessionfinish(self, session, exitstatus):
        modules = {}
        for path, n in self.items.items():
            ok = path not in self.failed and self.done[path] == n
            counts = dict(self.counts.get(path, {}))
            seconds, cpu = self.seconds[path], self.cpu[path]
            modules[path] = {"passed": ok, "counts": counts, "seconds": seconds, "cpu": cpu}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() + children.ru_utime + children.ru_stime
        data = {"rootdir": str(session.config.rootpath), "modules": modules, "cpu": cpu}
        with open(self.out, "w") as f:
            json.dump(data, f)

sys.exit(pytest.main(sys.argv[2:], plugins=[Recorder(sys.argv[1])]))
"""


@dataclass
class Result:
    """A module's outcome: passed, and its test counts."""

    passed: bool
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    cpu: float = 0.0


@dataclass
class Suite:
    path: Path
    milestone: str  # or "tests": the repository's own tests (--with-root-tests)
    modules: list[str]
    pythonpath: bool = True  # a milestone's suite imports its own folovllm (PYTHONPATH=.)
    rc: int = 0
    output: str = ""
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the pytest process and its children
    results: dict[str, Result] = field(default_factory=dict)


def run_suite(suite: Suite, pytest_args: list[str], threads: int | None) -> Suite:
    """One pytest process over the suite's modules, in the milestone's directory."""
    env = dict(os.environ, PYTHONPATH=".") if suite.pythonpath else dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    mdir = suite.path
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        cmd = [sys.executable, "-c", RECORDER, str(out), "-p", "no:cacheprovider"]
        res = subprocess.run(
            cmd + suite.modules + pytest_args,
            cwd=mdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        data = json.loads(out.read_text()) if out.is_file() else {"modules": {}}
    suite.rc, suite.output, suite.seconds = res.returncode, res.stdout, time.perf_counter() - t0
    suite.cpu = data.get("cpu", 0.0)
    for nodepath, info in data["modules"].items():
        rel = (Path(data["rootdir"]) / nodepath).resolve().relative_to(mdir.resolve()).as_posix()
        suite.results[rel] = Result(
            info["passed"], Counter(info["counts"]), info["seconds"], info["cpu"]
        )
    return suite


def estimated_cost(tree: Tree, modules: list[str]) -> int:
    """Bytes of test source to run, plus a fixed start-up share: enough to start the longest first."""
    return (20_000 + sum((tree.path / m).stat().st_size for m in modules)) if modules else 0


def summary_line(counts: Counter) -> str:
    """'N passed, M failed[, K skipped]', the closing line CI reads."""
    line = f"{counts['passed']} passed, {counts['failed']} failed"
    return line + (f", {counts['skipped']} skipped" if counts["skipped"] else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("milestones", nargs="+")
    ap.add_argument("--jobs", type=int, default=2, help="suites at once (1: one after another)")
    ap.add_argument("--no-reuse", action="store_true", help="run every module of every suite")
    ap.add_argument("--plan", action="store_true", help="print what would run, run nothing")
    ap.add_argument("--root", type=Path, default=ROOT, help="where the milestones are")
    ap.add_argument("--json", type=Path, help="write each module's outcome and seconds here")
    ap.add_argument(
        "--with-root-tests",
        action="store_true",
        help="also run the repository's tests/ (cross-milestone, tools, docs) in the same pool",
    )
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args, pytest_args = ap.parse_args(argv[:cut]), argv[cut + 1 :]
    names = sorted(args.milestones, key=milestone_number)
    trees = [Tree.load(args.root / name) for name in names]
    plans = plan(trees, reuse=not args.no_reuse)

    if args.plan:
        for tree in trees:
            print(f"== {tree.name}")
            for p in plans[tree.name]:
                print(f"  {p.rel}: " + (f"same as {p.same_as}" if p.same_as else f"run ({p.why})"))
        return 0

    suites = [Suite(t.path, t.name, [p.rel for p in plans[t.name] if not p.same_as]) for t in trees]
    cost = {t.name: estimated_cost(t, s.modules) for t, s in zip(trees, suites)}
    # The repository's tests are long (notebooks, every milestone generating) and grow with each
    # milestone: they start first, beside the longest suite, instead of after all of them.
    root_suite = Suite(args.root, TESTS, [TESTS], pythonpath=False)
    jobs = ([root_suite] if args.with_root_tests else []) + [
        s for s in sorted(suites, key=lambda s: -cost[s.milestone]) if s.modules
    ]
    threads = 1 if args.jobs > 1 else None
    done: dict[str, Suite] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_suite, s, pytest_args, threads) for s in jobs]
        for fut in as_completed(futures):
            s = fut.result()
            done[s.milestone] = s
            print(f"== {s.milestone} ({s.seconds:.0f} s, {s.cpu:.0f} s CPU;", end=" ")
            if s is root_suite:
                print("the repository's own tests) ==")
            else:
                reused = len(plans[s.milestone]) - len(s.modules)
                print(f"{len(s.modules)} modules run,", end=" ")
                print(f"{reused} the same as an earlier milestone's) ==")
            print(s.output.rstrip(), flush=True)

    total: Counter = Counter()
    failed = []
    report: dict[str, dict[str, dict]] = {}
    for s in suites:
        run = done.get(s.milestone)
        if run is not None and run.rc not in (0, 5):  # 5: no tests collected
            failed.append(s.milestone)
        lines = []
        for p in plans[s.milestone]:
            source = p.same_as or s.milestone
            res = done[source].results.get(p.rel) if source in done else None
            if res is None:
                res = Result(False, Counter(failed=1))  # never ran: a crash or an early stop
            total += res.counts
            report.setdefault(s.milestone, {})[p.rel] = {
                "passed": res.passed,
                "counts": dict(res.counts),
                "seconds": 0.0 if p.same_as else res.seconds,
                "cpu": 0.0 if p.same_as else res.cpu,
                "same_as": p.same_as,
            }
            if p.same_as:
                state = "passed" if res.passed else "FAILED" if res.counts["failed"] else "not run"
                lines.append(f"  {p.rel}: same as {p.same_as} ({state})")
            if not res.passed and s.milestone not in failed:
                failed.append(s.milestone)
        if lines:
            print(f"== {s.milestone}: {len(lines)} modules not run again ==")
            print("\n".join(lines))
    if args.with_root_tests:
        run = done[TESTS]
        for res in run.results.values():
            total += res.counts
        if run.rc not in (0, 5) or not all(r.passed for r in run.results.values()):
            failed.append(TESTS)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    modules = sum(len(p) for p in plans.values())
    taken = sum(bool(p.same_as) for ps in plans.values() for p in ps)
    print(f"{taken} of {modules} test modules were not run again (the same as an earlier one's)")
    if failed:
        print(f"FAILED suites: {', '.join(failed)}")
    else:
        print(f"all {len(suites) + args.with_root_tests} suites passed")
    print(summary_line(total), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
