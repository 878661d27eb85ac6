"""The incremental detokenizer on its own: held-back characters and stop strings."""

from __future__ import annotations

import pytest

from folovllm.engine.detokenizer import IncrementalDetokenizer


class BytesTokenizer:
    """Each token id is a fixed byte string; decoding joins them (a byte-level BPE in miniature)."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_flush_finds_a_stop_string_in_held_back_text():
    """A last token that completes a stop string and ends mid-character: the stop string wins."""
    tok = BytesTokenizer([b"Hi", b" ca", b"f\xc3"])  # "f" + the first byte of "é"
    detok = IncrementalDetokenizer(tok, [0], ["caf"])
    assert detok.update(1) is None and detok.text == " ca"
    assert detok.update(2) is None and detok.text == " ca"  # held back: incomplete character
    assert detok.flush() == "caf"
    assert detok.text == " "


def test_flush_emits_held_back_text_without_a_stop_string():
    tok = BytesTokenizer([b"Hi", b" ca", b"f\xc3"])
    detok = IncrementalDetokenizer(tok, [0], [])
    detok.update(1)
    detok.update(2)
    assert detok.flush() is None
    assert detok.text == " caf\ufffd"


def sentencepiece_like_tokenizer():
    """A Metaspace ("▁" marks a word start) Unigram tokenizer built in memory, as SentencePiece's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = ["Hello world, hello there.", "The world is wide and the sea is deep."] * 8
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=["<unk>"], unk_token="<unk>")
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.mark.parametrize("prompt,completion", [("Hello", " world is wide"), ("The", "re sea")])
def test_first_output_token_is_decoded_after_the_prompt(prompt, completion):
    """A leading "▁" renders as a space after a word but not at the start of a text."""
    tok = sentencepiece_like_tokenizer()
    prompt_ids = tok.encode(prompt)
    all_ids = tok.encode(prompt + completion)
    assert all_ids[: len(prompt_ids)] == prompt_ids, "the prompt must tokenize on its own"
    output_ids = all_ids[len(prompt_ids) :]
    expected = tok.decode(all_ids)[len(tok.decode(prompt_ids)) :]
    assert expected == completion
    detok = IncrementalDetokenizer(tok, prompt_ids, [])
    for t in output_ids:
        assert detok.update(t) is None
    assert detok.text == completion


def test_stop_string_is_searched_in_the_output_only():
    tok = sentencepiece_like_tokenizer()
    prompt_ids = tok.encode("Hello world")
    output_ids = tok.encode("Hello world is wide")[len(prompt_ids) :]
    detok = IncrementalDetokenizer(tok, prompt_ids, ["world"])  # in the prompt, not the output
    assert [detok.update(t) for t in output_ids] == [None] * len(output_ids)
    assert detok.text == " is wide"


@pytest.mark.parametrize("kind", ["byte_level_bpe", "sentencepiece_like"])
def test_catch_up_then_flush_equals_token_by_token(kind):
    """The end-of-request path (queue the tokens, decode once in ``flush``) gives exactly the
    text of ``update`` per token + ``flush``, on random tokens (incomplete UTF-8 included)."""
    import random

    if kind == "byte_level_bpe":
        from conftest import make_tokenizer

        tok = make_tokenizer(384)
    else:
        tok = sentencepiece_like_tokenizer()
    rng = random.Random(0)
    for _ in range(40):
        prompt = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 9))]
        output = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))]
        stepwise = IncrementalDetokenizer(tok, prompt, [])
        for t in output:
            stepwise.update(t)
        stepwise.flush()
        at_end = IncrementalDetokenizer(tok, prompt, [])
        at_end.catch_up(output[: len(output) // 2])
        at_end.catch_up(output)
        at_end.flush()
        assert at_end.text == stepwise.text
