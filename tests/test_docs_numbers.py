"""tools/docs_numbers.py: the numbers on the site come from committed JSON and the lineage tool."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docs_numbers as dn  # noqa: E402

NOTES = dn.documents()


def test_bench_reads_and_formats():
    text = '{{ bench("m3/compare_h100.json", "results.m3.engine_stats.num_preemptions", "d") }}'
    assert dn.render(text).isdigit()
    pct = dn.render('{{ bench("m3/throughput_h100.json", "engine_stats.kv_utilization", ".1%") }}')
    assert pct.endswith("%")


def test_escaped_placeholder_is_shown_as_written():
    assert dn.render('\\{{ bench("x.json", "y") }}') == '{{ bench("x.json", "y") }}'
    block = '\\<!--bench("x.json", "y")-->VALUE<!--/-->'
    assert dn.render(block) == block[1:]
    assert dn.refresh(block) == block
    assert dn.problems(block) == []


def test_a_results_file_in_a_milestone_folder():
    expr = 'bench("m3/compare_h100.json", "results.m3.output_tokens_per_s", ",.1f")'
    assert dn.evaluate(expr).replace(",", "").replace(".", "").isdigit()
    with pytest.raises(dn.NumberError, match=r"have: .*m3/compare_h100\.json"):
        dn.evaluate('bench("m3_vs_m2_h100.json", "results.m3.output_tokens_per_s")')


def test_refresh_makes_blocks_that_show_the_number_and_render_alike():
    short = (
        'TPOT {{ bench("m1/latency_h100.json", "results.folovllm.tpot_s", ".1f", scale=1000) }} ms'
    )
    value = dn.render(short)
    block = dn.refresh(short)
    expr = 'bench("m1/latency_h100.json", "results.folovllm.tpot_s", ".1f", scale=1000)'
    assert block == value.replace("TPOT ", f"TPOT <!--{expr}-->").replace(" ms", "<!--/--> ms")
    assert dn.render(block) == value  # the site shows what the file shows
    assert dn.refresh(block) == block and dn.problems(block, "x.md") == []
    assert dn.placeholders(block) == dn.placeholders(short) == [expr]


def test_check_names_the_file_line_and_placeholder_of_a_stale_or_broken_block():
    expr = 'bench("m1/latency_h100.json", "results.folovllm.tpot_s", ".1f", scale=1000)'
    text = f"line one\nTPOT <!--{expr}-->0.0<!--/--> ms\n"
    (found,) = dn.problems(text, "NOTE.md")
    assert found.startswith(f"NOTE.md:2: <!--{expr}-->: has '0.0', the data gives ")
    (found,) = dn.problems('x <!--bench("m1/nope_h100.json", "a")-->1<!--/-->', "NOTE.md")
    assert "NOTE.md:1" in found and "no benchmarks/results/m1/nope_h100.json" in found
    (found,) = dn.problems('x {{ diff_lines("m3") }}', "NOTE.md")
    assert "not a block yet" in found
    (found,) = dn.problems(f"text\n<!--{expr}-->39.9<!--/--> ms", "NOTE.md")
    assert found.startswith("NOTE.md:2: a line starting with a block")
    assert dn.problems(f"```text\n<!--{expr}-->39.9<!--/-->\n```", "NOTE.md") == []
    unclosed = f"x <!--{expr}-->39.9 and <!--{expr}-->39.9<!--/-->"
    assert any("no closing" in p for p in dn.problems(unclosed, "NOTE.md"))
    with pytest.raises(dn.NumberError, match="no closing"):
        dn.refresh(unclosed, "NOTE.md")


def test_a_value_of_several_lines_keeps_the_indentation_of_its_block():
    text = '```text\n    {{ diff_stat("m3") }}\n```\n'
    block = dn.refresh(text)
    lines = block.split("\n")
    assert lines[1] == '    <!--diff_stat("m3")-->' and lines[-3] == "    <!--/-->"
    assert all(line.startswith("    ") for line in lines[2:-2] if line)
    assert dn.render(block) == dn.render(text) and dn.problems(block) == []
    assert dn.render(block).split("\n")[-3].startswith("    folovllm/ diff: ")


def test_every_note_readme_and_page_is_up_to_date_with_the_data():
    """What `python tools/docs_numbers.py check` runs: a stale value fails with file and line."""
    found = [p for path in dn.documents() for p in dn.problems(path.read_text("utf-8"), str(path))]
    assert not found, "run: python tools/docs_numbers.py refresh\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{{ bench("no_such.json", "a") }}', "no benchmarks/results/no_such.json"),
        ('{{ bench("m3/throughput_h100.json", "engine_stats.nope") }}', "no key"),
        ('{{ bench("m3/throughput_h100.json", "milestone") }}', "not a number"),
        ('{{ diff_lines("m99") }}', "no diff for milestone"),
        ('{{ bench("m3/throughput_h100.json") }}', "TypeError"),
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
    # what is left is what a backslash shows as written (the contributing page's examples)
    escaped = [m.group(0)[1:] for m in dn.PLACEHOLDER.finditer(text) if m.group(0)[0] == "\\"]
    assert len(dn.placeholders(out)) == len(escaped)
    assert out.count("<!--/-->") == sum(e.count("<!--/-->") for e in escaped)


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
