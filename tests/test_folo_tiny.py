"""The shipped model models/folo-tiny: loads offline, is small, and still has its recorded quality.

Everything is loaded from local paths (no hub access). The perplexity check reuses the evaluation
function of tools/train_tiny_model.py on the held-out subset that ships with the model, so a broken
weight file, a swapped tokenizer or a changed evaluation shows up here.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO_ROOT / "models" / "folo-tiny"
MAX_DIR_BYTES = 16 * 1000 * 1000
PPL_RTOL = 0.02  # recomputed subset perplexity must be within 2% of train_log.json's

transformers = pytest.importorskip("transformers")

# Words of Python-docs English; a continuation that uses several of them is not noise.
DOCS_WORDS = frozenset(
    """
    a an the is are be been was it its this that these those of to in on for from with by as at
    or and not no if else when while each every which who any all some can may must will should
    would used use uses using statement statements loop iterate iterates iteration iterable
    iterator sequence list lists tuple string strings value values object objects function
    functions method methods class classes module modules name names argument arguments
    expression expressions clause clauses target block body code item items element elements
    type types number return returns returned raise raises raised exception exceptions error
    true false none default first next new following same other then than only also see
    """.split()
)


def looks_like_docs_english(text: str) -> bool:
    """Several distinct Python-docs words, and no single word dominating (a loop)."""
    words = re.findall(r"[a-z]+", text.lower())
    if len(words) < 10:
        return False
    distinct = set(words)
    top_share = Counter(words).most_common(1)[0][1] / len(words)
    return len(distinct) >= 8 and len(distinct & DOCS_WORDS) >= 5 and top_share <= 0.3


def _load_tool():
    path = REPO_ROOT / "tools" / "train_tiny_model.py"
    spec = importlib.util.spec_from_file_location("train_tiny_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def train_log():
    return json.loads((MODEL_DIR / "train_log.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def model(tool):
    model, _ = tool.load_for_eval(MODEL_DIR)
    return model


def _greedy(model, tokenizer, prompt: str, new_tokens: int = 40) -> str:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :])


def test_directory_is_small():
    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "generation_config.json", "model.safetensors"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", "README.md", "train_log.json"} <= names
    assert sum(p.stat().st_size for p in files) <= MAX_DIR_BYTES


def test_config_is_small_qwen3(train_log):
    config = transformers.AutoConfig.from_pretrained(str(MODEL_DIR), local_files_only=True)
    assert config.model_type == "qwen3"
    assert config.architectures == ["Qwen3ForCausalLM"]
    assert config.tie_word_embeddings
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.hidden_size == train_log["model"]["hidden_size"]
    assert config.num_hidden_layers == train_log["model"]["num_layers"]


def test_weights_are_bf16_and_load(model, train_log):
    from safetensors import safe_open

    with safe_open(str(MODEL_DIR / "model.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}
    assert isinstance(model, transformers.Qwen3ForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == train_log["model"]["parameters"]
    assert 1_000_000 <= train_log["model"]["parameters"] <= 8_000_000


@pytest.mark.parametrize(
    "text",
    [
        "The for statement is used to iterate over the elements of a sequence.",
        "def f(x):\n\treturn x ** 2  # squares\n\n\n",
        "  leading and trailing spaces  ",
        "Unicode: café, naïve, 日本語, emoji 🐍, em-dash —",
        "Two documents<|endoftext|>joined by EOS",
    ],
)
def test_tokenizer_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert max(ids) < len(tokenizer)


def test_special_token_ids_agree(tokenizer):
    config = transformers.AutoConfig.from_pretrained(str(MODEL_DIR), local_files_only=True)
    gen = transformers.GenerationConfig.from_pretrained(str(MODEL_DIR), local_files_only=True)
    eos = tokenizer.eos_token_id
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer("<|endoftext|>", add_special_tokens=False)["input_ids"] == [eos]
    assert config.eos_token_id == gen.eos_token_id == eos
    assert config.bos_token_id == gen.bos_token_id == tokenizer.bos_token_id
    assert config.pad_token_id == gen.pad_token_id == tokenizer.pad_token_id
    assert len(tokenizer) == config.vocab_size
    # No BOS or other token is added to prompts.
    assert (
        tokenizer("The for statement")["input_ids"]
        == tokenizer("The for statement", add_special_tokens=False)["input_ids"]
    )


def test_heldout_subset_perplexity_matches_log(tool, model, tokenizer, train_log):
    recorded = train_log["heldout_subset"]
    ids = tool.load_subset_ids(MODEL_DIR, tokenizer)
    res = tool.evaluate_perplexity(
        model, ids, seq_len=recorded["seq_len"], max_windows=recorded["windows"]
    )
    assert res["predicted_tokens"] == recorded["predicted_tokens"]
    assert res["perplexity"] == pytest.approx(recorded["perplexity"], rel=PPL_RTOL)
    # A trained model, not an untrained one (uniform guessing would be ~vocab size).
    assert recorded["perplexity"] < 150
    assert train_log["heldout"]["perplexity"] < 150


def test_greedy_continuation_is_docs_english(model, tokenizer):
    text = _greedy(model, tokenizer, "The for statement")
    assert looks_like_docs_english(text), text


@pytest.mark.parametrize("seed", [0, 1])
def test_degeneracy_check_rejects_random_weights(tokenizer, seed):
    config = transformers.AutoConfig.from_pretrained(str(MODEL_DIR), local_files_only=True)
    torch.manual_seed(seed)
    random_model = transformers.Qwen3ForCausalLM(config).eval()
    text = _greedy(random_model, tokenizer, "The for statement")
    assert not looks_like_docs_english(text), text
