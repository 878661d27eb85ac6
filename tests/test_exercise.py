"""tools/exercise.py: blank out one function of a milestone, run that milestone's tests on the copy."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import exercise  # noqa: E402

FN = "KVCacheManager.allocate_slots"
REL = Path("folovllm/core/kv_cache_manager.py")


@pytest.fixture
def made(tmp_path, capsys):
    out = tmp_path / "ex"
    assert exercise.main(["make", "m3", FN, "--dir", str(out), "--lang", "en"]) == 0
    return out, capsys.readouterr().out


def test_make_blanks_out_exactly_one_function(made):
    out, printed = made
    original = (ROOT / "m3_paged" / REL).read_text(encoding="utf-8")
    blanked = (out / REL).read_text(encoding="utf-8")
    assert 'raise NotImplementedError("exercise: write KVCacheManager.allocate_slots")' in blanked
    tree = ast.parse(blanked)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KVCacheManager")
    fn = next(n for n in cls.body if getattr(n, "name", "") == "allocate_slots")
    assert ast.get_docstring(fn)  # the docstring stays: it is the specification
    assert isinstance(fn.body[-1], ast.Raise) and len(fn.body) == 2
    # everything else is untouched
    other = [line for line in original.splitlines() if "allocate_slots" not in line]
    assert blanked.count("\n") < original.count("\n")
    assert all(line in blanked for line in other if line.strip().startswith("def "))
    for path in (ROOT / "m3_paged" / "folovllm").rglob("*.py"):
        rel = path.relative_to(ROOT / "m3_paged")
        if rel != REL:
            assert (out / rel).read_bytes() == path.read_bytes()
    assert json.loads((out / ".exercise.json").read_text())["function"] == FN
    assert "m3_paged/NOTE.en.md" in printed and "read first" in printed
    # no m3 test names allocate_slots; Scheduler.schedule calls it, and test_scheduler names that
    assert "KVCacheManager.allocate_slots <- Scheduler.schedule" in printed
    assert "tests/test_scheduler.py::test_blocks_are_taken_only_when_tokens_need_them" in printed
    assert f"check --dir {out} -- tests/test_scheduler.py" in printed


def test_check_shows_the_first_failure_then_passes_once_written(made, capsys):
    out, _ = made
    small = ["tests/test_scheduler.py::test_blocks_are_taken_only_when_tokens_need_them"]
    assert exercise.main(["check", "--dir", str(out), "--lang", "en", *small]) == 1
    printed = capsys.readouterr().out
    assert "0 passed, 1 failed" in printed
    assert f"first failure: {small[0]}" in printed
    assert "NotImplementedError: exercise: write KVCacheManager.allocate_slots" in printed
    assert "raised at: folovllm/core/kv_cache_manager.py:" in printed
    assert "still blank" in printed
    shutil.copyfile(ROOT / "m3_paged" / REL, out / REL)  # "the learner's solution"
    assert exercise.main(["check", "--dir", str(out), "--lang", "en", *small]) == 0
    printed = capsys.readouterr().out
    assert "1 passed, 0 failed" in printed and "first failure" not in printed


# -- a milestone small enough to run its tests in a second: the learner's whole loop --------------
NOTE_ZH = """# m0：练习用

## 第一部分 · 加法

### 怎么加

`add(a, b)` 返回两数之和。

```python
# add(a, b) 在代码块里：这一行不是标题
```

## 这一步改了哪些文件

| 文件 | `add` |
"""

NOTE_EN = NOTE_ZH.replace("第一部分 · 加法", "Part 1 · Adding").replace("怎么加", "How to add")

PACKAGE = '''
def add(a, b):
    """The sum of a and b."""
    total = a + b
    return total


def twice(a):
    """a + a."""
    result = add(a, a)
    return result


def unused(a):
    """Nobody calls this one."""
    result = -a
    return result


class Box:
    def __init__(self, value):
        """Keep the value."""
        self.value = value
        self.size = 1
'''

TESTS = """
import pytest

from folovllm.calc import Box, add, twice


@pytest.fixture
def three():
    return add(1, 2)


def helper():
    return twice(2)


def test_add():
    assert add(1, 2) == 3


def test_fixture(three):
    assert three == 3


def test_helper():
    assert helper() == 4


def test_box():
    assert Box(5).value == 5


