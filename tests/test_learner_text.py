"""Learner-facing text describes the code as it is: no development history.

Notes, READMEs, the site's pages and the notebooks' markdown state what the code does and what was
measured, on which card, against which baseline in the same run. How the code got there (working
sessions, issue numbers, commit hashes, snapshot copies, "the second device call") lives in git
history, where a learner who wants it can read it. This test fails on any such word and names the
file, the line and the word.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HISTORY = [
    (re.compile(r"\bsessions?\b", re.I), "a working session"),
    (re.compile(r"\bissue\s*#?\d+|\bissues\s*#\d+", re.I), "an issue number"),
    (re.compile(r"\.snap\b"), "a snapshot copy"),
    (re.compile(r"\b(device|closing|first|second|third) call\b", re.I), "a device call"),
    (re.compile(r"\bcall \d+\b", re.I), "a numbered device call"),
    (re.compile(r"\b(first|second) pass\b", re.I), "a numbered pass of work"),
    (re.compile(r"\bcommit [0-9a-f]{7,40}\b"), "a commit hash"),
    (
        re.compile(
            r"(?<![0-9a-zA-Z_x./-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,12}(?![0-9a-zA-Z_])"
        ),
        "a commit hash",
    ),  # fmt: skip
    (re.compile(r"会话|第[一二三四五]次(设备)?调用"), "a working session (zh)"),
]


def learner_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "benchmarks" / "results" / "README.md"]
    for ms in sorted(ROOT.glob("m[0-9]*_*")):
        files += [p for p in ms.glob("*.md") if p.is_file()]
    files += sorted((ROOT / "learn").rglob("*.md")) + sorted((ROOT / "learn").rglob("*.ipynb"))
    skip = ROOT / "learn" / "diffs"  # generated from the code
    return [p for p in files if p.is_file() and skip not in p.parents]


def prose(path: Path) -> str:
    """The learner-facing text: markdown as is; a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def history_words(text: str) -> list[tuple[int, str, str]]:
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        # Placeholders name data files ({{ bench(...) }} or <!--bench(...)-->): not prose.
        line = re.sub(r"\{\{.*?\}\}|<!--.*?-->", "", line)
        for pattern, what in HISTORY:
            if m := pattern.search(line):
                hits.append((number, m.group(0), what))
    return hits


@pytest.mark.parametrize("path", learner_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_history(path):
    hits = history_words(prose(path))
    assert not hits, "\n".join(
        f"{path.relative_to(ROOT)}:{n}: {word!r} ({what})" for n, word, what in hits
    )


@pytest.mark.parametrize(
    "text",
    [
        "Measured in session 5.",
        "see issue 10",
        "from .snap/m7",
        "the closing call",
        "device call 3",
        "after the second pass",
        "code of commit dbcb9f1",
        "at 3205a35 the step took",
        "本次会话",
    ],
)
def test_the_check_finds_history(text):
    assert history_words(text)


@pytest.mark.parametrize(
    "text",
    [
        "fp16 exponent trick (0x6400)",
        "a pytest fixture with scope",
        "the pass over the weights",
        '{{ bench("fastpath_s5_v2_latency_h100.json", "k") }} tok/s',
        "a block hash is 32 bytes",
        "the replay issues 6 launches",
    ],
)
def test_the_check_leaves_facts_alone(text):
    assert not history_words(text)
