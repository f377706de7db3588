"""The docs-qa agent: retrieve chunks from a folder's index, then answer with citations.

The answer is generated under a constraint whose citation markers can only be ``[1]`` .. ``[n]`` for
the ``n`` chunks placed in the prompt, and which requires at least one of them, so every printed
citation points to a retrieved chunk. The grammar's other branch is a fixed sentence saying the
documents do not hold the answer. Polar questions ("Did ...", "Is ...") must start with Yes or No.
The sources are packed into the prompt by counting the answering model's tokens, best first, until
the window (less the reply) is full.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pydantic import BaseModel
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Regex
from slmflow.runtime.messages import Message
from slmflow.tools.rag.index import DocumentIndex
from slmflow.tools.rag.retrieval import Hit, Retriever

NOT_FOUND = "The documents do not say."
SYSTEM = ("Answer the question from the numbered sources only, in one short sentence that ends with the number "
          f"of its source, like [1]. If the sources do not contain the answer, reply exactly: {NOT_FOUND}")
_POLAR = re.compile(r"^(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should|shall|may|might|"
                    r"must)\b", re.IGNORECASE)
_CITE = re.compile(r"\[(\d+)\]")


class Source(BaseModel):
    """A retrieved chunk as the answer may cite it: ``[number]`` → file and page or section."""

    number: int
    path: str
    page: int | None
    heading: str
    chunk_id: str
    score: float
    text: str

    def label(self) -> str:
        where = f", page {self.page}" if self.page is not None else (f", § {self.heading}" if self.heading else "")
        return f"[{self.number}] {self.path}{where}"


class DocsAnswer(BaseModel):
    question: str
    answer: str
    cited: list[Source]
    sources: list[Source]
    found: bool
    retrieval_ms: float
    generation_ms: float
    prompt_tokens: int
    completion_tokens: int


def answer_constraint(n_sources: int, polar: bool) -> Regex:
    """One sentence (at most 150 characters, so at most 150 tokens, no full stop inside) closed by a citation ``[i]``
    with i in 1..n, or the not-found sentence. Without a full stop to end on, the model's way out
    of the sentence is the citation, so even a small model cites rather than rambles. A regular
    expression rather than a grammar, so models behind an endpoint are held to it too."""
    cites = "|".join(str(i) for i in range(1, n_sources + 1))
    opening = "(Yes|No), " if polar else ""
    # Full stops as "[.]", not "\.": llama.cpp's schema-to-grammar converter writes "\." into a
    # GBNF literal, which its grammar parser then rejects (and re.escape adds "\ " for spaces).
    not_found = NOT_FOUND.replace(".", "[.]")
    return Regex(rf"{not_found}|{opening}[^\[\]\n.?!]{{1,150}} ?\[({cites})\][.]")


class DocsQA:
    """Question answering over one folder (see the module docstring)."""

    def __init__(self, folder: str | Path, model=None, *, index_dir: str | Path | None = None,
                 k: int = 5, max_tokens: int = 160, context_tokens: int = 2048,
                 include: list[str] | None = None, index_url: str | None = None) -> None:
        self.index = DocumentIndex(folder, index_dir, index_url=index_url)
        self.include = include
        self.model = load_model(model, role=None if model is not None else "mini")
        self.k = k
        self.max_tokens = max_tokens
        self.context_tokens = context_tokens
        self._retriever: Retriever | None = None

    def update_index(self, progress: bool = True):
        """Index new and changed files (see tools/rag/index.py); the retriever reopens afterwards."""
        stats = self.index.update(include=self.include, progress=progress)
        self._retriever = None
        return stats

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever(self.index)
        return self._retriever

    def _messages(self, question: str, hits: list[Hit]) -> tuple[list[Message], int]:
        """The prompt with as many sources as fit, and how many that is."""
        budget = min(self.context_tokens, self.model.context_length - self.max_tokens)
        used = hits
        while True:
            blocks = [f"[{i}] {h.chunk.title}" + (f" — {h.chunk.heading}" if h.chunk.heading and
                                                   h.chunk.heading != h.chunk.title else "") + f"\n{h.chunk.text}"
                      for i, h in enumerate(used, start=1)]
            messages = [Message(role="system", content=SYSTEM),
                        Message(role="user", content=f"Question: {question}\n\nSources:\n" + "\n\n".join(blocks)
                                + f"\n\nQuestion: {question}")]
            if self.model.count_tokens(messages) <= budget or not used:
                return messages, len(used)
            used = used[:-1]

    def ask(self, question: str, where: dict | None = None) -> DocsAnswer:
        """Retrieve, then answer (the two steps the docs-qa graph runs as nodes)."""
        start = time.perf_counter()
        hits = self.retriever.search(question, k=self.k, where=where)
        return self.answer(question, hits, retrieval_ms=(time.perf_counter() - start) * 1000)

    def answer(self, question: str, hits: list[Hit], retrieval_ms: float = 0.0) -> DocsAnswer:
        """The cited answer to ``question`` from ``hits`` (as many as fit the window)."""
        messages, n = self._messages(question, hits)
        sources = [Source(number=i, path=h.chunk.path, page=h.chunk.page, heading=h.chunk.heading,
                          chunk_id=h.chunk.id, score=h.score, text=h.chunk.text) for i, h in enumerate(hits[:n], 1)]
        if not sources:
            return DocsAnswer(question=question, answer=NOT_FOUND, cited=[], sources=[], found=False,
                              retrieval_ms=retrieval_ms, generation_ms=0.0, prompt_tokens=0, completion_tokens=0)
        start = time.perf_counter()
        constraint = answer_constraint(len(sources), polar=bool(_POLAR.match(question.strip())))
        result = self.model.generate(messages, constraint=constraint, max_tokens=self.max_tokens).result()
        numbers = sorted({int(m) for m in _CITE.findall(result.text)})
        return DocsAnswer(
            question=question, answer=result.text.strip(), cited=[sources[i - 1] for i in numbers],
            sources=sources, found=result.text.strip() != NOT_FOUND,
            retrieval_ms=retrieval_ms, generation_ms=(time.perf_counter() - start) * 1000,
            prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens)
