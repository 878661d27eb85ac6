"""Tests of tools/milestones.py on small synthetic milestone trees (run as a subprocess)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "milestones.py"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

CONFIG = "".join(f"line {i}\n" for i in range(1, 11))
CONFIG_M1 = CONFIG.replace("line 8\n", "line 8 changed in m1\n")
# "-- x" and "++ y" become "--- x" and "+++ y" in a diff: they must still count as lines.
MODEL_M1 = "x = 1\n-- sql comment\ny = 2\n"
MODEL_M2 = "x = 1\n++ other\ny = 2\n"
# No newline at the end, and a run of four backticks (the docs fence must be longer).
TEST_B = 'DOC = """````"""'

MANIFESTS = {
    "m0_init": {"name": "m0_init", "title": "Foundation", "claim": "Loads a config."},
    "m1_basic": {
        "name": "m1_basic",
        "title": "Basic inference",
        "previous": "m0_init",
        "diff_budget": 100,
        "claim": "Generates text.",
        "files": {
            "added": ["folovllm/model.py"],
            "changed": ["folovllm/config.py"],
            "removed": ["folovllm/legacy.py"],
        },
    },
    "m2_batching": {
        "name": "m2_batching",
        "title": "Continuous batching",
        "previous": "m1_basic",
        "diff_budget": 50,
        "claim": "Serves many requests at once.",
        "files": {"added": ["tests/test_b.py"], "changed": ["folovllm/model.py"], "removed": []},
    },
}


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")


def write_manifest(root: Path, milestone: str, **overrides: object) -> None:
    """Write mK/milestone.toml from MANIFESTS[milestone]; ``files=`` replaces the [files] table."""
    data = {**MANIFESTS[milestone], **overrides}
    lines = [f"{key} = {json.dumps(value)}" for key, value in data.items() if key != "files"]
    lines.append("[files]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in data.get("files", {}).items()]
    write(root / milestone / "milestone.toml", "\n".join(lines) + "\n")


def write_pyproject(root: Path, package_dir: str, where: str) -> None:
    write(
        root / "pyproject.toml",
        '[project]\nname = "folovllm"\n\n'
        f'[tool.setuptools.package-dir]\n"" = "{package_dir}"\n\n'
        f'[tool.setuptools.packages.find]\nwhere = ["{where}"]\ninclude = ["folovllm*"]\n',
    )


def make_tree(root: Path) -> Path:
    """Three consistent milestones, with per-milestone and generated files that must be ignored."""
    m0, m1, m2 = root / "m0_init", root / "m1_basic", root / "m2_batching"
    write(m0 / "folovllm/__init__.py", "VERSION = 0\n")
    write(m0 / "folovllm/config.py", CONFIG)
    write(m0 / "folovllm/legacy.py", "a\nb\n")
    write(m0 / "tests/test_a.py", "def test_a():\n    assert True\n")
    for mdir in (m1, m2):
        write(mdir / "folovllm/__init__.py", "VERSION = 0\n")
        write(mdir / "folovllm/config.py", CONFIG_M1)
        write(mdir / "tests/test_a.py", "def test_a():\n    assert True\n")
    write(m1 / "folovllm/model.py", MODEL_M1)
    write(m2 / "folovllm/model.py", MODEL_M2)
    write(m2 / "tests/test_b.py", TEST_B)
    for i, mdir in enumerate((m0, m1, m2)):
        write_manifest(root, mdir.name)
        # Exempt or ignored: these differ between milestones and must not be reported.
        write(mdir / "README.md", f"# milestone {i}\n")
        write(mdir / "NOTE.md", f"note {i}\n")
        write(mdir / "folovllm/__pycache__/config.cpython-311.pyc", bytes([i, 0, 1]))
        write(mdir / ".pytest_cache/v/cache" / str(i), "x")
        write(mdir / f"tests/.hypothesis/examples/{i}", "x")
        write(mdir / "folovllm.egg-info/PKG-INFO", f"Version: {i}\n")
    write(root / "notes.txt", "not a milestone\n")
    write_pyproject(root, "m2_batching", "m2_batching")
    return root


def run_tool(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The problem lines of a failed check (everything but the summary line)."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"lineage check FAILED: {len(lines) - 1} problem(s)"
    return lines[:-1]


# --------------------------------------------------------------------------- check


def test_clean_tree_passes(tmp_path: Path) -> None:
    result = run_tool(make_tree(tmp_path), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "m0_init: OK  first milestone, 4 files",
        "m1_basic: OK  1 added, 1 changed, 1 removed; folovllm/ diff 7/100 lines",
        "m2_batching: OK  1 added, 1 changed, 0 removed; folovllm/ diff 2/50 lines",
        "lineage check OK: 3 milestones",
    ]


def test_undeclared_difference_is_drift(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write(root / "m2_batching/folovllm/__init__.py", "VERSION = 2\n")
    assert problems(run_tool(root, "check")) == [
        "m2_batching: folovllm/__init__.py differs from m1_basic"
        " but is not declared in [files].changed"
    ]


def test_declared_changed_but_identical(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    files = {
        **MANIFESTS["m2_batching"]["files"],
        "changed": ["folovllm/model.py", "tests/test_a.py"],
    }
    write_manifest(root, "m2_batching", files=files)
    assert problems(run_tool(root, "check")) == [
        "m2_batching: tests/test_a.py is declared in [files].changed"
        " but is byte-identical to m1_basic"
    ]


def test_undeclared_added_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write(root / "m2_batching/folovllm/extra.py", "pass\n")
    assert problems(run_tool(root, "check")) == [
        "m2_batching: folovllm/extra.py is new (not in m1_basic)"
        " but is not declared in [files].added"
    ]


def test_undeclared_removed_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "m2_batching/tests/test_a.py").unlink()
    assert problems(run_tool(root, "check")) == [
        "m2_batching: tests/test_a.py exists in m1_basic but not in m2_batching"
        " and is not declared in [files].removed"
    ]


def test_declared_in_two_lists_or_nonexistent(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    files = {
        "added": ["tests/test_b.py", "folovllm/ghost.py"],
        "changed": ["folovllm/model.py", "tests/test_b.py"],
        "removed": ["tests/test_a.py", "README.md"],
    }
    write_manifest(root, "m2_batching", files=files)
    assert problems(run_tool(root, "check")) == [
        "m2_batching: tests/test_b.py is declared in both [files].added and [files].changed",
        "m2_batching: [files] entry 'README.md' is per-milestone (exempt from lineage)"
        " and must not be declared",
        "m2_batching: tests/test_b.py is declared in [files].changed but does not exist"
        " in m1_basic (declare it in [files].added)",
        "m2_batching: folovllm/ghost.py is declared in [files].added"
        " but does not exist in m2_batching",
        "m2_batching: tests/test_a.py is declared in [files].removed"
        " but still exists in m2_batching",
    ]


def test_budget_exceeded_and_exact_budget(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_manifest(root, "m1_basic", diff_budget=5)
    assert problems(run_tool(root, "check")) == [
        "m1_basic: folovllm/ diff is 7 lines (added + removed), over its diff_budget of 5 by 2"
    ]
    write_manifest(root, "m1_basic", diff_budget=7)
    assert run_tool(root, "check").returncode == 0


def test_wrong_previous(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_manifest(root, "m2_batching", previous="m0_init")
    write_manifest(root, "m0_init", previous="m9_x")
    assert problems(run_tool(root, "check")) == [
        'm0_init: previous = "m9_x" but it is the first milestone (leave previous absent or "")',
        'm2_batching: previous = "m0_init" but the milestone before it is m1_basic',
    ]


def test_manifest_missing_or_invalid(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "m0_init/milestone.toml").unlink()
    write(root / "m1_basic/milestone.toml", "name = \n")
    write_manifest(root, "m2_batching", name="m2_other", diff_budget=-1)
    lines = problems(run_tool(root, "check"))
    assert lines[0] == "m0_init: milestone.toml is missing"
    assert lines[1].startswith("m1_basic: milestone.toml is not valid TOML: ")
    assert lines[2:] == [
        'm2_batching: milestone.toml: name = "m2_other" does not match the directory name',
        "m2_batching: milestone.toml: diff_budget must be a non-negative integer",
    ]


def test_pyproject_must_map_the_newest_milestone(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    write_pyproject(root, "m1_basic", "m0_init")
    assert problems(run_tool(root, "check")) == [
        'pyproject.toml: [tool.setuptools.package-dir] "" is "m1_basic"'
        ' but must be "m2_batching" (the newest milestone)',
        'pyproject.toml: [tool.setuptools.packages.find] where is ["m0_init"]'
        ' but must be ["m2_batching"]',
    ]
    (root / "pyproject.toml").unlink()
    assert run_tool(root, "check").returncode == 0


# --------------------------------------------------------------------------- list, diff, diffs


def test_list(tmp_path: Path) -> None:
    result = run_tool(make_tree(tmp_path), "list")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "m0_init: Foundation",
        "    Loads a config.",
        "m1_basic: Basic inference",
        "    Generates text.",
        "m2_batching: Continuous batching",
        "    Serves many requests at once.",
    ]


def test_milestones_order_by_number_past_nine(tmp_path: Path) -> None:
    """m10 comes after m9 (not after m1), is the newest, and ``m1`` still means m1_basic."""
    root = make_tree(tmp_path)
    for name, previous in (("m9_serve", "m2_batching"), ("m10_tp", "m9_serve")):
        shutil.copytree(root / "m2_batching", root / name)
        manifest = f'name = "{name}"\ntitle = "{name}"\nprevious = "{previous}"\n'
        write(root / name / "milestone.toml", manifest + 'diff_budget = 0\nclaim = "x"\n')
    write_pyproject(root, "m9_serve", "m10_tp")
    assert problems(run_tool(root, "check")) == [
        'pyproject.toml: [tool.setuptools.package-dir] "" is "m9_serve"'
        ' but must be "m10_tp" (the newest milestone)'
    ]
    write_pyproject(root, "m10_tp", "m10_tp")
    result = run_tool(root, "check")
    assert result.returncode == 0, result.stdout
    assert "m10_tp: OK  0 added, 0 changed, 0 removed" in result.stdout
    titles = [line for line in run_tool(root, "list").stdout.splitlines() if line[0] != " "]
    assert [t.split(":")[0] for t in titles] == [
        "m0_init",
        "m1_basic",
        "m2_batching",
        "m9_serve",
        "m10_tp",
    ]
    assert "b/m1_basic/folovllm/model.py" in run_tool(root, "diff", "m1").stdout
    assert run_tool(root, "diff", "m10").returncode == 0


def test_diff_shows_the_changes_sorted_by_path(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    result = run_tool(root, "diff", "m1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        "--- a/m0_init/folovllm/config.py\n+++ b/m1_basic/folovllm/config.py\n"
        "@@ -5,6 +5,6 @@\n line 5\n line 6\n line 7\n-line 8\n+line 8 changed in m1\n"
    ) in out
    assert "--- a/m0_init/folovllm/legacy.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n" in out
    assert "--- /dev/null\n+++ b/m1_basic/folovllm/model.py\n@@ -0,0 +1,3 @@\n+x = 1\n" in out
    headers = re.findall(r"^\+\+\+ (\S+)|^--- a/(\S+)\n\+\+\+ /dev/null", out, re.M)
    assert [h[0] or h[1] for h in headers] == [
        "b/m1_basic/folovllm/config.py",
        "m0_init/folovllm/legacy.py",
        "b/m1_basic/folovllm/model.py",
    ]
    assert "README" not in out and "pycache" not in out and "PKG-INFO" not in out
    assert run_tool(root, "diff", "m1_basic").stdout == out


def test_diff_counts_dash_lines_and_missing_final_newline(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    out = run_tool(root, "diff", "m2").stdout
    assert "@@ -1,3 +1,3 @@\n x = 1\n--- sql comment\n+++ other\n y = 2\n" in out
    assert '+DOC = """````"""\n\\ No newline at end of file\n' in out
    stat = run_tool(root, "diff", "m2", "--stat")
    assert stat.returncode == 0
    assert stat.stdout.splitlines() == [
        "  added removed  status   path",
        "      1       1  changed  folovllm/model.py",
        "      1       0  added    tests/test_b.py",
        "2 files changed, 2 insertions(+), 1 deletions(-)",
        "folovllm/ diff: 2 lines of a budget of 50",
    ]


def test_diff_unknown_or_first_milestone(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    unknown = run_tool(root, "diff", "m7")
    assert unknown.returncode == 2
    assert "unknown milestone 'm7' (milestones: m0_init, m1_basic, m2_batching)" in unknown.stderr
    first = run_tool(root, "diff", "m0")
    assert first.returncode == 2
    assert "m0_init is the first milestone: it has no previous milestone" in first.stderr


def test_diffs_writes_markdown_pages(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    out = tmp_path / "out"
    result = run_tool(root, "diffs", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.md", "m1_basic.md", "m2_batching.md"]
    m1 = (out / "m1_basic.md").read_text(encoding="utf-8")
    assert m1.startswith("# m1_basic: Basic inference — diff from m0_init\n\n**Claim:** Generates")
    assert "| `folovllm/config.py` | changed | 1 | 1 |" in m1
    assert "| `folovllm/model.py` | added | 3 | 0 |" in m1
    assert (
        "### `folovllm/config.py` (changed, +1 -1)\n\n```diff\n--- a/m0_init/folovllm/config.py\n"
        in m1
    )
    assert m1.endswith("+y = 2\n```\n")
    m2 = (out / "m2_batching.md").read_text(encoding="utf-8")
    # tests are folded: an admonition whose body (the fenced diff) is indented by 4 spaces
    assert '??? note "`tests/test_b.py` (added, +1 -0)"' in m2
    assert "\n    `````diff\n" in m2 and m2.endswith("\\ No newline at end of file\n    `````\n")
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "| [m1_basic](m1_basic.md) | Basic inference | 7 | 100 |" in index
    assert "| [m2_batching](m2_batching.md) | Continuous batching | 2 | 50 |" in index
    assert run_tool(root, "diffs").returncode == 0
    assert (root / "learn/diffs/m2_batching.md").read_text(encoding="utf-8") == m2


# --------------------------------------------------------------------------- port


@needs_git
def test_port_carries_a_change_through_a_three_way_merge(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    old = tmp_path / "old_config.py"
    write(old, CONFIG)
    write(root / "m0_init/folovllm/config.py", CONFIG.replace("line 2\n", "line 2 fixed\n"))
    result = run_tool(root, "port", "m0", "folovllm/config.py", "--old-file", str(old))
    assert result.returncode == 0, result.stdout + result.stderr
    both = CONFIG_M1.replace("line 2\n", "line 2 fixed\n")
    assert (root / "m1_basic/folovllm/config.py").read_text() == both  # merged: both edits
    assert (root / "m2_batching/folovllm/config.py").read_text() == both  # copied
    assert (
        "m1_basic: folovllm/config.py merged (three-way: its own edits kept, the change applied)"
        in result.stdout
    )
    assert (
        "m2_batching: folovllm/config.py updated (it was identical to m1_basic's old version)"
        in result.stdout
    )
    assert result.stdout.endswith("lineage check OK\n")
    assert run_tool(root, "check").returncode == 0


@needs_git
def test_port_conflict_leaves_files_untouched(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    old = tmp_path / "old_config.py"
    write(old, CONFIG)
    # If port went on past the conflict, m2 (== the old m0 content) would be overwritten.
    write(root / "m2_batching/folovllm/config.py", CONFIG)
    write(root / "m0_init/folovllm/config.py", CONFIG.replace("line 8\n", "line 8 fixed in m0\n"))
    result = run_tool(root, "port", "m0_init", "folovllm/config.py", "--old-file", str(old))
    assert result.returncode == 1
    assert "m1_basic: CONFLICT: 1 conflict(s) merging the change into" in result.stdout
    assert (
        "<<<<<<< m1_basic/folovllm/config.py\nline 8 changed in m1\n=======\n"
        "line 8 fixed in m0\n>>>>>>> m0_init/folovllm/config.py (after)\n"
    ) in result.stdout
    assert (root / "m1_basic/folovllm/config.py").read_text() == CONFIG_M1
    assert (root / "m2_batching/folovllm/config.py").read_text() == CONFIG
    port_lines = result.stdout.split("lineage check")[0]
    assert "m2_batching" not in port_lines


@needs_git
def test_port_stops_where_the_file_was_removed(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree")
    old = tmp_path / "old_legacy.py"
    write(old, "a\nb\n")
    write(root / "m0_init/folovllm/legacy.py", "a\nc\n")
    result = run_tool(root, "port", "m0", "folovllm/legacy.py", "--old-file", str(old))
    assert result.returncode == 0
    assert (
        "m1_basic: folovllm/legacy.py does not exist (removed or renamed); stopping here"
        in result.stdout
    )


@needs_git
def test_port_reads_the_old_content_from_git(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "repo")
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tree"], cwd=root, check=True)
    write(root / "m1_basic/folovllm/config.py", CONFIG_M1.replace("line 1\n", "line one\n"))
    result = run_tool(root, "port", "m1", "folovllm/config.py", "--base", "HEAD")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "old content from HEAD" in result.stdout
    expected = CONFIG_M1.replace("line 1\n", "line one\n")
    assert (root / "m2_batching/folovllm/config.py").read_text() == expected
    # The lineage check now sees the ported file as it is (still consistent here).
    assert result.stdout.endswith("lineage check OK\n")
    # Nothing left to port against HEAD for a file that was not edited.
    same = run_tool(root, "port", "m1", "folovllm/__init__.py")
    assert same.returncode == 0
    assert "m1_basic/folovllm/__init__.py is the same as in HEAD: nothing to port" in same.stdout
    missing = run_tool(root, "port", "m1", "folovllm/new.py")
    assert missing.returncode == 2
    assert "m1_basic/folovllm/new.py does not exist" in missing.stderr
