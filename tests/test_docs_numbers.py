"""tools/docs_numbers.py: the numbers on the site come from committed JSON and the lineage tool."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docs_numbers as dn  # noqa: E402

NOTES = sorted(ROOT.glob("m*_*/NOTE*.md")) + [ROOT / "benchmarks" / "results" / "README.md"]


def test_bench_reads_and_formats():
    text = '{{ bench("m3_vs_m2_h100.json", "results.m3.engine_stats.num_preemptions", "d") }}'
    assert dn.render(text).isdigit()
    pct = dn.render('{{ bench("m3_throughput_h100.json", "engine_stats.kv_utilization", ".1%") }}')
    assert pct.endswith("%")


def test_escaped_placeholder_is_shown_as_written():
    assert dn.render('\\{{ bench("x.json", "y") }}') == '{{ bench("x.json", "y") }}'


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{{ bench("no_such.json", "a") }}', "no benchmarks/results/no_such.json"),
        ('{{ bench("m3_throughput_h100.json", "engine_stats.nope") }}', "no key"),
        ('{{ bench("m3_throughput_h100.json", "milestone") }}', "not a number"),
        ('{{ diff_lines("m99") }}', "no diff for milestone"),
        ('{{ bench("m3_throughput_h100.json") }}', "TypeError"),
    ],
)
def test_a_bad_placeholder_fails_loudly(text, needle):
    with pytest.raises(dn.NumberError, match=needle):
        dn.render(text, "page.md")


def test_diff_lines_match_the_lineage_tool():
    assert int(dn.diff_lines("m3")) <= int(dn.diff_budget("m3"))
    assert dn.diff_stat("m3").splitlines()[-1].startswith("folovllm/ diff: ")


@pytest.mark.parametrize("path", NOTES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_placeholder_in_the_notes_renders(path):
    text = path.read_text(encoding="utf-8")
    out = dn.render(text, str(path))
    assert not dn.placeholders(out)


def test_both_languages_cite_the_same_numbers():
    for zh in sorted(ROOT.glob("m*_*/NOTE.md")):
        en = zh.with_name("NOTE.en.md")
        a = sorted(set(dn.placeholders(zh.read_text(encoding="utf-8"))))
        b = sorted(set(dn.placeholders(en.read_text(encoding="utf-8"))))
        assert a == b, f"{zh.parent.name}: NOTE.md and NOTE.en.md cite different numbers"


def test_quoted_code_paths_link_to_the_repository_outside_code_blocks():
    base = "https://example.org/repo/blob/main/"
    lines = [
        "see `m3_paged/folovllm/core/kv_cache_manager.py: KVCacheManager.allocate_slots` here",
        "```text",
        "`m3_paged/folovllm/core/block_pool.py`",
        "```",
        "and [`tools/milestones.py`](x) stays",
    ]
    out = dn.link_code(lines, base)
    assert out[0] == (
        "see [`m3_paged/folovllm/core/kv_cache_manager.py: KVCacheManager.allocate_slots`]"
        "(https://example.org/repo/blob/main/m3_paged/folovllm/core/kv_cache_manager.py) here"
    )
    assert out[1:] == lines[1:]
