import math

import pytest

from folovllm import SamplingParams

INVALID = [
    ("temperature", -0.1, "temperature must be >= 0"),
    ("temperature", math.nan, "temperature must be a real number"),
    ("temperature", "hot", "temperature must be a real number"),
    ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
    ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ("top_k", 0, "top_k must be -1 \\(disabled\\) or >= 1"),
    ("top_k", -2, "top_k must be -1"),
    ("top_k", 2.5, "top_k must be an integer"),
    ("max_tokens", 0, "max_tokens must be >= 1"),
    ("max_tokens", True, "max_tokens must be an integer"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0"),
    ("repetition_penalty", -1.0, "repetition_penalty must be > 0"),
    ("stop", "", "stop must be a non-empty string"),
    ("stop", ["ok", ""], "stop must be a non-empty string"),
    ("stop", [3], "stop must be a non-empty string"),
    ("ignore_eos", 1, "ignore_eos must be a bool"),
    ("seed", -1, r"seed must be in \[0, 2\*\*63\)"),
    ("seed", "7", "seed must be an integer"),
]


@pytest.mark.parametrize("field,value,message", INVALID)
def test_invalid_values_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})


def test_valid_values():
    p = SamplingParams(temperature=0, top_p=0.5, top_k=3, max_tokens=4, stop="\n", seed=1)
    assert p.greedy and p.stop_list == ["\n"]
    assert SamplingParams(stop=["a", "b"]).stop_list == ["a", "b"]
    assert SamplingParams().stop_list == [] and not SamplingParams().greedy
