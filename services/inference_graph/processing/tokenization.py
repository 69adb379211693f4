"""The model's own tokenizer: prompts to token ids, token ids to logprob text.

Tokenizing costs about 1 µs per token (SmolLM2: 1.5k tokens in 1.2 ms), so
short prompts are tokenized inline on the event loop and long ones on a single
private thread (one thread: a Hugging Face tokenizer is not safe to use from
several threads at once; the Rust encoder releases the GIL, so the loop runs on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import jinja2

from .. import wire
from ..errors import invalid_request

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

INLINE_MAX_CHARS = 16_000  # about 4k tokens, 4 ms of encoding
# Words whose BPE merges the tokenizer remembers. The library's default (10k) is
# small for a server that sees many users' vocabularies; a miss redoes the word's
# merges (25% slower encoding measured with 17k distinct words). ~100 bytes a word.
BPE_CACHE_WORDS = 200_000
# apply_chat_template arguments a request may not override through chat_template_kwargs
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "tokenize",
        "return_dict",
        "return_tensors",
        "padding",
        "truncation",
        "max_length",
        "add_generation_prompt",
        "tokenizer_kwargs",
        "return_assistant_tokens_mask",
    }
)
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's ``bytes_to_unicode``: byte-level BPE symbol -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = dict(zip(printable, printable, strict=True))
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = 256 + extra
            extra += 1
    return {chr(symbol): byte for byte, symbol in symbols.items()}


def _uses_byte_level(backend: Any) -> bool:
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


def _as_id_list(result: Any) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list, a batch, or a BatchEncoding."""
    if isinstance(result, Mapping):
        result = result["input_ids"]
    if hasattr(result, "tolist"):
        result = result.tolist()
    if result and isinstance(result[0], list):
        result = result[0]
    return [int(token_id) for token_id in result]


def _enlarge_bpe_cache(backend: Any, words: int) -> None:
    """Grow a BPE model's word cache (a speed setting only: ids are the same)."""
    resize = getattr(backend.model, "_resize_cache", None)  # tokenizers >= 0.20, BPE models
    if resize is None:
        log.info("tokenizer model %s has no resizable cache", type(backend.model).__name__)
        return
    resize(words)


class PromptTokenizer:
    """Wraps a Hugging Face tokenizer with what the processor needs from it."""

    def __init__(self, hf_tokenizer: Any) -> None:
        self.hf = hf_tokenizer
        self.backend: Tokenizer = hf_tokenizer.backend_tokenizer  # fast tokenizers only
        self.vocab_size = len(hf_tokenizer)
        self._byte_decoder = _gpt2_byte_decoder() if _uses_byte_level(self.backend) else None
        self._added: dict[int, str] = {i: t.content for i, t in hf_tokenizer.added_tokens_decoder.items()}
        self._logprob_tokens: dict[int, tuple[str, list[int]]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        _enlarge_bpe_cache(self.backend, BPE_CACHE_WORDS)
        # ``hf.encode`` is the backend's encode (through encode_batch) plus Python wrapping
        # (~0.2-0.4 ms of a 1.1k-token prompt); call the backend directly when it is set up
        # exactly as ``hf.encode`` would set it (no truncation or padding, special tokens kept).
        self._direct_encode = (
            self.backend.truncation is None
            and self.backend.padding is None
            and not getattr(hf_tokenizer, "split_special_tokens", False)
            and not self.backend.encode_special_tokens
        )

    @classmethod
    def load(cls, path: str) -> PromptTokenizer:
        from transformers import AutoTokenizer  # seconds to import: only where a tokenizer is loaded

        hf_tokenizer = AutoTokenizer.from_pretrained(path)
        hf_tokenizer.model_max_length = 1 << 62  # the processor checks lengths itself; silence the warning
        return cls(hf_tokenizer)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ prompts

    async def tokenize(self, request: wire.ProcessRequest) -> list[int]:
        """The prompt's token ids: chat template applied, or completion prompt encoded."""
        if request.kind == "chat":
            size = sum(len(m.content or "") for m in request.messages or ())
            work = partial(
                self.encode_chat,
                request.messages or [],
                request.add_generation_prompt,
                request.chat_template_kwargs,
            )
        elif isinstance(request.prompt, str):
            size, work = len(request.prompt), partial(self.encode_text, request.prompt)
        else:
            size, work = 0, partial(self.check_ids, request.prompt or [])
        if size <= INLINE_MAX_CHARS:
            ids = work()
        else:
            ids = await asyncio.get_running_loop().run_in_executor(self._executor, work)
        if not ids:
            raise invalid_request(
                "The prompt is empty.", param="messages" if request.kind == "chat" else "prompt"
            )
        return ids

    def encode_chat(
        self,
        messages: Sequence[wire.ChatMessage],
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> list[int]:
        conversation = [_message_dict(m) for m in messages]
        extra = {k: v for k, v in (template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_KWARGS}
        try:
            result = self.hf.apply_chat_template(
                conversation,
                add_generation_prompt=add_generation_prompt,
                tokenize=True,
                return_dict=False,
                **extra,
            )
        except (jinja2.TemplateError, ValueError) as exc:
            raise invalid_request(f"Cannot apply the chat template: {exc}", param="messages") from exc
        return _as_id_list(result)

    def encode_text(self, text: str) -> list[int]:
        """Completion prompt: encoded with the tokenizer's default special tokens (BOS or none)."""
        if self._direct_encode:
            # The same ids as ``encode``, without the character offsets we never read
            # (~12% of a 1.1k-token encode).
            return self.backend.encode_batch_fast([text])[0].ids
        return list(self.hf.encode(text))

    def check_ids(self, token_ids: Sequence[int]) -> list[int]:
        for token_id in token_ids:
            if not 0 <= token_id < self.vocab_size:
                raise invalid_request(f"Token id {token_id} is out of vocabulary.", param="prompt")
        return list(token_ids)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------ logprobs

    def logprob_token(self, token_id: int) -> tuple[str, list[int]]:
        """OpenAI's ``token`` and ``bytes`` for one token id.

        ``bytes`` are the token's own UTF-8 bytes. A token that is only part of
        a character (byte-level BPE, byte fallback) is shown as ``bytes:\\xe6\\x9d``
        as OpenAI does, instead of U+FFFD.
        """
        cached = self._logprob_tokens.get(token_id)
        if cached is None:
            raw = self._token_bytes(token_id)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            cached = self._logprob_tokens[token_id] = (text, list(raw))
        return cached

    def _token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_decoder is not None and all(c in self._byte_decoder for c in piece):
            return bytes(self._byte_decoder[c] for c in piece)
        fallback = _BYTE_FALLBACK.fullmatch(piece)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return self.backend.decode([token_id], skip_special_tokens=False).encode()


def _message_dict(message: wire.ChatMessage) -> dict[str, str]:
    out = {"role": message.role, "content": message.content or ""}
    if message.name is not None:
        out["name"] = message.name
    return out
