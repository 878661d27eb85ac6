"""The learning site's structure: bilingual parity and the interview track's promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEARN = ROOT / "learn"
NOTES = sorted(p.parent for p in ROOT.glob("m*_*/NOTE.md"))


def test_every_page_has_an_english_twin():
    pages = [
        p
        for p in LEARN.rglob("*.md")
        if not p.name.endswith(".en.md") and "diffs" not in p.relative_to(LEARN).parts
    ]
    missing = [str(p.relative_to(ROOT)) for p in pages if not p.with_suffix(".en.md").is_file()]
    assert not missing


@pytest.mark.parametrize("mdir", NOTES, ids=lambda p: p.name)
def test_both_notes_have_the_same_outline(mdir):
    zh = (mdir / "NOTE.md").read_text(encoding="utf-8")
    en = (mdir / "NOTE.en.md").read_text(encoding="utf-8")
    for pattern in (r"^## ", r"^### ", r"^\?\?\? ", r"^```"):
        assert len(re.findall(pattern, zh, re.M)) == len(re.findall(pattern, en, re.M)), pattern


@pytest.mark.parametrize("mdir", NOTES, ids=lambda p: p.name)
def test_interview_questions_are_folded_and_tagged(mdir):
    """At least 12 questions, each followed by a folded answer with a difficulty tag."""
    if not (LEARN / "milestones" / f"{mdir.name}.md").is_file():
        pytest.skip(f"{mdir.name} is not on the site yet")
    for name in ("NOTE.md", "NOTE.en.md"):
        lines = (mdir / name).read_text(encoding="utf-8").splitlines()
        questions = [i for i, line in enumerate(lines) if re.match(r"^### Q\d+\. ", line)]
        assert len(questions) >= 12, f"{mdir.name}/{name}: {len(questions)} questions"
        for i in questions:
            answer = next(line for line in lines[i + 1 :] if line.strip())
            assert re.match(r'^\?\?\? \w+ ".*[★☆]{3}', answer), f"{mdir.name}/{name}: {lines[i]}"
