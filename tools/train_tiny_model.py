"""Train folo-tiny: a few-million-parameter Qwen3 that ships with the repo.

Everything is rebuilt offline from English text that ships with Python itself:
the help topics in ``pydoc_data.topics`` and the docstrings of a fixed list of
standard-library modules. The script trains a byte-level BPE tokenizer and a
small ``Qwen3ForCausalLM`` on that corpus, saves a standard Hugging Face model
directory (bf16 safetensors) and measures held-out perplexity on the weights
reloaded from disk.

    python tools/train_tiny_model.py --threads 2  # the shipped model: ~20 min on 2 CPU cores
    python tools/train_tiny_model.py --steps 40 --out /tmp/t  # smoke run
    python tools/train_tiny_model.py --eval-only models/folo-tiny

Held-out perplexity (the fixed procedure; ``evaluate_perplexity``): the held-out
documents (every 20th document of the corpus) are tokenized, each followed by
EOS, and concatenated into one token stream. The stream is cut into
non-overlapping windows of ``EVAL_SEQ_LEN`` tokens (the last, shorter window is
kept if it has at least 2 tokens). Each window is scored independently from its
first token: every token but the first of a window is predicted, and the
perplexity is exp(mean NLL over all predicted tokens), computed in float32 from
the bf16 weights as saved on disk. The "subset" perplexity applies the same
procedure to the first ``EVAL_SUBSET_WINDOWS`` windows only; the text of those
held-out documents ships as ``heldout_subset.txt`` so the check does not depend
on the local Python version's docstrings.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "models" / "folo-tiny"

EOS_TOKEN = "<|endoftext|>"
HELDOUT_EVERY = 20  # document i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1
EVAL_SEQ_LEN = 256
EVAL_SUBSET_WINDOWS = 24
SUBSET_FILE = "heldout_subset.txt"
SAMPLE_PROMPTS = (
    "The for statement",
    "A list comprehension",
    "The import system",
    "An exception is raised",
    "Return a new dictionary",
)
SAMPLE_NEW_TOKENS = 40

# Fixed, sorted list of modules whose public functions and classes supply the
# docstrings. Chosen from modules present in Python 3.10-3.13 that import
# without side effects; any that fail to import are skipped (and logged).
CORPUS_MODULES = tuple(
    """
    abc argparse array ast asyncio base64 bdb binascii bisect builtins bz2 calendar cmath
    cmd code codecs codeop collections collections.abc colorsys compileall
    concurrent.futures configparser contextlib contextvars copy copyreg csv dataclasses
    datetime dbm decimal difflib dis doctest email email.message email.utils enum errno
    filecmp fileinput fnmatch fractions ftplib functools gc getopt getpass gettext glob
    graphlib gzip hashlib heapq hmac html html.parser http http.client http.cookies
    http.server imaplib importlib importlib.abc importlib.machinery importlib.metadata
    importlib.resources importlib.util inspect io ipaddress itertools json keyword linecache
    locale logging logging.handlers lzma mailbox marshal math mimetypes mmap modulefinder
    multiprocessing netrc numbers operator optparse os os.path pathlib pdb pickle
    pickletools pkgutil platform plistlib poplib pprint profile pstats py_compile pyclbr
    pydoc queue quopri random re reprlib runpy sched secrets selectors shelve shlex shutil
    signal smtplib socket socketserver sqlite3 ssl stat statistics string stringprep struct
    subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time
    timeit token tokenize trace traceback tracemalloc types typing unicodedata unittest
    unittest.mock urllib.error urllib.parse urllib.request uuid warnings wave weakref
    webbrowser wsgiref.simple_server xml.dom.minidom xml.etree.ElementTree xml.sax
    xmlrpc.client zipfile zipimport zlib zoneinfo
    """.split()
)
MIN_DOC_CHARS = 40


# --------------------------------------------------------------------------- corpus


def _import_quietly(name: str):
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def _public_names(obj) -> list[str]:
    names = getattr(obj, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [n for n in dir(obj) if not n.startswith("_")]
    return sorted({n for n in names if isinstance(n, str) and not n.startswith("_")})


def _is_stdlib(obj) -> bool:
    """False for objects that third-party imports patched in (transformers adds Logger methods)."""
    if isinstance(obj, property):
        obj = obj.fget
    mod = getattr(obj, "__module__", None)
    return not isinstance(mod, str) or mod.split(".")[0] in sys.stdlib_module_names


def _clean(doc: str | None) -> str | None:
    if not doc:
        return None
    doc = doc.replace("\r\n", "\n").strip()
    return doc if len(doc) >= MIN_DOC_CHARS else None


def build_documents() -> tuple[list[str], dict]:
    """All corpus documents in a deterministic order, plus a description of the sources.

    Order: the pydoc help topics sorted by key, then for each module of
    CORPUS_MODULES in order: the module docstring, then its public functions and
    classes sorted by name, each class followed by its own public methods sorted
    by name. Exact duplicate texts are kept once (first occurrence).
    """
    import pydoc_data.topics

    docs: list[str] = []
    seen_text: set[str] = set()
    # id -> object: holding the object keeps its id from being reused by a temporary
    # (e.g. a bound method made by getattr), which would make the walk nondeterministic.
    seen_obj: dict[int, object] = {}

    def add(text: str | None) -> None:
        text = _clean(text)
        if text is not None and text not in seen_text:
            seen_text.add(text)
            docs.append(text)

    topics = pydoc_data.topics.topics
    for key in sorted(topics):
        add(topics[key])
    n_topic_docs = len(docs)

    skipped = []
    for mod_name in CORPUS_MODULES:
        try:
            mod = _import_quietly(mod_name)
        except Exception:  # noqa: BLE001 - a missing optional module is fine
            skipped.append(mod_name)
            continue
        add(inspect.getdoc(mod))
        for name in _public_names(mod):
            try:
                obj = getattr(mod, name)
            except AttributeError:
                continue
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen_obj:
                continue
            if not _is_stdlib(obj):
                continue
            seen_obj[id(obj)] = obj
            add(inspect.getdoc(obj))
            if inspect.isclass(obj):
                for attr in sorted(vars(obj)):
                    if attr.startswith("_"):
                        continue
                    member = vars(obj)[attr]
                    if isinstance(member, (staticmethod, classmethod)):
                        member = member.__func__
                    if not _is_stdlib(member):
                        continue
                    if inspect.isroutine(member) or isinstance(member, property):
                        if id(member) not in seen_obj:
                            seen_obj[id(member)] = member
                            add(inspect.getdoc(member))
    info = {
        "python": sys.version.split()[0],
        "topic_documents": n_topic_docs,
        "docstring_documents": len(docs) - n_topic_docs,
        "skipped_modules": skipped,
        "chars": sum(len(d) for d in docs),
        "sha256": hashlib.sha256("\x00".join(docs).encode()).hexdigest(),
    }
    return docs, info


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    train = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [d for i, d in enumerate(docs) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: list[str], vocab_size: int, max_len: int):
    """Byte-level BPE trained on ``docs``, wrapped for ``AutoTokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=max_len,
        clean_up_tokenization_spaces=False,
    )


