"""Call-or-answer decisions for ``tool_choice="auto"`` by embedding similarity.

Small models given a free choice between answering and calling almost never call (SmolLM2-135M
answered in words on every BFCL question), and asking them "does a tool fit?" gets "yes" every time.
A sentence embedder is far better at this one judgement: it compares the user's request with each
tool's name and description. Tools scoring at least ``threshold`` and within ``margin`` of the best
one may be called, and the grammar then requires a call to one of them; when none scores high
enough, the grammar allows only an answer in words. The decision is still enforced by the
constraint, never by the prompt.

Before any score, a tool's ``triggers`` pattern (a deterministic signal: an arithmetic expression
for the calculator, "what time is it" for the clock) gives a request to that tool outright: the
embedder scored "What is 17 * 23?" 0.331 against the calculator, under the bar.

The defaults (threshold 0.35, margin 0.1 on all-MiniLM-L6-v2) were chosen on the BFCL development
half over whole categories (bench/RESULTS.md, "Tool selection"): about 94% of requests that need a
tool keep the right one, and 70% of requests that fit no tool are answered in words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel
from slmflow.runtime.embeddings import Embedder, load_embedder


class ToolSelection(BaseModel):
    """Which tools the request may call (empty: answer in words), with every tool's score, and the
    tool whose ``triggers`` pattern matched, if one did (it is then the only one allowed)."""

    allowed: list[str]
    scores: dict[str, float]
    triggered: str | None = None


def tool_text(name: str, description: str) -> str:
    """What the embedder sees of a tool: its name as words, then its description."""
    return name.replace("_", " ").replace(".", " ") + ": " + description


class ToolSelector:
    """Scores tools against a request with a sentence embedder and keeps the ones that fit."""

    def __init__(self, embedder: Embedder | None = None, threshold: float = 0.35, margin: float = 0.1) -> None:
        self.embedder = embedder or load_embedder()
        self.threshold = threshold
        self.margin = margin
        self._tool_vectors: dict[str, object] = {}

    def select(self, request: str, tools: Sequence) -> ToolSelection:
        """The tools (``ToolSpec``-like: name, description) that fit ``request``."""
        texts = [tool_text(t.name, t.description) for t in tools]
        missing = [t for t in texts if t not in self._tool_vectors]
        if missing:
            self._tool_vectors.update(zip(missing, self.embedder.embed(missing), strict=True))
        query = self.embedder.embed_query(request)
        scores = {t.name: float(self._tool_vectors[text] @ query) for t, text in zip(tools, texts, strict=True)}
        for t in tools:
            if t.triggers and re.search(t.triggers, request, re.IGNORECASE):
                return ToolSelection(allowed=[t.name], scores=scores, triggered=t.name)
        best = max(scores.values(), default=0.0)
        floor = max(self.threshold, best - self.margin)
        return ToolSelection(allowed=[name for name, s in scores.items() if s >= floor], scores=scores)
