import pytest
import torch

from folovllm import EngineConfig
from folovllm.config import LATER_FEATURES
from folovllm.milestone import MILESTONE, MILESTONES, has_milestone

INVALID = [
    ("dtype", "float64", "dtype must be 'auto' or one of"),
    ("device", "tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("max_model_len", 1, "max_model_len must be an integer >= 2"),
    ("max_model_len", 10.5, "max_model_len must be an integer >= 2"),
    ("load_format", "pt", "load_format must be 'auto', 'safetensors' or 'dummy'"),
    ("seed", -3, "seed must be an integer >= 0"),
    ("enforce_eager", "yes", "enforce_eager must be a bool"),
    ("model", "", "model must be a non-empty path"),
]


@pytest.mark.parametrize("field,value,message", INVALID)
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**{field: value})


# A value that asks for each later feature.
ENABLING = {
    "max_batch_size": 8,
    "max_num_batched_tokens": 512,
    "enable_paged_kv": True,
    "block_size": 16,
    "gpu_memory_utilization": 0.5,
    "kv_cache_memory_gb": 1.0,
    "num_gpu_blocks": 100,
    "attention_backend": "triton",
    "enable_chunked_prefill": True,
    "max_chunk_size": 256,
    "enable_prefix_caching": True,
    "quantization": "gptq",
    "async_scheduling": True,
    "kv_cache_dtype": "fp8",
    "tensor_parallel_size": 2,
}


def test_every_gated_key_has_an_enabling_value():
    assert set(ENABLING) == set(LATER_FEATURES)


@pytest.mark.parametrize("name", sorted(LATER_FEATURES))
def test_later_milestone_keys_say_which_milestone_adds_them(name):
    milestone, _ = LATER_FEATURES[name]
    if has_milestone(milestone):
        pytest.skip(f"{name} is implemented at {MILESTONE}")
    with pytest.raises(
        ValueError, match=f"{name}=.*needs milestone {milestone}; this engine is {MILESTONE}"
    ):
        EngineConfig(**{name: ENABLING[name]})


def test_vllm_spelling_of_a_later_key_is_named_as_written():
    if has_milestone("m2_batching"):
        pytest.skip(f"max_num_seqs is implemented at {MILESTONE}")
    with pytest.raises(ValueError, match="max_num_seqs=8 needs milestone m2_batching"):
        EngineConfig(max_num_seqs=8)


def test_off_values_of_later_keys_are_accepted():
    EngineConfig(enable_paged_kv=False, attention_backend="torch", quantization=None)


def test_vllm_alias_and_seed_name_agree():
    assert EngineConfig(max_num_seqs=1).max_batch_size == 1
    assert EngineConfig(max_batch_size=1).max_num_seqs == 1
    if has_milestone("m2_batching"):  # before m2, a batch size above 1 is refused outright
        with pytest.raises(ValueError, match="max_num_seqs=1 and max_batch_size=2 are the same"):
            EngineConfig(max_num_seqs=1, max_batch_size=2)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown engine options: \['max_batchsize'\]"):
        EngineConfig.from_kwargs(max_batchsize=4)


def test_auto_dtype_and_device():
    cfg = EngineConfig(device="cpu")
    assert cfg.resolve_device() == torch.device("cpu")
    assert cfg.resolve_dtype(torch.device("cpu")) == torch.float32
    assert cfg.resolve_dtype(torch.device("cuda")) == torch.bfloat16
    assert EngineConfig(dtype="bf16").resolve_dtype(torch.device("cpu")) == torch.bfloat16


def test_milestone_order():
    assert MILESTONES[0] == "m0_init" and MILESTONE in MILESTONES
    assert has_milestone("m0_init")