def encode_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Token ids of ``docs``, each followed by EOS, as one 1-D stream."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def subset_docs(tokenizer, heldout: list[str]) -> list[str]:
    """The leading held-out documents that cover EVAL_SUBSET_WINDOWS windows."""
    need = EVAL_SUBSET_WINDOWS * EVAL_SEQ_LEN
    out, n = [], 0
    for doc in heldout:
        out.append(doc)
        n += len(tokenizer.backend_tokenizer.encode(doc, add_special_tokens=False).ids) + 1
        if n >= need:
            break
    return out


def load_subset_ids(model_dir: str | Path, tokenizer) -> torch.Tensor:
    """Token stream of the shipped held-out subset (documents separated by EOS)."""
    text = (Path(model_dir) / SUBSET_FILE).read_text(encoding="utf-8")
    # EOS appears literally between documents; as a special token it maps to its id.
    ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_perplexity(
    model,
    ids: torch.Tensor,
    seq_len: int = EVAL_SEQ_LEN,
    max_windows: int | None = None,
    batch_size: int = 8,
    token_bytes: torch.Tensor | None = None,
) -> dict:
    """Perplexity of ``model`` on the token stream ``ids`` (see the module docstring).

    With ``token_bytes`` (UTF-8 length of each token id, see ``token_byte_lengths``) it also
    reports bits per byte, which, unlike perplexity, compares models with different vocabularies.
    """
    model.eval()
    device = next(model.parameters()).device
    windows = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    if max_windows is not None:
        windows = windows[:max_windows]
    total_nll, total_tokens, total_bytes = 0.0, 0, 0
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        full = [w for w in batch if len(w) == seq_len]
        parts = ([torch.stack(full)] if full else []) + [
            w.unsqueeze(0) for w in batch if len(w) != seq_len
        ]
        for x in parts:
            x = x.to(device)
            logits = model(input_ids=x).logits.float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                x[:, 1:].reshape(-1),
                reduction="sum",
            )
            total_nll += nll.item()
            total_tokens += x[:, 1:].numel()
            if token_bytes is not None:
                total_bytes += int(token_bytes[x[:, 1:].cpu()].sum())
    mean_nll = total_nll / total_tokens
    res = {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "predicted_tokens": total_tokens,
        "windows": len(windows),
        "seq_len": seq_len,
    }
    if token_bytes is not None:
        res["bits_per_byte"] = total_nll / math.log(2) / total_bytes
    return res


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """Bytes each token id stands for (ByteLevel: one character per byte; specials 0)."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    lengths = torch.zeros(max(vocab.values()) + 1, dtype=torch.long)
    for piece, i in vocab.items():
        lengths[i] = 0 if i in special else len(piece)
    return lengths


def load_for_eval(model_dir: str | Path, device: str = "cpu"):
    """Reload a saved model directory in float32 (weights are stored in bf16)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    )
    return model.to(device).eval(), tokenizer


