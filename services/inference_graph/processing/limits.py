"""The context-length check: prompt tokens plus max_tokens against max_model_len.

Contract with the frontend: when the client gave no ``max_tokens`` the frontend
sends ``max_model_len``. So ``max_tokens >= max_model_len`` means "as many as
fit" and is clamped to ``max_model_len - prompt_tokens``; a smaller value is the
client's and must fit, or the request fails with OpenAI's
``context_length_exceeded`` error.
"""

from __future__ import annotations

from ..errors import invalid_request


def fit_max_tokens(kind: str, prompt_tokens: int, max_tokens: int, max_model_len: int) -> int:
    """The max_tokens to send to the worker; raises ``ServingError`` (400) if the request cannot fit."""
    where = "messages" if kind == "chat" else "prompt"
    if prompt_tokens >= max_model_len:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens. However, your {where} "
            f"resulted in {prompt_tokens} tokens, which leaves no room for the completion. "
            f"Please reduce the length of the {where}.",
            param=where,
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_tokens
    if max_tokens >= max_model_len:
        return room
    if max_tokens > room:
        raise invalid_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {where}, {max_tokens} in the "
            f"completion). Please reduce the length of the {where} or completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return max_tokens