def test_other():
    assert 1 + 1 == 2
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A repository with one milestone, m0_toy: a package, its tests, a note in each language."""
    repo = tmp_path / "repo"
    m = repo / "m0_toy"
    (m / "folovllm").mkdir(parents=True)
    (m / "tests").mkdir()
    (m / "folovllm" / "__init__.py").write_text("")
    (m / "folovllm" / "calc.py").write_text(PACKAGE)
    (m / "tests" / "test_calc.py").write_text(TESTS)
    (m / "NOTE.md").write_text(NOTE_ZH)
    (m / "NOTE.en.md").write_text(NOTE_EN)
    monkeypatch.setattr(exercise, "REPO_ROOT", repo)
    return m, tmp_path / "ex"


def test_make_names_the_tests_that_use_the_function_and_the_command(toy, capsys):
    mdir, out = toy
    assert exercise.main(["make", "m0", "add", "--dir", str(out), "--lang", "en"]) == 0
    printed = capsys.readouterr().out
    # directly, through a fixture, through a helper that calls a function that names it? no:
    # helper() names twice, not add, so only the first two name add.
    named = re.findall(r"^  (tests/\S+)$", printed, flags=re.M)
    assert named == ["tests/test_calc.py::test_add", "tests/test_calc.py::test_fixture"]
    assert "tests that name it (2):" in printed
    py = ".venv/bin/python" if (mdir.parent / ".venv").exists() else "python3"
    assert (
        f"{py} tools/exercise.py check --dir {out} -- "
        "tests/test_calc.py::test_add tests/test_calc.py::test_fixture"
    ) in printed
    # the note in the reader's language, the sections that name it, code blocks are no headings
    assert "m0_toy/NOTE.en.md, the sections:" in printed
    assert "    - Part 1 · Adding › How to add" in printed
    assert "add(a, b) 在代码块里" not in printed and "改了哪些文件" not in printed


def test_make_follows_the_callers_when_no_test_names_it(toy, capsys):
    mdir, out = toy
    (mdir / "tests" / "test_calc.py").write_text(TESTS.replace("add(1, 2)", "1 + 2"))
    assert exercise.main(["make", "m0", "add", "--dir", str(out), "--lang", "en"]) == 0
    printed = capsys.readouterr().out
    assert "no test names it directly. Where the package uses it: add <- twice" in printed
    assert re.findall(r"^  (tests/\S+)$", printed, flags=re.M) == [
        "tests/test_calc.py::test_helper"
    ]


def test_make_says_so_when_no_test_names_it(toy, capsys):
    _, out = toy
    assert exercise.main(["make", "m0", "unused", "--dir", str(out), "--lang", "en"]) == 0
    printed = capsys.readouterr().out
    assert "no test names it directly: run the whole suite" in printed
    assert re.search(rf"^  \S+ tools/exercise.py check --dir {re.escape(str(out))}$", printed, re.M)
    # the note does not name it: say where to start instead of listing sections
    assert "the note does not name this function" in printed


def test_a_constructor_is_named_by_its_class(toy, capsys):
    _, out = toy
    assert exercise.main(["make", "m0", "Box.__init__", "--dir", str(out), "--lang", "en"]) == 0
    printed = capsys.readouterr().out
    assert re.findall(r"^  (tests/\S+)$", printed, flags=re.M) == ["tests/test_calc.py::test_box"]


def test_check_shows_the_assertion_of_the_first_failure(toy, capsys):
    mdir, out = toy
    assert exercise.main(["make", "m0", "add", "--dir", str(out), "--lang", "en"]) == 0
    capsys.readouterr()
    calc = out / "folovllm" / "calc.py"
    blank = calc.read_text()
    calc.write_text(
        blank.replace('raise NotImplementedError("exercise: write add")', "return a - b")
    )
    assert exercise.main(["check", "--dir", str(out), "--lang", "en"]) == 1
    printed = capsys.readouterr().out
    assert "2 passed, 3 failed, 0 skipped" in printed
    assert "first failure: tests/test_calc.py::test_add" in printed
    line = TESTS.splitlines().index("    assert add(1, 2) == 3") + 1
    assert f"tests/test_calc.py:{line}: assert add(1, 2) == 3" in printed
    assert "assert -1 == 3" in printed and "still blank" not in printed
    blank_line = 'raise NotImplementedError("exercise: write add")'
    calc.write_text(blank.replace(blank_line, "return a +"))
    assert exercise.main(["check", "--dir", str(out), "--lang", "en"]) == 1
    printed = capsys.readouterr().out
    assert "  FAIL tests/test_calc.py\n" in printed and "SyntaxError" in printed  # not collected
    calc.write_text(blank.replace(blank_line, "return a + b"))
    assert exercise.main(["check", "--dir", str(out), "--lang", "zh"]) == 0
    assert "5 个通过，0 个失败" in capsys.readouterr().out


def test_check_without_matching_tests_is_a_usage_error(toy, capsys):
    _, out = toy
    assert exercise.main(["make", "m0", "add", "--dir", str(out)]) == 0
    assert exercise.main(["check", "--dir", str(out), "tests/test_calc.py::test_nothing"]) == 2


@pytest.mark.parametrize(
    "env,lang",
    [
        ({"LANG": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({}, "en"),
        ({"LC_ALL": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}, "zh"),  # LC_ALL wins
        ({"LC_ALL": "en_GB.UTF-8", "LANG": "zh_CN.UTF-8"}, "en"),
        ({"LC_MESSAGES": "zh_CN.UTF-8", "LANG": "en_US.UTF-8"}, "zh"),
    ],
)
def test_the_default_language_comes_from_the_locale(env, lang):
    assert exercise.default_lang(env) == lang


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_the_output_and_the_note_follow_the_language(toy, capsys, monkeypatch, lang):
    _, out = toy
    for var in ("LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8" if lang == "zh" else "en_US.UTF-8")
    assert exercise.main(["make", "m0", "add", "--dir", str(out)]) == 0  # no --lang
    printed = capsys.readouterr().out
    if lang == "zh":
        assert printed.startswith("练习：写出 add") and "m0_toy/NOTE.md 里的这几节" in printed
        assert "第一部分 · 加法 › 怎么加" in printed and "read first" not in printed
    else:
        assert printed.startswith("exercise: write add") and "m0_toy/NOTE.en.md" in printed
        assert "Part 1 · Adding › How to add" in printed and "先读" not in printed
    assert exercise.main(["list"]) == 0
    listed = capsys.readouterr().out
    row = next(r for r in exercise.SUGGESTED if r[0] == "m6")
    assert (row[2] if lang == "zh" else row[3]) in listed


def test_describe_failure_reads_pytests_report():
    element = ET.fromstring(
        '<failure message="assert 2 == 3">def test_x():\n'
        ">       assert f(1) == 3\n"
        "E       assert 2 == 3\n"
        "E        +  where 2 = f(1)\n\n"
        "tests/test_a.py:7: AssertionError</failure>"
    )
    info = exercise.describe_failure(element)
    assert info["statement"] == "assert f(1) == 3"
    assert info["message"] == ["assert 2 == 3", "+  where 2 = f(1)"]
    assert info["test_at"] == info["raised_at"] == "tests/test_a.py:7"


# -- the suggested exercises ------------------------------------------------------------------------
@pytest.mark.parametrize("milestone,function", [(m, f) for m, f, *_ in exercise.SUGGESTED])
def test_every_suggested_exercise_exists_and_has_tests(milestone, function):
    mdir = exercise.milestone_dir(milestone)
    path, node = exercise.find_function(mdir / "folovllm", function)
    assert node.name == function.rpartition(".")[2]
    assert exercise.find_tests(mdir, function)[0], "make would say: run the whole suite"


def test_every_milestone_with_exercises_has_at_least_two():
    per = {}
    for m, *_ in exercise.SUGGESTED:
        per[m] = per.get(m, 0) + 1
    assert all(per.get(m, 0) >= 2 for m in ("m5", "m6", "m7")), per


def test_bad_requests_are_usage_errors(tmp_path):
    assert exercise.main(["make", "m3", "NoSuch.thing", "--dir", str(tmp_path / "a")]) == 2
    assert exercise.main(["make", "m99", FN, "--dir", str(tmp_path / "b")]) == 2
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "file.txt").write_text("mine")
    assert exercise.main(["make", "m3", FN, "--dir", str(keep)]) == 2  # never overwrites
    assert (keep / "file.txt").read_text() == "mine"
    assert exercise.main(["check", "--dir", str(tmp_path / "none")]) == 2


@pytest.mark.parametrize("page,column", [("exercises.md", 2), ("exercises.en.md", 3)])
def test_the_site_lists_exactly_the_suggested_exercises(page, column):
    text = (ROOT / "learn" / page).read_text(encoding="utf-8")
    listed = re.findall(r"^\| `make exercise-(m\d+) FN=([\w.]+)` \| (.+) \|$", text, flags=re.M)
    assert listed == [(row[0], row[1], row[column]) for row in exercise.SUGGESTED]