@torch.no_grad()
def greedy_samples(model, tokenizer, prompts=SAMPLE_PROMPTS, max_new_tokens=SAMPLE_NEW_TOKENS):
    device = next(model.parameters()).device
    out = {}
    for prompt in prompts:
        x = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
        y = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        out[prompt] = tokenizer.decode(y[0, x.shape[1] :], skip_special_tokens=False)
    return out


def evaluate_dir(model_dir: str | Path, heldout_ids: torch.Tensor | None, device: str) -> dict:
    model, tokenizer = load_for_eval(model_dir, device)
    nbytes = token_byte_lengths(tokenizer)
    subset_ids = load_subset_ids(model_dir, tokenizer)
    res = {
        "subset": evaluate_perplexity(
            model, subset_ids, max_windows=EVAL_SUBSET_WINDOWS, token_bytes=nbytes
        )
    }
    if heldout_ids is not None:
        res["heldout"] = evaluate_perplexity(model, heldout_ids, token_bytes=nbytes)
    res["samples"] = greedy_samples(model, tokenizer)
    return res


# --------------------------------------------------------------------------- training


def make_config(args, tokenizer):
    from transformers import Qwen3Config

    eos = tokenizer.eos_token_id
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=args.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        architectures=["Qwen3ForCausalLM"],
    )


