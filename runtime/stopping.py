"""When generation ends early: stop strings that may span token boundaries, and degenerate loops.

Text is held back while its tail could still grow into a stop string, so a stop string split over
several tokens is caught and never emitted, while everything that cannot be part of one streams out
at once.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def _partial_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def feed(self, delta: str) -> str:
        """Take new text; return the part that is safe to emit. Sets ``stopped`` on a match."""
        if not self.stops:
            return delta
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of generation, held text was not a stop string after all: release it."""
        held, self._held = self._held, ""
        return held


class LoopDetector:
    """Notices when generation is stuck repeating one block of tokens.

    Small models under greedy decoding fall into loops ("I'm going to ... I'm going to ...") that
    run until ``max_tokens``: the user waits for text nobody wants. A loop here is a suffix of the
    generated tokens that repeats a block of at most ``max_period`` tokens at least ``min_repeats``
    times (``long_repeats`` for a block longer than ``short_period``) and is at least ``min_span``
    tokens long; real text almost never does that. For each
    period k it keeps the length of the current run where token[i] == token[i - k], so a token
    costs O(max_period).
    """

    def __init__(self, max_period: int = 128, min_repeats: int = 4, min_span: int = 64, short_period: int = 32,
                 long_repeats: int = 2) -> None:
        """A block longer than ``short_period`` tokens (a whole sentence said again and again, as
        in a 1,109-token /api/chat reply) counts as a loop after ``long_repeats`` repeats: real
        text does not say 33+ tokens twice in a row, and four repeats of a long sentence would
        take hundreds of tokens to notice."""
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_span = min_span
        self.short_period = short_period
        self.long_repeats = long_repeats
        self._tokens: list[int] = []
        self._runs = [0] * (max_period + 1)
        self.period = 0

    def feed(self, token: int) -> bool:
        """Take the next generated token; True while the tokens end in a loop (``period`` says its length)."""
        tokens = self._tokens
        tokens.append(token)
        n = len(tokens)
        self.period = 0
        for k in range(1, min(self.max_period, n - 1) + 1):
            run = self._runs[k] + 1 if tokens[n - 1 - k] == token else 0
            self._runs[k] = run
            repeats = self.min_repeats if k <= self.short_period else self.long_repeats
            if not self.period and run + k >= max(self.min_span, repeats * k):
                self.period = k
        return self.period > 0
