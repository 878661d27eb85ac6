"""Incremental detokenization: turn each new token into the text it adds, in O(1) tokens per step.

A token can end in the middle of a UTF-8 character or change how the previous token renders
(byte-level BPE), so we decode a short window ``[prefix_offset, len)`` and emit only what is new
beyond ``[prefix_offset, read_offset)``, holding text back while it ends in an incomplete character.

The window starts on the prompt's last tokens (as vLLM's does): SentencePiece-style tokenizers
render a piece differently at the start of a text ("▁the" is "the" there, " the" after a word), so
the first output token must be decoded after what precedes it. ``text`` holds only the output.
"""

from __future__ import annotations

# Prompt tokens kept as context for the first output token (vLLM's initial offset).
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        # Only the prompt's tail is ever decoded again, so only the tail is kept.
        self.token_ids: list[int] = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)
        self.num_output_tokens = 0  # output tokens given to update()
        # Longest stop string, so we only search the tail of the text each step.
        self._stop_window = max((len(s) for s in stop), default=0)

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:  # config-only model (dummy weights): token ids, no text
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def catch_up(self, output_token_ids: list[int]) -> None:
        """Take the output tokens not seen yet (m8: a request without stop strings needs its
        text only when it ends, so the engine skips ``update`` on the per-step path). Without
        stop strings nothing needs the text token by token: the tokens are only queued, and the
        ``flush`` that follows decodes them in one call (not two decodes per token)."""
        new = output_token_ids[self.num_output_tokens :]
        if not self.stop:
            self.token_ids.extend(new)
            self.num_output_tokens += len(new)
            return
        for token_id in new:
            self.update(token_id)

    def update(self, token_id: int) -> str | None:
        """Add one token; return the stop string it completed, if any (the text is cut before it)."""
        self.num_output_tokens += 1
        self.token_ids.append(token_id)
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new_text = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        else:
            return None
        return self._append(new_text)

    def flush(self) -> str | None:
        """At the end, emit text held back for an incomplete character (as the replacement char);
        return the stop string that text completed, if any (the text is cut before it)."""
        prefix = self._decode(self.token_ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.token_ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.token_ids)
        if len(full) > len(prefix):
            return self._append(full[len(prefix) :])
        return None

    def _append(self, new_text: str) -> str | None:
        old_len = len(self.text)
        self.text += new_text
        if self.stop:
            search_from = max(0, old_len - self._stop_window + 1)
            hits = [(pos, s) for s in self.stop if (pos := self.text.find(s, search_from)) != -1]
            if hits:
                pos, s = min(hits)
                self.text = self.text[:pos]
                return s
        return None