def lr_at(step: int, args) -> float:
    warmup = max(1, int(args.warmup_frac * args.steps))
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, args.steps - warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def save_model_dir(model, tokenizer, config, out: Path) -> None:
    from transformers import GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "pytorch_model.bin"):
        (out / stale).unlink(missing_ok=True)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # transformers 5 writes its own class name; PreTrainedTokenizerFast loads in 4.x and 5.x.
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")
    eos = tokenizer.eos_token_id
    GenerationConfig(
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, do_sample=False
    ).save_pretrained(out)
    # Also spell the fields the way hub Qwen3 configs (and transformers 4.x) do.
    cfg = json.loads((out / "config.json").read_text())
    cfg["rope_theta"] = config.rope_parameters["rope_theta"]
    cfg["rope_scaling"] = None
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def train(args) -> None:
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = Path(args.out)
    t_start = time.time()

    docs, corpus_info = build_documents()
    train_docs, heldout_docs = split_documents(docs)
    tokenizer = train_tokenizer(train_docs, args.vocab_size, args.max_position_embeddings)
    train_ids = encode_stream(tokenizer, train_docs)
    heldout_ids = encode_stream(tokenizer, heldout_docs)
    corpus_info.update(
        documents=len(docs),
        train_documents=len(train_docs),
        heldout_documents=len(heldout_docs),
        train_tokens=len(train_ids),
        heldout_tokens=len(heldout_ids),
    )
    print(f"corpus: {json.dumps(corpus_info)}", flush=True)

    config = make_config(args, tokenizer)
    config._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters on {device}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    L = args.seq_len
    offsets = torch.arange(L + 1)
    history = []
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        starts = torch.randint(0, len(train_ids) - L - 1, (args.batch_size,), generator=gen)
        chunk = train_ids[starts[:, None] + offsets].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        with amp:
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        last = step == args.steps - 1
        if step % args.log_every == 0 or last:
            elapsed = time.time() - t_train
            history.append({"step": step, "loss": round(loss.item(), 4), "lr": lr})
            print(
                f"step {step:5d}/{args.steps}  loss {loss.item():.4f}  lr {lr:.2e}  "
                f"{elapsed:7.1f}s  {(step + 1) / elapsed:.2f} it/s",
                flush=True,
            )
        if args.eval_every and ((step + 1) % args.eval_every == 0 or last):
            # A progress reading in the training precision; the reported figure comes later,
            # from the saved weights.
            with amp:
                nll = evaluate_perplexity(model, heldout_ids)["mean_nll"]
            model.train()
            history.append({"step": step, "heldout_nll": round(nll, 4)})
            print(f"step {step:5d}  held-out nll {nll:.4f}  ppl {math.exp(nll):.2f}", flush=True)
    train_seconds = time.time() - t_train

    save_model_dir(model, tokenizer, config, out)
    (out / SUBSET_FILE).write_text(
        "".join(d + EOS_TOKEN for d in subset_docs(tokenizer, heldout_docs)), encoding="utf-8"
    )
    del model
    results = evaluate_dir(out, heldout_ids, str(device))
    total_seconds = time.time() - t_start

    log = {
        "model": {
            "parameters": n_params,
            "architecture": "Qwen3ForCausalLM",
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "num_kv_heads": args.num_kv_heads,
            "head_dim": args.head_dim,
            "intermediate_size": args.intermediate_size,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": args.max_position_embeddings,
            "rope_theta": args.rope_theta,
            "dtype": "bfloat16",
        },
        "recipe": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "tokens_seen": args.steps * args.batch_size * args.seq_len,
            "lr": args.lr,
            "min_lr": args.min_lr,
            "warmup_frac": args.warmup_frac,
            "weight_decay": args.weight_decay,
            "grad_clip": args.grad_clip,
            "optimizer": "AdamW(betas=(0.9, 0.95))",
            "schedule": "linear warmup then cosine to min_lr",
            "seed": args.seed,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        },
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else _cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        },
        "corpus": corpus_info,
        "eval_procedure": (
            f"held-out = documents with index % {HELDOUT_EVERY} == {HELDOUT_EVERY - 1}; each followed "
            f"by EOS, concatenated; non-overlapping {EVAL_SEQ_LEN}-token windows (last partial "
            "window kept if >= 2 tokens), each scored from its first token; ppl = exp(mean NLL "
            "over predicted tokens), float32 from the saved bf16 weights. 'subset' = first "
            f"{EVAL_SUBSET_WINDOWS} windows of the stream of {SUBSET_FILE}."
        ),
        "heldout": results["heldout"],
        "heldout_subset": results["subset"],
        "samples": results["samples"],
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "command": "python tools/train_tiny_model.py " + " ".join(sys.argv[1:]),
        "history": history,
    }
    log["weights_bytes"] = (out / "model.safetensors").stat().st_size
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    (out / "README.md").write_text(model_card(log))
    log["dir_bytes"] = dir_size(out)
    print(json.dumps({k: log[k] for k in ("heldout", "heldout_subset", "samples")}, indent=2))
    print(f"wrote {out} ({log['dir_bytes'] / 1e6:.2f} MB) in {total_seconds:.0f}s")


