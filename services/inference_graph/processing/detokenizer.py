"""Incremental detokenization: generated token ids to text deltas.

Built on ``tokenizers.decoders.DecodeStream`` (Rust): it holds back tokens
until they form complete UTF-8, so a character split across byte-level BPE
tokens never shows up as U+FFFD mid-stream. The stream is primed with the tail
of the prompt, as vLLM does, so the first generated token decodes as it would
after the prompt (leading spaces of SentencePiece-style tokenizers survive).
The concatenated deltas plus ``flush()`` equal decoding the ids in one go.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

_CONTEXT_MIN, _CONTEXT_MAX = 4, 24  # prompt tokens used to prime the stream
_WINDOW = 8  # emitted tokens kept to decode a flushed tail in context


def prompt_context(tokenizer: Tokenizer, prompt_ids: Sequence[int]) -> list[int]:
    """The shortest prompt tail (4 tokens or more, when there are) that decodes to whole characters.

    DecodeStream must not be primed with a tail ending mid-character: it would
    then emit the broken character with the first generated token.
    """
    shortest = min(len(prompt_ids), _CONTEXT_MIN)
    for size in range(shortest, min(len(prompt_ids), _CONTEXT_MAX) + 1):
        tail = list(prompt_ids[len(prompt_ids) - size :])
        if "\ufffd" not in tokenizer.decode(tail, skip_special_tokens=False):
            return tail
    return []


class IncrementalDetokenizer:
    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        context = prompt_context(tokenizer, prompt_ids)
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(ids=context, skip_special_tokens=skip_special_tokens)
        self._window: deque[int] = deque(context, maxlen=_WINDOW)
        self._pending: list[int] = []  # ids fed since the last text came out

    def step(self, token_id: int) -> str:
        """Feed one generated token; return the text it completes (often "" mid-character)."""
        return self._took(self._stream.step(self._tokenizer, token_id), (token_id,))

    def step_many(self, token_ids: Sequence[int]) -> str:
        """Feed several tokens at once; the same text as ``step`` on each, joined.

        DecodeStream decodes everything it holds or nothing (it holds all of it back
        while the tail is an incomplete character), so the pending bookkeeping is
        the same as for one token. One call instead of one per token: a frame of a
        fast engine often carries dozens of tokens.
        """
        if not token_ids:
            return ""
        return self._took(self._stream.step(self._tokenizer, list(token_ids)), token_ids)

    def _took(self, text: str | None, token_ids: Sequence[int]) -> str:
        """Bookkeeping after a DecodeStream step: ids held back (no text yet) or emitted."""
        if text is None:
            self._pending.extend(token_ids)
            return ""
        self._window.extend(self._pending)
        self._window.extend(token_ids)
        self._pending.clear()
        return text

    def flush(self) -> str:
        """At the end of the stream: the held-back tail, as a one-shot decode renders it."""
        if not self._pending:
            return ""
        pending, self._pending = self._pending, []
        context = list(self._window)
        self._window.extend(pending)
        before = self._tokenizer.decode(context, skip_special_tokens=self._skip)
        after = self._tokenizer.decode(context + pending, skip_special_tokens=self._skip)
        if after.startswith(before):
            return after[len(before) :]
        return self._tokenizer.decode(pending, skip_special_tokens=self._skip)
