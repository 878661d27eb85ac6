"""tools/results_page.py: the Benchmark results page is generated from the committed JSON."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docs_numbers as dn  # noqa: E402
import results_page as rp  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def test_the_committed_page_is_what_the_json_gives():
    text = rp.README.read_text(encoding="utf-8")
    start = text.index("<!--results_table()-->") + len("<!--results_table()-->")
    committed = text[start : text.index("<!--/-->", start)].strip("\n")
    assert committed == rp.table(), "run: python tools/results_page.py"


def test_results_live_in_one_folder_per_milestone():
    flat = [p.name for p in RESULTS.iterdir() if p.is_file()]
    assert sorted(flat) == ["README.md", "reference.json"]
    for folder in rp.milestone_dirs():
        for path in folder.iterdir():
            assert path.suffix in (".json", ".png"), path
            assert not path.name.startswith(f"{folder.name}_"), f"{path}: drop the milestone prefix"


def test_every_milestone_with_a_headline_file_has_a_row():
    table = rp.table()
    for folder in rp.milestone_dirs():
        headline = [p for p in folder.glob("*.json") if p.name.split("_")[0] in
                    ("latency", "compare", "gptq", "prefix") or "_on_" in p.name]  # fmt: skip
        if headline:
            assert f"| {rp.milestone_name(folder.name)}" in table, folder.name


@pytest.fixture
def fake_results(tmp_path, monkeypatch):
    """A results tree with one milestone, m8, and the repository's reference.json."""
    (tmp_path / "m8").mkdir()
    shutil.copy(RESULTS / "reference.json", tmp_path / "reference.json")
    monkeypatch.setattr(rp, "RESULTS", tmp_path)
    return tmp_path / "m8"


def _latency(tpots: list[float], gpu: str, bandwidth: float) -> dict:
    runs = [{"tpot_s": t, "tokens_per_s": 1 / t} for t in tpots]
    mid = sorted(tpots)[len(tpots) // 2]
    return {
        "config": {
            "model": "Qwen/Qwen3-0.6B",
            "dummy_weights": True,
            "batch_size": 1,
            "input_len": 128,
            "output_len": 256,
            "num_iters": len(tpots),
            "bandwidth": bandwidth,
        },  # fmt: skip
        "device": {"gpu": gpu},
        "results": {
            "folovllm": {
                "tpot_s": mid,
                "tokens_per_s": 1 / mid,
                "runs": runs,
                "floor_tpot_s": 0.4e-3,
            }
        },  # fmt: skip
    }


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_a_change_within_the_spread_is_no_measurable_change(fake_results):
    _write(
        fake_results / "pdl_on_latency_h100.json",
        _latency([1.00e-3, 1.05e-3, 1.10e-3], "NVIDIA H100", 3.02e12),
    )
    _write(
        fake_results / "pdl_off_latency_h100.json",
        _latency([1.03e-3, 1.04e-3, 1.06e-3], "NVIDIA H100", 3.02e12),
    )
    (row,) = rp.rows_for(fake_results)
    assert row[8].startswith("no measurable change") and row[9] == "9.5% (3 runs each)"
    _write(
        fake_results / "pdl_off_latency_h100.json",
        _latency([1.5e-3, 1.5e-3, 1.6e-3], "NVIDIA H100", 3.02e12),
    )
    (row,) = rp.rows_for(fake_results)
    assert row[8] == "0.70x TPOT"


def test_a_throughput_file_without_repeats_says_its_spread_is_unknown(fake_results):
    committed = RESULTS / "m8"
    for name in ("kv_fp8_on_throughput_h100.json", "kv_fp8_off_throughput_h100.json"):
        shutil.copy(committed / name, fake_results / name)
    (row,) = rp.rows_for(fake_results)
    assert row[9] == "not measured (one run each)" and "no measurable" not in row[8]


def test_the_share_of_the_floor_uses_the_cards_own_bandwidth(fake_results):
    # An H200 run whose floor assumed the H100's figure: no H200 figure anywhere -> no share.
    _write(fake_results / "pdl_on_latency_h200.json", _latency([1e-3] * 3, "NVIDIA H200", 3.02e12))
    _write(fake_results / "pdl_off_latency_h200.json", _latency([2e-3] * 3, "NVIDIA H200", 3.02e12))
    (row,) = rp.rows_for(fake_results)
    assert row[6] == "no H200 figure in reference.json"
    # The same run with the bandwidth suite.py measured: the share uses it, and says so.
    for name in ("pdl_on_latency_h200.json", "pdl_off_latency_h200.json"):
        _write(fake_results / name, _latency([1e-3] * 3, "NVIDIA H200", 4.0e12))
    _write(fake_results / "bandwidth_h200.json", {"copy_bytes_per_s": 4.0e12})
    (row,) = rp.rows_for(fake_results)
    assert row[6] == "40% (measured in this run)"
    # An H100 file without a measured bandwidth: reference.json's H100 figure.
    _write(fake_results / "pdl_on_latency_h100.json", _latency([1e-3] * 3, "NVIDIA H100", 3.02e12))
    _write(fake_results / "pdl_off_latency_h100.json", _latency([2e-3] * 3, "NVIDIA H100", 3.02e12))
    row = rp.rows_for(fake_results)[0]
    assert row[1] == "H100" and row[6] == "40% (reference.json)"


def test_the_page_block_is_refreshed_like_every_other_number():
    text = rp.README.read_text(encoding="utf-8")
    assert dn.problems(text, "benchmarks/results/README.md") == []
    assert dn.placeholders(text) == ["results_table()"]
