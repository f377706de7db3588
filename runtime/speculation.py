"""Prompt-lookup drafting: guess the next tokens by finding the text just written in the prompt.

While an answer copies from its sources (a quote, a tool's value), the tokens that come next are
already in the prompt, right after the last place where the tokens just generated occur. The loop
feeds such a guess together with the token it sampled in one forward pass and keeps the longest
part of the guess the model agrees with (``decode_tokens``); a guess costs one wider forward pass
and never changes a greedy output.

The drafter adapts its guess length: full length after a guess that was taken whole, shorter after
one that was rejected early, so free text (where guesses seldom hold) pays for few wide passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PromptLookup:
    """Drafts up to ``max_draft`` tokens by matching the last ``max_ngram`` .. ``min_ngram`` tokens."""

    def __init__(self, context: Sequence[int], max_ngram: int = 3, min_ngram: int = 2, max_draft: int = 8) -> None:
        self._tokens = list(context)
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.max_draft = max_draft
        self._length = max_draft
        self.proposed = 0
        self.accepted = 0
        self.passes = 0

    def append(self, tokens: Sequence[int]) -> None:
        """Tokens that joined the context (sampled, forced or accepted)."""
        self._tokens.extend(tokens)

    def propose(self) -> list[int]:
        """The tokens that followed the most recent earlier occurrence of the context's last
        n-gram (longest n first); empty when there is none."""
        tokens = self._tokens
        if len(tokens) <= self.min_ngram or self._length == 0:
            return []
        arr = np.asarray(tokens, dtype=np.int64)
        for n in range(min(self.max_ngram, len(tokens) - 1), self.min_ngram - 1, -1):
            tail = arr[-n:]
            # Windows that end before the tail itself starts, matched on their first token first.
            starts = np.flatnonzero(arr[: len(arr) - n] == tail[0])
            for start in starts[::-1]:
                if np.array_equal(arr[start:start + n], tail):
                    follow = arr[start + n:start + n + self._length]
                    if len(follow):
                        return follow.tolist()
        return []

    def record(self, proposed: int, accepted: int) -> None:
        """How a guess fared; sets the next guess's length."""
        self.passes += 1
        self.proposed += proposed
        self.accepted += accepted
        self._length = self.max_draft if accepted == proposed else max(accepted + 1, 2)
