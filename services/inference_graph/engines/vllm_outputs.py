"""Mapping between ``wire`` messages and vLLM's request and output types.

vLLM is imported inside the functions: importing it costs seconds, and the
engine sets process environment (offline mode, threads) before it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import errors, wire

if TYPE_CHECKING:
    from vllm import RequestOutput, SamplingParams

# vLLM's finish reasons -> ours; "error" is raised as a server_error (500).
_FINISH = {"stop": "stop", "length": "length", "abort": "abort", "repetition": "stop"}


def sampling_params(opts: wire.SamplingOptions) -> SamplingParams:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    try:
        return SamplingParams(
            n=1,
            max_tokens=opts.max_tokens,
            min_tokens=opts.min_tokens,
            temperature=opts.temperature,
            top_p=opts.top_p,
            top_k=opts.top_k if opts.top_k > 0 else 0,
            seed=opts.seed,
            presence_penalty=opts.presence_penalty,
            frequency_penalty=opts.frequency_penalty,
            repetition_penalty=opts.repetition_penalty,
            stop_token_ids=list(opts.stop_token_ids),
            ignore_eos=opts.ignore_eos,
            logprobs=opts.logprobs,
            detokenize=False,  # the processor detokenizes
            output_kind=RequestOutputKind.DELTA,
        )
    except Exception as exc:  # construction only validates: VLLMValidationError, ValueError
        raise errors.invalid_request(_message(exc), getattr(exc, "parameter", None)) from exc


def _logprobs(token_ids: list[int], positions: Any, k: int) -> list[wire.TokenLogprob]:
    out = []
    for token_id, pos in zip(token_ids, positions, strict=False):
        pos = pos or {}
        chosen = pos.get(token_id)
        ranked = sorted(((lp.rank or 0, tid, lp.logprob) for tid, lp in pos.items()), key=lambda r: r[0])
        top = [(tid, lp) for rank, tid, lp in ranked if rank and rank <= k]
        out.append(
            wire.TokenLogprob(
                token_id=token_id,
                logprob=chosen.logprob if chosen is not None else float("-inf"),
                top=top,
            )
        )
    return out


def to_output(out: RequestOutput, num_prompt_tokens: int, num_logprobs: int | None) -> wire.GenerateOutput:
    """One ``RequestOutput`` (DELTA kind) as a ``wire.GenerateOutput`` frame."""
    comp = out.outputs[0]
    token_ids = list(comp.token_ids)
    finish_reason = None
    stop_token_id = None
    if out.finished:
        reason = comp.finish_reason or "stop"
        if reason == "error":
            raise errors.server_error("the engine failed the request (e.g. a KV transfer error)")
        finish_reason = _FINISH.get(reason, "stop")
        if isinstance(comp.stop_reason, int):
            stop_token_id = comp.stop_reason
    logprobs = None
    if num_logprobs is not None and comp.logprobs is not None:
        logprobs = _logprobs(token_ids, comp.logprobs, num_logprobs)
    return wire.GenerateOutput(
        token_ids=token_ids,
        finish_reason=finish_reason,
        num_prompt_tokens=len(out.prompt_token_ids)
        if out.prompt_token_ids is not None
        else num_prompt_tokens,
        num_cached_tokens=out.num_cached_tokens or 0,
        logprobs=logprobs,
        stop_token_id=stop_token_id,
    )


def map_error(exc: BaseException) -> BaseException:
    """vLLM's request errors as ``ServingError``; anything else unchanged."""
    if isinstance(exc, errors.ServingError):
        return exc
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMNotFoundError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, VLLMNotFoundError):
        return errors.invalid_request(str(exc), getattr(exc, "parameter", None), status=404)
    if isinstance(exc, VLLMClientError):
        return errors.invalid_request(_message(exc), getattr(exc, "parameter", None))
    if isinstance(exc, GracefulHTTPError):
        return errors.for_status(int(exc.http_status), str(exc))
    if isinstance(exc, EngineDeadError):
        return errors.service_unavailable("the vLLM engine died")
    if isinstance(exc, EngineGenerateError):
        return errors.server_error(f"the vLLM engine failed the request: {exc.__cause__ or exc}")
    return exc


def _message(exc: BaseException) -> str:
    # VLLMValidationError's str() appends "(parameter=..., value=...)"; keep the sentence.
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
