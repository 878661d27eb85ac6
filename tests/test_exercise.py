"""tools/exercise.py: blank out one function of a milestone, run that milestone's tests on the copy."""

from __future__ import annotations

import ast
import json
import shutil
import sys
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
    assert exercise.main(["make", "m3", FN, "--dir", str(out)]) == 0
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
    assert "tests that exercise it" in printed and "NOTE.md" in printed


def test_check_reports_failures_then_passes_once_written(made, capsys):
    out, _ = made
    small = ["tests/test_scheduler.py::test_blocks_are_taken_only_when_tokens_need_them"]
    assert exercise.main(["check", "--dir", str(out), *small]) == 1
    assert "0 passed, 1 failed" in capsys.readouterr().out
    shutil.copyfile(ROOT / "m3_paged" / REL, out / REL)  # "the learner's solution"
    assert exercise.main(["check", "--dir", str(out), *small]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("milestone,function", [(m, f) for m, f, _ in exercise.SUGGESTED])
def test_every_suggested_exercise_exists(milestone, function):
    mdir = exercise.milestone_dir(milestone)
    path, node = exercise.find_function(mdir / "folovllm", function)
    assert node.name == function.rpartition(".")[2]


def test_bad_requests_are_usage_errors(tmp_path):
    assert exercise.main(["make", "m3", "NoSuch.thing", "--dir", str(tmp_path / "a")]) == 2
    assert exercise.main(["make", "m99", FN, "--dir", str(tmp_path / "b")]) == 2
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "file.txt").write_text("mine")
    assert exercise.main(["make", "m3", FN, "--dir", str(keep)]) == 2  # never overwrites
    assert (keep / "file.txt").read_text() == "mine"
    assert exercise.main(["check", "--dir", str(tmp_path / "none")]) == 2


@pytest.mark.parametrize("page", ["exercises.md", "exercises.en.md"])
def test_the_site_lists_the_suggested_exercises(page):
    import re

    text = (ROOT / "learn" / page).read_text(encoding="utf-8")
    listed = re.findall(r"^\| `make exercise-(m\d) FN=([\w.]+)`", text, flags=re.M)
    assert listed == [(m, f) for m, f, _ in exercise.SUGGESTED]
