"""The incremental detokenizer on its own: held-back characters and stop strings."""

from __future__ import annotations

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
