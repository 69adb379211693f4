"""One choice's output pipeline: worker frames in, ``ProcessOutput`` frames out.

Tokens are handled one at a time (detokenize, then match stop strings), so a
stop string that completes in the middle of a multi-token frame ends the choice
at that token: later tokens of the frame are neither counted nor given
logprobs, as if the engine had stopped there (vLLM checks stop strings after
every token). Pure logic, no I/O: ``Processor`` feeds it and closes the worker
stream once ``finished`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import wire
from .detokenizer import IncrementalDetokenizer
from .stop import StopMatcher
from .tokenization import PromptTokenizer


@dataclass(frozen=True)
class ChoiceOptions:
    index: int
    prompt_ids: list[int]
    stop: list[str]
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    min_tokens: int = 0
    logprobs: bool = False
    echo_text: str = ""


class ChoiceState:
    def __init__(self, tokenizer: PromptTokenizer, options: ChoiceOptions) -> None:
        self._tokenizer = tokenizer
        self._options = options
        self._detokenizer = IncrementalDetokenizer(
            tokenizer.backend, options.prompt_ids, options.skip_special_tokens
        )
        self._stop = StopMatcher(options.stop, options.include_stop_str_in_output)
        self._prefix = options.echo_text  # emitted with the first frame
        self._unreported_tokens = 0  # tokens consumed since the last emitted frame
        self.num_generated = 0
        self.num_cached = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.migrations = 0  # times the processor moved this choice to another worker

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def on_output(self, output: wire.GenerateOutput) -> wire.ProcessOutput | None:
        """Consume one worker frame; return the frame to emit, or None if there is nothing new."""
        self.num_cached = max(self.num_cached, output.num_cached_tokens)
        pieces = [self._prefix]
        self._prefix = ""
        consumed = self._consume_tokens(output, pieces)
        if not self.finished and output.finish_reason is not None:
            self._finish_stream(output, pieces)
        self._unreported_tokens += consumed
        text = "".join(pieces)
        logprobs = (
            self._convert_logprobs((output.logprobs or [])[:consumed]) if self._options.logprobs else None
        )
        if not text and not logprobs and not self.finished:
            return None
        frame = wire.ProcessOutput(
            index=self._options.index,
            text=text,
            num_tokens=self._unreported_tokens,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            logprobs=logprobs,
            usage=self._usage() if self.finished else None,
        )
        self._unreported_tokens = 0
        return frame

    def _consume_tokens(self, output: wire.GenerateOutput, pieces: list[str]) -> int:
        """Detokenize and stop-check the frame's tokens; return how many were consumed."""
        token_ids = output.token_ids
        # vLLM: the EOS / stop token that ended generation is counted but not rendered
        hide_last = output.finish_reason == "stop" and not self._options.include_stop_str_in_output
        if self._stop.empty:  # no stop string can end the choice mid-frame: the whole frame at once
            self.num_generated += len(token_ids)
            pieces.append(self._detokenizer.step_many(token_ids[:-1] if hide_last else token_ids))
            return len(token_ids)
        for position, token_id in enumerate(token_ids):
            self.num_generated += 1
            if hide_last and position == len(token_ids) - 1:
                return position + 1
            delta = self._detokenizer.step(token_id)
            pieces.append(self._stop.feed(delta, active=self.num_generated > self._options.min_tokens))
            if self._stop.matched is not None:
                self.finish_reason, self.stop_reason = "stop", self._stop.matched
                return position + 1
        return len(token_ids)

    def _finish_stream(self, output: wire.GenerateOutput, pieces: list[str]) -> None:
        """The worker finished: render held-back text, which may still complete a stop string."""
        pieces.append(
            self._stop.feed(self._detokenizer.flush(), active=self.num_generated > self._options.min_tokens)
        )
        if self._stop.matched is not None:
            self.finish_reason, self.stop_reason = "stop", self._stop.matched
            return
        pieces.append(self._stop.flush())
        self.finish_reason = output.finish_reason
        self.stop_reason = output.stop_token_id

    def _convert_logprobs(self, logprobs: list[wire.TokenLogprob]) -> list[wire.TextLogprob]:
        converted = []
        for entry in logprobs:
            token, raw = self._tokenizer.logprob_token(entry.token_id)
            top: list[tuple[str, float, list[int] | None]] = []
            for token_id, logprob in entry.top:
                alt_token, alt_raw = self._tokenizer.logprob_token(token_id)
                top.append((alt_token, logprob, alt_raw))
            converted.append(wire.TextLogprob(token=token, logprob=entry.logprob, bytes=raw, top=top))
        return converted

    def _usage(self) -> wire.Usage:
        return wire.Usage(
            prompt_tokens=len(self._options.prompt_ids),
            completion_tokens=self.num_generated,
            cached_tokens=self.num_cached,
            migrations=self.migrations,
        )
