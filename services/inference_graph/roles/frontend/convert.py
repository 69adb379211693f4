"""OpenAI request bodies -> validated ``wire.ProcessRequest``s.

Everything that can be checked without the prompt's token count is checked
here; "prompt + max_tokens exceeds the context" is the processor's to detect
(it tokenizes) and comes back as a ``ServingError`` with status 400.

``max_tokens`` contract: when the client gives none, the request carries the
model's ``max_model_len`` and the processor clamps it to
``max_model_len - prompt_tokens``; an explicit value above ``max_model_len``
is rejected here.
"""

from __future__ import annotations

import time
import uuid
from typing import TypeVar

import msgspec

from inference_graph import wire

from ...errors import invalid_request, service_unavailable
from . import openai_types as oa
from .errors import from_decode_error
from .ports import ModelCard, ModelDirectory

MAX_PROMPTS = 256  # prompts in one batched completion request

T = TypeVar("T")

_chat_decoder = msgspec.json.Decoder(oa.ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(oa.CompletionRequest)


class Prepared(msgspec.Struct, kw_only=True):
    """A validated request: what to send, and how to shape the answer."""

    id: str
    created: int
    model: str
    kind: str  # "chat" | "completion"
    requests: list[wire.ProcessRequest]  # one per prompt (completions may batch)
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool


def decode_chat(body: bytes) -> oa.ChatCompletionRequest:
    try:
        return _chat_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None


def decode_completion(body: bytes) -> oa.CompletionRequest:
    try:
        return _completion_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None


def lookup_model(directory: ModelDirectory, name: str) -> ModelCard:
    card = directory.models().get(name)
    if card is None:
        # as OpenAI answers an unknown model
        raise invalid_request(f"The model `{name}` does not exist.", "model", "model_not_found", status=404)
    if not card.ready:
        raise service_unavailable(
            f"The model `{name}` has no ready worker; retry later.", "model_not_ready", param="model"
        )
    return card


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    return [s for s in stops if s]


def _common(
    req: oa.ChatCompletionRequest | oa.CompletionRequest,
    card: ModelCard,
    max_tokens: int | None,
    max_param: str,
    logprobs: int | None,
) -> wire.SamplingOptions:
    if req.stream_options is not None and not req.stream:
        raise invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    if max_tokens is None:
        max_tokens = card.max_model_len  # the processor clamps it to max_model_len - prompt_tokens
    elif max_tokens > card.max_model_len:
        raise invalid_request(
            f"'{max_param}' is {max_tokens}, but this model's maximum context length is "
            f"{card.max_model_len} tokens.",
            max_param,
        )
    min_tokens = _or(req.min_tokens, 0)
    if min_tokens > max_tokens:
        raise invalid_request(
            f"'min_tokens' ({min_tokens}) must be less than or equal to '{max_param}' ({max_tokens}).",
            "min_tokens",
        )
    stop_token_ids = req.stop_token_ids or []
    if any(t < 0 for t in stop_token_ids):
        raise invalid_request("'stop_token_ids' must be non-negative token ids.", "stop_token_ids")
    d = card.sampling_defaults
    return wire.SamplingOptions(
        max_tokens=max_tokens,
        min_tokens=min_tokens,
        temperature=_or(req.temperature, d.get("temperature", 1.0)),
        top_p=_or(req.top_p, d.get("top_p", 1.0)),
        top_k=_or(req.top_k, int(d.get("top_k", 0))),
        seed=req.seed,
        presence_penalty=_or(req.presence_penalty, d.get("presence_penalty", 0.0)),
        frequency_penalty=_or(req.frequency_penalty, d.get("frequency_penalty", 0.0)),
        repetition_penalty=_or(req.repetition_penalty, d.get("repetition_penalty", 1.0)),
        stop_token_ids=stop_token_ids,
        ignore_eos=_or(req.ignore_eos, False),
        logprobs=logprobs,
    )


def _messages(messages: list[oa.Message]) -> list[wire.ChatMessage]:
    out = []
    for i, m in enumerate(messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text":
                    raise invalid_request(
                        f"Content parts of type '{part.type}' are not supported by this server; "
                        "only 'text' parts are.",
                        f"messages[{i}].content[{j}].type",
                        "unsupported_content_type",
                    )
                if part.text is None:
                    raise invalid_request(
                        "A 'text' content part needs a 'text' field.", f"messages[{i}].content[{j}].text"
                    )
                texts.append(part.text)
            content = "\n".join(texts)
        elif content is None and m.role != "assistant":
            raise invalid_request(f"Messages with role '{m.role}' need 'content'.", f"messages[{i}].content")
        out.append(wire.ChatMessage(m.role, content, m.name))
    return out


def prepare_chat(req: oa.ChatCompletionRequest, card: ModelCard) -> Prepared:
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
    max_tokens: int | None
    if req.max_completion_tokens is not None:
        max_tokens, max_param = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, max_param = req.max_tokens, "max_tokens"
    logprobs = _or(req.top_logprobs, 0) if req.logprobs else None
    sampling = _common(req, card, max_tokens, max_param, logprobs)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    n = _or(req.n, 1)
    request = wire.ProcessRequest(
        request_id=rid,
        model=card.name,
        kind="chat",
        sampling=sampling,
        messages=_messages(req.messages),
        stop=_stops(req.stop),
        n=n,
        include_stop_str_in_output=_or(req.include_stop_str_in_output, False),
        skip_special_tokens=_or(req.skip_special_tokens, True),
        add_generation_prompt=_or(req.add_generation_prompt, True),
        chat_template_kwargs=req.chat_template_kwargs or {},
    )
    return _prepared(rid, card, "chat", [request], n, req, logprobs is not None)


def _prompts(prompt: str | list) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise invalid_request("'prompt' must not be empty.", "prompt")
    if all(_is_token(t) for t in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        prompts: list[str | list[int]] = list(prompt)
    elif all(isinstance(p, list) and p and all(_is_token(t) for t in p) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise invalid_request(
            "'prompt' must be a string, a list of strings, a list of token ids "
            "or a list of non-empty lists of token ids.",
            "prompt",
        )
    if len(prompts) > MAX_PROMPTS:
        raise invalid_request(f"At most {MAX_PROMPTS} prompts may be sent in one request.", "prompt")
    return prompts


def _is_token(t: object) -> bool:
    return type(t) is int and t >= 0


def prepare_completion(req: oa.CompletionRequest, card: ModelCard) -> Prepared:
    if req.suffix:
        raise invalid_request("'suffix' is not supported by this server.", "suffix")
    prompts = _prompts(req.prompt)
    sampling = _common(req, card, req.max_tokens, "max_tokens", req.logprobs)
    rid = f"cmpl-{uuid.uuid4().hex}"
    n = _or(req.n, 1)
    stop = _stops(req.stop)
    requests = [
        wire.ProcessRequest(
            request_id=rid if len(prompts) == 1 else f"{rid}-{k}",
            model=card.name,
            kind="completion",
            sampling=sampling,
            prompt=prompt,
            stop=stop,
            n=n,
            echo=_or(req.echo, False),
            include_stop_str_in_output=_or(req.include_stop_str_in_output, False),
            skip_special_tokens=_or(req.skip_special_tokens, True),
        )
        for k, prompt in enumerate(prompts)
    ]
    return _prepared(rid, card, "completion", requests, n, req, req.logprobs is not None)


def _prepared(
    rid: str,
    card: ModelCard,
    kind: str,
    requests: list[wire.ProcessRequest],
    n: int,
    req: oa.ChatCompletionRequest | oa.CompletionRequest,
    logprobs: bool,
) -> Prepared:
    return Prepared(
        id=rid,
        created=int(time.time()),
        model=card.name,
        kind=kind,
        requests=requests,
        n=n,
        stream=bool(req.stream),
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
        logprobs=logprobs,
    )
