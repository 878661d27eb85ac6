import json
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint

from folovllm import EngineConfig
from folovllm.__main__ import main
from folovllm.model_executor.model_loader import (
    ModelNotFoundError,
    count_checkpoint_parameters,
    get_eos_token_ids,
    get_model_config,
    get_tokenizer,
    iterate_dummy_weights,
    iterate_safetensors,
    load_arch_config,
    resolve_model_path,
    safetensors_files,
    weight_shapes,
)


def hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def test_weights_read_equal_hf_state_dict(tiny_model):
    ours = dict(iterate_safetensors(tiny_model))
    theirs = hf_state_dict(tiny_model)
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert torch.equal(ours[name], t), name


def test_sharded_checkpoint(tmp_path):
    path = make_checkpoint(tmp_path, "qwen3", max_shard_size="100KB")
    files = safetensors_files(path)
    assert len(files) > 1 and (path / "model.safetensors.index.json").is_file()
    ours = dict(iterate_safetensors(path))
    theirs = hf_state_dict(path)
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())


def test_arch_config_and_shapes_match_hf(tiny_model):
    arch = load_arch_config(tiny_model)
    sd = hf_state_dict(tiny_model)
    assert weight_shapes(arch) == {k: tuple(v.shape) for k, v in sd.items()}
    assert arch.num_parameters() == sum(v.numel() for v in sd.values())
    assert count_checkpoint_parameters(tiny_model) == arch.num_parameters()
    assert arch.model_type == json.loads((tiny_model / "config.json").read_text())["model_type"]


def test_dummy_weights_have_checkpoint_names_and_shapes(tiny_model):
    arch = load_arch_config(tiny_model)
    dummy = dict(iterate_dummy_weights(arch, torch.bfloat16, seed=3))
    assert {k: tuple(v.shape) for k, v in dummy.items()} == weight_shapes(arch)
    assert all(v.dtype == torch.bfloat16 for v in dummy.values())
    assert torch.equal(
        dummy["model.norm.weight"], torch.ones(arch.hidden_size, dtype=torch.bfloat16)
    )
    again = dict(iterate_dummy_weights(arch, torch.bfloat16, seed=3))
    assert torch.equal(dummy["model.embed_tokens.weight"], again["model.embed_tokens.weight"])
    assert dummy["model.embed_tokens.weight"].float().std().item() == pytest.approx(0.02, rel=0.1)


def test_real_qwen3_shapes_from_repo_config():
    cfg = get_model_config(EngineConfig(model="Qwen/Qwen3-0.6B", load_format="dummy", device="cpu"))
    assert cfg.arch.num_parameters() == 596_049_920  # the published size of Qwen3-0.6B
    assert cfg.max_model_len == 4096 and cfg.dtype == torch.float32
    assert cfg.kv_bytes_per_token == 2 * 28 * 8 * 128 * 4


def test_missing_path_says_how_to_get_the_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a local directory.*huggingface-cli download"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download acme/missing-model"):
        resolve_model_path("acme/missing-model")


def test_nonexistent_seed_model_name_suggests_real_ones():
    with pytest.raises(ModelNotFoundError, match="Qwen/Qwen2.5-0.5B or Qwen/Qwen3-0.6B"):
        resolve_model_path("Qwen/Qwen2.5-0.6B")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(
        ValueError, match=r"unsupported architecture \['LlamaForCausalLM'\].*Qwen2ForCausalLM"
    ):
        load_arch_config(tmp_path)


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn'"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"quantization_config": "gptq"}, "quantization_config in .* must be an object"),  # m7
    ],
)
def test_unsupported_options(tiny_qwen3, tmp_path, patch, message):
    raw = json.loads((tiny_qwen3 / "config.json").read_text())
    raw.update(patch)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message):
        load_arch_config(tmp_path)


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors only"):
        safetensors_files(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no \\*.safetensors"):
        safetensors_files(tmp_path / "..")


def test_max_model_len_capped_by_model(tiny_qwen3):
    assert get_model_config(EngineConfig(model=str(tiny_qwen3))).max_model_len == 512
    with pytest.raises(
        ValueError, match="max_model_len=1024 exceeds the model's max_position_embeddings=512"
    ):
        get_model_config(EngineConfig(model=str(tiny_qwen3), max_model_len=1024))


def test_tokenizer_loads(tiny_qwen3):
    tok = get_tokenizer(tiny_qwen3)
    ids = tok("The for statement")["input_ids"]
    assert tok.decode(ids) == "The for statement" and tok.eos_token_id is not None


def test_cli_info(tiny_model, capsys):
    assert main(["info", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    arch = load_arch_config(tiny_model)
    assert arch.architecture in out
    assert f"{arch.num_parameters():,}" in out
    assert f"{arch.kv_bytes_per_token(torch.float32):,} bytes/token" in out


def test_cli_error_is_clear(tmp_path, capsys):
    """A missing model is one line on stderr and exit status 2 (tests/test_cli.py runs the process)."""
    assert main(["info", "--model", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: model")


def test_config_only_directory_has_no_tokenizer():
    cfg = get_model_config(EngineConfig(model="Qwen/Qwen3-0.6B", load_format="dummy"))
    assert get_tokenizer(cfg.path) is None


def test_eos_ids_come_from_tokenizer_and_generation_config(tiny_qwen3, tmp_path):
    arch = load_arch_config(tiny_qwen3)
    tok = get_tokenizer(tiny_qwen3)
    assert get_eos_token_ids(tiny_qwen3, tok, arch) == [tok.eos_token_id]
    for f in tiny_qwen3.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, 7]  # like Qwen3: two stop tokens
    (tmp_path / "generation_config.json").write_text(json.dumps(gen))
    assert get_eos_token_ids(tmp_path, tok, arch) == [tok.eos_token_id, 7]
    assert get_eos_token_ids(tmp_path / "nowhere", None, arch) == [arch.eos_token_id]
