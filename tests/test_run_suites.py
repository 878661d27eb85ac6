"""tools/run_suites.py: which test modules a later milestone may take from an earlier one.

Small fake milestone trees made in tmp_path; the end-to-end cases run pytest on fake suites that
import nothing heavy (a second or two each).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "run_suites.py"
_spec = importlib.util.spec_from_file_location("run_suites", TOOL)
rs = importlib.util.module_from_spec(_spec)
sys.modules["run_suites"] = rs  # dataclasses look their module up by name
_spec.loader.exec_module(rs)

MILESTONE_PY = '''"""Which milestone this copy is."""

MILESTONES = (
    "m1_a",
    "m2_b",
)

MILESTONE = "{name}"


def has_milestone(name: str) -> bool:
    return MILESTONES.index(name) <= MILESTONES.index(MILESTONE)
'''

ENGINE = {
    "folovllm/__init__.py": (
        '"""The package re-exports."""\n'
        "from folovllm.engine import Engine\n"
        "from folovllm.milestone import MILESTONE\n"
        "from folovllm.util import helper\n"
    ),
    "folovllm/util.py": (
        "from __future__ import annotations\n\n"
        "from folovllm.core import step\n"
        "from folovllm.milestone import MILESTONES\n\n\n"
        "def helper(s: step | None = None) -> int:  # core.py in an annotation only\n"
        "    return len(MILESTONES) - 1\n"
    ),
    "folovllm/engine.py": (
        "from folovllm.core import step\n\n\nclass Engine:\n    def run(self):\n"
        "        return step()\n"
    ),
    "folovllm/core.py": "def step():\n    return 2\n",
    "folovllm/data.json": "{}\n",
    "tests/conftest.py": '"""Shared fixtures."""\n',
    "tests/fixtures/ckpt.txt": "weights v1\n",
    "tests/test_util.py": (
        "from folovllm.util import helper\n\n\ndef test_helper():\n    assert helper() == 1\n"
    ),
    "tests/test_reexport.py": (
        "from folovllm import helper\n\n\ndef test_helper():\n    assert helper() == 1\n"
    ),
    "tests/test_engine.py": (
        "from folovllm.engine import Engine\n\n\ndef test_run():\n    assert Engine().run() == 2\n"
    ),
    "tests/test_named.py": (
        "from folovllm.util import helper\n\n\ndef test_named():\n"
        "    assert helper() == 1  # runs in every milestone: names MILESTONE\n"
    ),
    "tests/test_fixture.py": (
        "from pathlib import Path\n\n"
        'DATA = Path(__file__).parent / "fixtures" / "ckpt.txt"\n\n\n'
        "def test_data():\n    assert DATA.read_text().startswith('weights')\n"
    ),
    "tests/test_cli.py": (
        "import subprocess\nimport sys\n\n\ndef test_cli():\n"
        '    subprocess.run([sys.executable, "-c", "import folovllm.core"], check=True)\n'
    ),
    "tests/test_isolation.py": "def test_ok():\n    pass\n",
}


def write_milestone(root: Path, name: str, changes: dict[str, str | None] | None = None) -> None:
    """A fake milestone: ENGINE with ``changes`` (path -> new text; None: no such file)."""
    files = {**ENGINE, "folovllm/milestone.py": MILESTONE_PY.format(name=name), **(changes or {})}
    if (root / name).exists():
        shutil.rmtree(root / name)
    for rel, text in files.items():
        if text is not None:
            path = root / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


def plan_of(root: Path, *names: str) -> dict[str, dict[str, str | None]]:
    """Per milestone, per test module: the milestone whose result it takes, or None (run)."""
    trees = [rs.Tree.load(root / n) for n in sorted(names, key=rs.milestone_number)]
    return {m: {p.rel: p.same_as for p in plans} for m, plans in rs.plan(trees).items()}


def m2_plan(root: Path, m2: dict[str, str | None], m1: dict | None = None) -> dict:
    write_milestone(root, "m1_a", m1)
    write_milestone(root, "m2_b", m2)
    return plan_of(root, "m1_a", "m2_b")["m2_b"]


def test_milestones_sort_by_number():
    names = ["m10_tp", "m9_serve", "m1_basic", "m0_init", "m2_batching"]
    assert sorted(names, key=rs.milestone_number) == [
        "m0_init",
        "m1_basic",
        "m2_batching",
        "m9_serve",
        "m10_tp",
    ]
    with pytest.raises(ValueError):
        rs.milestone_number("tools")


def test_unchanged_modules_are_reused_changed_ones_run(tmp_path):
    m2 = m2_plan(tmp_path, {})  # only milestone.py's MILESTONE line differs
    assert set(m2.values()) == {None, "m1_a"}
    assert m2["tests/test_engine.py"] == m2["tests/test_cli.py"] == "m1_a"
    assert m2["tests/test_named.py"] is None  # mentions MILESTONE: always run
    assert m2["tests/test_isolation.py"] is None

    # m2 changes the engine's core (reached from test_engine through engine.py) and test_util.
    core = "def step():\n    return 1 + 1\n"
    m2 = m2_plan(
        tmp_path,
        {"folovllm/core.py": core, "tests/test_util.py": ENGINE["tests/test_util.py"] + "# x\n"},
    )
    assert m2["tests/test_engine.py"] is None  # core.py differs: imported through engine.py
    assert m2["tests/test_util.py"] is None  # its own file differs
    # folovllm re-exports helper from util.py, which names core.py in an annotation only.
    assert m2["tests/test_reexport.py"] == "m1_a"
    assert m2["tests/test_fixture.py"] == "m1_a"
    assert m2["tests/test_cli.py"] is None  # a subprocess: the whole package counts
    # Annotations evaluated (no `from __future__ import annotations`): core.py counts.
    util = ENGINE["folovllm/util.py"].replace("from __future__ import annotations\n", "")
    m2 = m2_plan(
        tmp_path, {"folovllm/util.py": util, "folovllm/core.py": core}, {"folovllm/util.py": util}
    )
    assert m2["tests/test_reexport.py"] is None


def test_milestone_py_and_data(tmp_path):
    # milestone.py changing beyond the masked lines: a change for everything that imports it.
    ms = MILESTONE_PY.format(name="m2_b").replace("<= MILESTONES", "< 1 + MILESTONES")
    m2 = m2_plan(tmp_path, {"folovllm/milestone.py": ms})
    assert m2["tests/test_util.py"] is None and m2["tests/test_reexport.py"] is None
    assert m2["tests/test_engine.py"] == "m1_a"  # engine.py and core.py don't import it

    # tests/fixtures/** counts for the modules that name it; the package's data for every one.
    m2 = m2_plan(tmp_path, {"tests/fixtures/ckpt.txt": "weights v2\n"})
    assert m2["tests/test_fixture.py"] is None and m2["tests/test_engine.py"] == "m1_a"
    m2 = m2_plan(tmp_path, {"folovllm/data.json": '{"a": 1}\n'})
    assert m2["tests/test_engine.py"] is None and m2["tests/test_fixture.py"] is None

    # conftest.py is shared by every module.
    m2 = m2_plan(tmp_path, {"tests/conftest.py": '"""Edited."""\n'})
    assert set(m2.values()) == {None}

    # A plain helper counts only for the modules that import it (or that a conftest imports).
    uses = "from serve_helpers import PORT\n\n\ndef test_port():\n    assert PORT > 0\n"
    m2 = m2_plan(tmp_path, {"tests/serve_helpers.py": "PORT = 2\n", "tests/test_port.py": uses})
    assert m2["tests/test_port.py"] is None and m2["tests/test_engine.py"] == "m1_a"
    m1 = {"tests/serve_helpers.py": "PORT = 1\n", "tests/test_port.py": uses}
    m2 = m2_plan(tmp_path, {"tests/serve_helpers.py": "PORT = 2\n", "tests/test_port.py": uses}, m1)
    assert m2["tests/test_port.py"] is None  # its helper differs
    assert m2["tests/test_engine.py"] == m2["tests/test_util.py"] == "m1_a"
    conftest = 'pytest_plugins = ["serve_helpers"]\n'
    m2 = m2_plan(tmp_path, {"tests/serve_helpers.py": "PORT = 2\n", "tests/conftest.py": conftest},
                 {**m1, "tests/conftest.py": conftest})  # fmt: skip
    assert set(m2.values()) == {None}  # the conftest names it: every module


def test_side_effects_and_dynamic_imports(tmp_path):
    # The package's __init__ now imports core.py too, and m2 changes it: test_reexport does not
    # use it (helper comes from util.py), and importing it only defines names.
    init = ENGINE["folovllm/__init__.py"] + "from folovllm.core import step\n"
    m1 = {"folovllm/__init__.py": init}
    core = "import os\n\n\ndef step():\n    return 3\n"
    m2 = m2_plan(tmp_path, {**m1, "folovllm/core.py": core}, m1)
    assert m2["tests/test_reexport.py"] == "m1_a"
    # An import with a side effect counts for every module that runs it.
    effect = core + "\n\nos.environ['X'] = '1'\n"
    m2 = m2_plan(tmp_path, {**m1, "folovllm/core.py": effect}, m1)
    assert m2["tests/test_reexport.py"] is None
    # A module that imports by name depends on the whole package (core.py differs).
    dyn = "import importlib\n\n\ndef helper():\n    return importlib.import_module('x') and 1\n"
    m1 = {"folovllm/util.py": dyn}
    m2 = m2_plan(tmp_path, {**m1, "folovllm/core.py": core}, m1)
    assert m2["tests/test_util.py"] is None and m2["tests/test_reexport.py"] is None
    assert m2_plan(tmp_path, m1, m1)["tests/test_util.py"] == "m1_a"
    # A module that starts processes in a function only: importing it runs nothing dynamic, so a
    # test that only imports it keeps its own dependencies (engine.py is not one of them); one
    # that does at its top level (even as `name = ...`) makes them the whole package.
    spawns = (
        "import subprocess as sp\n\n\ndef step(cmd: sp.Popen | None = None):\n    return sp.run\n"
    )
    engine2 = {"folovllm/engine.py": ENGINE["folovllm/engine.py"] + "\n\nVERSION = 2\n"}
    m1 = {"folovllm/__init__.py": init, "folovllm/core.py": spawns}
    assert m2_plan(tmp_path, {**m1, **engine2}, m1)["tests/test_reexport.py"] == "m1_a"
    on_import = spawns + "\n\nOUT = sp.check_output(['true'])\n"
    m1 = {"folovllm/__init__.py": init, "folovllm/core.py": on_import}
    assert m2_plan(tmp_path, {**m1, **engine2}, m1)["tests/test_reexport.py"] is None


def test_later_milestones_reuse_the_first_that_ran_it(tmp_path):
    for name in ("m1_a", "m2_b", "m10_c"):
        write_milestone(tmp_path, name)
    plans = plan_of(tmp_path, "m10_c", "m2_b", "m1_a")
    assert list(plans) == ["m1_a", "m2_b", "m10_c"]
    assert plans["m1_a"]["tests/test_engine.py"] is None
    assert plans["m2_b"]["tests/test_engine.py"] == plans["m10_c"]["tests/test_engine.py"] == "m1_a"


def run_tool(root: Path, *names: str, capsys) -> tuple[int, str]:
    rc = rs.main([*names, "--root", str(root), "--jobs", "2", "--", "-q"])
    return rc, capsys.readouterr().out


def test_end_to_end_with_the_repository_tests(tmp_path, capsys):
    write_milestone(tmp_path, "m1_a")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_root.py").write_text(
        "def test_a():\n    pass\n\n\ndef test_b():\n    pass\n"
    )
    rc, out = run_tool(tmp_path, "m1_a", "--with-root-tests", capsys=capsys)
    assert rc == 0, out
    assert "the repository's own tests) ==" in out and "all 2 suites passed" in out
    assert out.rstrip().splitlines()[-1] == "9 passed, 0 failed"
    (tmp_path / "tests/test_root.py").write_text("def test_a():\n    assert False\n")
    rc, out = run_tool(tmp_path, "m1_a", "--with-root-tests", capsys=capsys)
    assert rc == 1 and "FAILED suites: tests" in out, out


def test_end_to_end_a_reused_failure_fails(tmp_path, capsys):
    named = {"tests/test_named.py": "def test_x():\n    pass\n"}  # no longer always run
    write_milestone(tmp_path, "m1_a")
    write_milestone(tmp_path, "m2_b", named)
    rc, out = run_tool(tmp_path, "m1_a", "m2_b", capsys=capsys)
    assert rc == 0, out
    assert "  tests/test_engine.py: same as m1_a (passed)" in out
    # m1 runs its 7 modules (a test each); m2 runs test_named and test_isolation, reuses 5.
    assert out.rstrip().splitlines()[-1] == "14 passed, 0 failed"

    broken = {"folovllm/core.py": "def step():\n    return 0\n"}  # test_engine fails in m1 ...
    write_milestone(tmp_path, "m1_a", broken)
    write_milestone(tmp_path, "m2_b", {**named, **broken})
    rc, out = run_tool(tmp_path, "m1_a", "m2_b", capsys=capsys)
    assert rc == 1
    assert "  tests/test_engine.py: same as m1_a (FAILED)" in out  # ... and so in m2
    assert "FAILED suites: m1_a, m2_b" in out
    assert out.rstrip().splitlines()[-1] == "12 passed, 2 failed"


def test_end_to_end_nothing_left_to_run(tmp_path, capsys):
    """A milestone whose every module is reused starts no pytest; one that collects no test
    (pytest's exit status 5) passes."""
    gone = {"tests/test_named.py": None, "tests/test_isolation.py": None}
    write_milestone(tmp_path, "m1_a", gone)
    write_milestone(tmp_path, "m2_b", gone)
    rc, out = run_tool(tmp_path, "m1_a", "m2_b", capsys=capsys)
    assert rc == 0, out
    assert "== m2_b (" not in out and "== m2_b: 5 modules not run again ==" in out
    assert out.rstrip().splitlines()[-1] == "10 passed, 0 failed"

    no_tests = {rel: None for rel in ENGINE if rel.startswith("tests/test_")}
    write_milestone(tmp_path / "e", "m3_c", {**no_tests, "tests/test_empty.py": "X = 1\n"})
    rc, out = run_tool(tmp_path / "e", "m3_c", capsys=capsys)
    assert rc == 0 and "no tests ran" in out, out
    assert out.rstrip().splitlines()[-1] == "0 passed, 0 failed"
