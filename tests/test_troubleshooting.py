"""The troubleshooting page quotes the engine's real error messages: each must still be in the code.

The newest milestone directory (found by its number, not by name) is the code a reader runs; a message that
was reworded there without updating learn/troubleshooting*.md fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "learn" / "troubleshooting.md", ROOT / "learn" / "troubleshooting.en.md"]


def newest_milestone() -> Path:
    found = [
        (int(m.group(1)), p)
        for p in ROOT.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"m(\d+)_\w+", p.name))
    ]
    assert found, "no milestone directories"
    return max(found)[1]


def quoted_messages(page: Path) -> list[str]:
    """The first column of each table row: `message fragment`."""
    rows = re.findall(r"^\| `([^`]+)` \|", page.read_text(encoding="utf-8"), flags=re.M)
    return rows


def engine_source() -> str:
    pkg = newest_milestone() / "folovllm"
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(pkg.rglob("*.py")))


def test_both_languages_quote_the_same_messages():
    zh, en = (quoted_messages(p) for p in PAGES)
    assert len(zh) >= 10
    assert zh == en


@pytest.mark.parametrize("message", quoted_messages(PAGES[0]))
def test_quoted_message_exists_in_the_newest_milestone(message):
    assert message in engine_source(), (
        f"{message!r} is quoted in learn/troubleshooting.md but no longer in "
        f"{newest_milestone().name}/folovllm: update the page"
    )
