"""Stop strings, matched on generated text only.

``StopMatcher.feed`` returns the text that is safe to emit: it holds back the
longest suffix that could still grow into a stop string, and cuts the text at
the first match (keeping the stop string when ``include_stop_str_in_output``).
Because a held suffix is always re-examined with the next text, a match can
never start in text already emitted.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        self._stops = [s for s in stops if s]
        self._include = include_stop_str_in_output
        self._held = ""
        self.matched: str | None = None

    @property
    def empty(self) -> bool:
        """No stop strings: nothing is ever held back or matched."""
        return not self._stops

    def feed(self, text: str, *, active: bool = True) -> str:
        """Add generated text; return what can be emitted now.

        With ``active=False`` (fewer than ``min_tokens`` generated) nothing
        matches yet, but a possible prefix is still held back.
        """
        if not self._stops or self.matched is not None:
            return text if self.matched is None else ""
        buffer = self._held + text
        if active:
            hit = self._first_match(buffer)
            if hit is not None:
                start, stop = hit
                self.matched, self._held = stop, ""
                return buffer[: start + len(stop)] if self._include else buffer[:start]
        keep = self._partial_suffix_length(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of the stream: release the held text (no stop string came)."""
        held, self._held = self._held, ""
        return held

    def _first_match(self, buffer: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            start = buffer.find(stop)
            if start >= 0 and (best is None or start < best[0]):
                best = (start, stop)
        return best

    def _partial_suffix_length(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