# --------------------------------------------------------------------------- model card


def model_card(log: dict) -> str:
    m, r, e, c = log["model"], log["recipe"], log["environment"], log["corpus"]
    ho, sub = log["heldout"], log["heldout_subset"]
    samples = "\n\n".join(f"**{p!r}** →\n```text\n{p}{s}\n```" for p, s in log["samples"].items())
    curve = ", ".join(
        f"{h['step'] + 1}: {math.exp(h['heldout_nll']):.1f}"
        for h in log["history"]
        if "heldout_nll" in h
    )
    return f"""# folo-tiny

A {m["parameters"] / 1e6:.1f}M-parameter Qwen3 (`Qwen3ForCausalLM`, `model_type: qwen3`) trained from
scratch on English text that ships with Python itself. It is the repository's built-in model: the engine
produces real text with it on a laptop CPU, with no GPU and no network, and the GPTQ milestone (m7) measures
quantization with it because its quality can be measured before and after. It is a toy: it writes
Python-docs-flavoured English, not facts, and it has memorised part of its small corpus.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("models/folo-tiny")
model = AutoModelForCausalLM.from_pretrained("models/folo-tiny")
ids = tok("The for statement", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))
```

| file | what |
|---|---|
| `config.json`, `generation_config.json` | Qwen3 config (also spelled the transformers 4.x / hub way: `rope_theta`, `torch_dtype`) |
| `model.safetensors` | the weights, bfloat16, {log["weights_bytes"] / 1e6:.1f} MB |
| `tokenizer.json`, `tokenizer_config.json` | the tokenizer (`PreTrainedTokenizerFast`) |
| `train_log.json` | everything below, machine-readable, with the loss curve |
| `{SUBSET_FILE}` | the held-out documents behind the subset perplexity (checked by the tests) |

## Architecture

| field | value |
|---|---|
| parameters | {m["parameters"]:,} (input embedding tied to the LM head) |
| hidden size / layers | {m["hidden_size"]} / {m["num_layers"]} |
| attention | {m["num_heads"]} query heads, {m["num_kv_heads"]} KV heads (GQA), head_dim {m["head_dim"]}, RMSNorm on q and k |
| MLP | SwiGLU, intermediate size {m["intermediate_size"]} |
| vocab | {m["vocab_size"]} (byte-level BPE) |
| positions | RoPE, theta {m["rope_theta"]:g}; max_position_embeddings {m["max_position_embeddings"]} (trained on {r["seq_len"]}-token windows) |
| weights | bfloat16 safetensors |

Tokenizer: byte-level BPE trained with `tokenizers` on the training split (ByteLevel pre-tokenizer and
decoder, so decoding round-trips any text). `<|endoftext|>` (id 0) is EOS, BOS and pad; nothing is added
to prompts. `config.json` and `generation_config.json` carry the same ids.

## Corpus

- The help topics of `pydoc_data.topics.topics` ({c["topic_documents"]} documents, sorted by key), then
- the docstrings (`inspect.getdoc`) of the fixed list `CORPUS_MODULES` in `tools/train_tiny_model.py`:
  each module, its public functions and classes (sorted by name) and each class's own public methods
  ({c["docstring_documents"]} documents). Texts under 40 characters and exact duplicates are dropped.

{c["documents"]} documents, {c["chars"]:,} characters (Python {c["python"]}; sha256 of the documents
`{c["sha256"][:16]}…`). Document *i* is held out when `i % 20 == 19` ({c["heldout_documents"]} documents,
{c["heldout_tokens"]:,} tokens); the other {c["train_documents"]} form the training stream
({c["train_tokens"]:,} tokens), each document followed by `<|endoftext|>`. Other Python versions have
slightly different docstrings, so a rebuild there gives a similar, not identical, corpus.

## Recipe

Rebuild, offline (deterministic for a given Python, torch version, device and thread count):

```bash
{log["command"]}
```

| | |
|---|---|
| steps | {r["steps"]} |
| batch | {r["batch_size"]} × {r["seq_len"]} tokens: random windows of the training stream (seeded generator) |
| tokens seen | {r["tokens_seen"]:,} (about {r["tokens_seen"] / c["train_tokens"]:.0f} passes over the training stream) |
| optimizer | {r["optimizer"]}, weight decay {r["weight_decay"]} (matrices only), grad-norm clip {r["grad_clip"]} |
| learning rate | peak {r["lr"]}, {r["schedule"]} ({r["warmup_frac"]:.0%} warmup, min {r["min_lr"]}) |
| precision | {r["precision"]} |
| seed | {r["seed"]} |
| trained on | {e["device"]} ({e["device_name"]}, {e["torch_threads"]} torch threads) |
| wall time | {log["train_seconds"]:.0f} s of training, {log["total_seconds"]:.0f} s end to end |
| software | Python {e["python"]}, torch {e["torch"]}, transformers {e["transformers"]}, tokenizers {e["tokenizers"]} |

The corpus is small, so the model overfits if trained much longer: the learning rate, weight decay and
step count were chosen by sweeps of this script on a GPU, near where the held-out loss stops improving. Held-out perplexity during this run (training weights,
{r["precision"]}), by step: {curve}.

## Held-out perplexity

{log["eval_procedure"]}

| split | windows | predicted tokens | perplexity | bits per byte |
|---|---|---|---|---|
| held-out (all) | {ho["windows"]} | {ho["predicted_tokens"]:,} | **{ho["perplexity"]:.2f}** | {ho["bits_per_byte"]:.3f} |
| held-out subset (`{SUBSET_FILE}`) | {sub["windows"]} | {sub["predicted_tokens"]:,} | {sub["perplexity"]:.3f} | {sub["bits_per_byte"]:.3f} |

Recompute both: `python tools/train_tiny_model.py --eval-only models/folo-tiny`.
`tests/test_folo_tiny.py` recomputes the subset perplexity and requires it within 2% of `train_log.json`.

## Greedy samples

transformers, float32, greedy, {SAMPLE_NEW_TOKENS} new tokens; each block shows the prompt, then the continuation:

{samples}
"""


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output model directory")
    p.add_argument("--eval-only", metavar="DIR", help="only evaluate an existing model directory")
    p.add_argument("--steps", type=int, default=1300, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training window")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-4, help="final learning rate of the cosine")
    p.add_argument(
        "--warmup-frac", type=float, default=0.05, help="share of steps in linear warmup"
    )
    p.add_argument("--weight-decay", type=float, default=1.0, help="AdamW decay of weight matrices")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm")
    p.add_argument("--seed", type=int, default=0, help="seeds init and window sampling")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--log-every", type=int, default=25, help="print the training loss every N steps"
    )
    p.add_argument("--eval-every", type=int, default=250, help="held-out check; 0: off")
    g = p.add_argument_group("model size")
    g.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocabulary incl. <|endoftext|>"
    )
    g.add_argument("--hidden-size", type=int, default=256, help="model width")
    g.add_argument("--num-layers", type=int, default=4, help="decoder layers")
    g.add_argument("--num-heads", type=int, default=4, help="query heads")
    g.add_argument("--num-kv-heads", type=int, default=2, help="key/value heads (GQA)")
    g.add_argument("--head-dim", type=int, default=64, help="per-head width")
    g.add_argument("--intermediate-size", type=int, default=768, help="SwiGLU width")
    g.add_argument(
        "--max-position-embeddings", type=int, default=2048, help="config's context length"
    )
    g.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE base")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.eval_only:
        from transformers import AutoTokenizer

        docs, _ = build_documents()
        _, heldout = split_documents(docs)
        ids = encode_stream(
            AutoTokenizer.from_pretrained(args.eval_only, local_files_only=True), heldout
        )
        res = evaluate_dir(args.eval_only, ids, args.device)
        print(json.dumps(res, indent=2))
        return
    train(args)


if __name__ == "__main__":
    main()
