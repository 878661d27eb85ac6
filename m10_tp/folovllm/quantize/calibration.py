"""Calibration and evaluation text: two disjoint halves of folo-tiny's held-out documents.

``models/folo-tiny/heldout_subset.txt`` holds held-out documents of folo-tiny's corpus (never
trained on), each followed by ``<|endoftext|>``. The split is by whole documents: a document whose
first character lies in the first half of the file's characters is calibration text, the rest is
evaluation text, so perplexity is never measured on text the quantizer has seen.
"""

from __future__ import annotations

from pathlib import Path

import torch

from folovllm.model_executor.model_loader import REPO_MODELS_DIR

EOS_TEXT = "<|endoftext|>"
HELDOUT_FILE = REPO_MODELS_DIR / "folo-tiny" / "heldout_subset.txt"
DEFAULT_NSAMPLES = 64
DEFAULT_SEQLEN = 256


def split_heldout(text: str) -> tuple[str, str]:
    """(calibration, evaluation): the documents starting in the first half of ``text``, the rest."""
    docs = [d + EOS_TEXT for d in text.split(EOS_TEXT) if d]
    half, pos, n_calib = len(text) / 2, 0, 0
    for doc in docs:
        if pos >= half:
            break
        pos += len(doc)
        n_calib += 1
    return "".join(docs[:n_calib]), "".join(docs[n_calib:])


def _heldout() -> str:
    if not HELDOUT_FILE.is_file():
        raise FileNotFoundError(f"{HELDOUT_FILE} is missing; pass a calibration text file")
    return HELDOUT_FILE.read_text(encoding="utf-8")


def calibration_text(calib_file: str | Path | None = None) -> str:
    """The text to calibrate on: ``calib_file`` if given, else the held-out calibration half."""
    if calib_file is not None:
        return Path(calib_file).read_text(encoding="utf-8")
    return split_heldout(_heldout())[0]


def evaluation_text() -> str:
    """The held-out evaluation half (disjoint from the default calibration text)."""
    return split_heldout(_heldout())[1]


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """One 1-D token stream; a literal ``<|endoftext|>`` becomes the EOS id, nothing is added."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # no max-length warning, same ids
    ids = (
        backend.encode(text, add_special_tokens=False).ids
        if backend is not None
        else tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    return torch.tensor(ids, dtype=torch.long)


def calibration_ids(
    tokenizer,
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int = DEFAULT_SEQLEN,
    calib_file: str | Path | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """[nsamples, seqlen] windows of the calibration stream at seeded random offsets (they may
    overlap when the text is short, as in the GPTQ paper's sampling)."""
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"nsamples ({nsamples}) must be >= 1 and seqlen ({seqlen}) >= 2")
    ids = tokenize(tokenizer, calibration_text(calib_file))
    if len(ids) < seqlen:
        raise ValueError(
            f"the calibration text has {len(ids)} tokens, fewer than seqlen={seqlen}; "
            "use a smaller --seqlen or a longer --calib file"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
