"""Each milestone's suite must test its own engine, never the root package or another copy."""

from pathlib import Path

import folovllm


def test_folovllm_is_this_milestones_copy():
    here = Path(__file__).resolve().parents[1]
    assert Path(folovllm.__file__).resolve().is_relative_to(here), (
        f"imported {folovllm.__file__}, expected a file under {here}; run tests with PYTHONPATH=."
    )


def test_milestone_name_matches_directory():
    here = Path(__file__).resolve().parents[1]
    assert folovllm.MILESTONE == here.name
