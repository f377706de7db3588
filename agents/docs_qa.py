"""The docs-qa agent: retrieve chunks from a folder's index, then answer from one quoted sentence.

A small model asked to write an answer over retrieved chunks rewrites them into something wrong
(wave 1: token F1 0.07 on wikiqa dev with the evidence retrieved). So the answer is built from
the documents, and the model only makes the choices it can make well:

1. **Evidence first.** The sentences of the retrieved chunks are ranked against the question
   (tools/rag/evidence.py); the best one is the evidence, shown with its file, page or section and
   character offsets, and cited as the chunk it comes from, so a citation cannot point elsewhere.
2. **Not found.** When even the best sentence holds too little of the question
   (:func:`supported`), the answer is the not-found sentence instead of a guess.
3. **Polar questions** get Yes or No from a calibrated score over the evidence (agents/polar.py),
   never from the model's prior, which nearly always says Yes.
4. **Other questions** get the shortest piece of the evidence that answers them: the sentence is
   cut into pieces around the question's own words, and for a date, number or name question
   into the dates, numbers or names in those pieces (agents/answer_spans.py). A rule picks the
   piece (:func:`pick_piece`), or with ``pick="model"`` the model does, under a
   :class:`~slmflow.runtime.constraints.Quote` constraint, so what it writes is verbatim document
   text; either way the answer is located to the character. On wikiqa with the embedded 135M
   model the rule is the better picker (the model stops early inside a piece or takes a
   one-word one), so it is the default; a larger model can be measured with the eval's
   ``answer-model`` mode.

With ``pick="model"`` and a served model (``ollama:``, ``openai:``), which takes no token masks,
the reply is checked on arrival and snapped to the nearest piece, or marked unverified
(:attr:`DocsAnswer.verified`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from slmflow.agents.answer_spans import (
    QuestionKind,
    answer_pieces,
    question_kind,
    typed_spans,
)
from slmflow.agents.follow_ups import with_antecedent
from slmflow.agents.polar import YES_THRESHOLD, PolarFeatures, polar_features
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Quote, QuoteSpan, Regex
from slmflow.runtime.messages import Message
from slmflow.runtime.queued import queued
from slmflow.tools.rag.chunking import place_label
from slmflow.tools.rag.evidence import Evidence
from slmflow.tools.rag.index import DocumentIndex, OnIndexProgress
from slmflow.tools.rag.retrieval import Hit, Retriever

NOT_FOUND = "The documents do not say."
SYSTEM = ("Answer the question from the numbered sources only, in one short sentence that ends with the number "
          f"of its source, like [1]. If the sources do not contain the answer, reply exactly: {NOT_FOUND}")
WH_SYSTEM = "Copy from the evidence the few words that answer the question."
WH_MAX_TOKENS = 32
#: How many of the best sentences are searched for a piece of the asked kind (a date for "when").
TYPED_DEPTH = 3
# When to answer at all (see supported); fitted by bench/fit_docs_qa.py on the fit half of wikiqa
# dev, at most 8% of its answerable questions abstaining (see bench/RESULTS.md).
ABSTAIN_WEIGHTS = {"coverage": 6.381, "similarity": 5.858}
ABSTAIN_BIAS = -7.746
ABSTAIN_BELOW = 0.461
_CITE = re.compile(r"\[(\d+)\]")
AnswerMethod = Literal["grounded", "free"]
#: Who picks a wh-answer among the evidence's pieces: a rule (pick_piece), or the model under a
#: Quote constraint. On wikiqa's fit half with the embedded 135M model the rule scored higher
#: (bench/RESULTS.md); a larger model may not, and a served one is only asked under "model".
Picker = Literal["rule", "model"]


class Source(BaseModel):
    """A retrieved chunk as the answer may cite it: ``[number]`` → file and page or section."""

    number: int
    path: str
    page: int | None
    heading: str
    chunk_id: str
    score: float
    text: str
    start: int = 0  # the chunk's character offset in its document's text

    def label(self) -> str:
        where = place_label(self.page, self.heading)
        return f"[{self.number}] {self.path}" + (f", {where}" if where else "")


class QuoteLocation(BaseModel):
    """The evidence an answer stands on: a sentence of one document, and exactly where it is."""

    text: str
    path: str
    page: int | None
    heading: str
    chunk_id: str
    start: int  # character offsets in the document's text (what the loader read from the file)
    end: int

    def label(self) -> str:
        where = place_label(self.page, self.heading)
        return f"{self.path}" + (f", {where}" if where else "") + f", characters {self.start}-{self.end}"


class DocsAnswer(BaseModel):
    question: str
    answer: str
    kind: str  # polar, time, number, name, other (agents/answer_spans.py)
    #: The sentence quoted as evidence, and the answer's own place in it (document offsets), when found.
    evidence: QuoteLocation | None = None
    answer_start: int | None = None
    answer_end: int | None = None
    #: The answer is byte-identical to the document at ``answer_start:answer_end`` (always so for a
    #: local model, which is held to the quote while decoding; a served model's reply is snapped to
    #: the nearest span on arrival, and is marked unverified when none is close).
    verified: bool = True
    cited: list[Source]
    sources: list[Source]
    found: bool
    retrieval_ms: float
    generation_ms: float
    prompt_tokens: int
    completion_tokens: int

    def render(self) -> str:
        """The answer as a reader sees it: the answer, then its quoted evidence and where it is
        (or, for wave 1's free answers, the cited sources)."""
        # Line breaks of hard-wrapped text are shown as spaces; the offsets point at the verbatim text.
        lines = [" ".join(self.answer.split()) + ("" if self.verified else "  (unverified: not found in the sources)")]
        if self.evidence is not None:
            lines += [f"  \u201c{' '.join(self.evidence.text.split())}\u201d", f"  {self.evidence.label()}"]
        else:
            lines += [f"  {source.label()}" for source in self.cited]
        return "\n".join(lines)


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
                 include: list[str] | None = None, index_url: str | None = None, pick: Picker = "rule") -> None:
        self.index = DocumentIndex(folder, index_dir, index_url=index_url)
        self.include = include
        self.model = queued(load_model(model, role=None if model is not None else "mini"))  # via its worker
        self.k = k
        self.max_tokens = max_tokens
        self.context_tokens = context_tokens
        self.pick = pick
        self._retriever: Retriever | None = None
        self._stems: dict[str, set[str]] = {}

    def update_index(self, on_progress: OnIndexProgress | None = None):
        """Index new and changed files (see tools/rag/index.py), telling ``on_progress`` how it
        goes; the retriever reopens afterwards."""
        stats = self.index.update(include=self.include, on_progress=on_progress)
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

    def ask(self, question: str, where: dict | None = None, method: AnswerMethod = "grounded",
            history: Sequence[Message | dict] = ()) -> DocsAnswer:
        """Retrieve, then answer (the two steps the docs-qa graph runs as nodes). ``history``: the
        conversation's earlier turns; in a follow-up that points back ("When was it built?") the
        pronoun is read as what an earlier question named (:func:`with_antecedent`)."""
        start = time.perf_counter()
        question = with_antecedent(question, history)
        hits = self.retriever.search(question, k=self.k, where=where)
        return self.answer(question, hits, retrieval_ms=(time.perf_counter() - start) * 1000, method=method)

    def answer(self, question: str, hits: list[Hit], retrieval_ms: float = 0.0,
               method: AnswerMethod = "grounded") -> DocsAnswer:
        """The answer to ``question`` from ``hits``: ``grounded`` (the module docstring), or
        ``free``, wave 1's cited sentence written under a regular expression (kept to compare)."""
        if method == "free":
            return self._free_answer(question, hits, retrieval_ms)
        start = time.perf_counter()
        kind = question_kind(re.split(r"(?<=\?)\s+", question.strip())[-1])  # a follow-up's own kind
        sources = self._sources(hits)
        evidence = self.retriever.evidence(question, hits)
        if not evidence or not supported(evidence[0]):
            return DocsAnswer(question=question, answer=NOT_FOUND, kind=kind.value, cited=[], sources=sources,
                              found=False, retrieval_ms=retrieval_ms,
                              generation_ms=(time.perf_counter() - start) * 1000, prompt_tokens=0,
                              completion_tokens=0)
        if kind is QuestionKind.POLAR:
            best = evidence[0]
            yes = self.polar_features(question, best).probability_yes() >= YES_THRESHOLD
            text, span, verified, usage = ("Yes." if yes else "No."), (best.document_start, best.document_end), \
                True, None
        else:
            best, pieces = self.answer_sentence(question, kind, evidence)
            if self.pick == "rule":
                a, b = pick_piece(best.text, pieces, kind)
                text, span, verified, usage = best.text[a:b], (best.document_start + a, best.document_start + b), \
                    True, None
            else:
                text, span, verified, usage = self._quote_answer(question, best, pieces)
        cited = next(s for s in sources if s.chunk_id == best.chunk.id)
        location = QuoteLocation(text=best.text, path=best.chunk.path, page=best.chunk.page,
                                 heading=best.chunk.heading, chunk_id=best.chunk.id, start=best.document_start,
                                 end=best.document_end)
        return DocsAnswer(question=question, answer=text, kind=kind.value, evidence=location,
                          answer_start=span[0] if span else None, answer_end=span[1] if span else None,
                          verified=verified, cited=[cited], sources=sources, found=True, retrieval_ms=retrieval_ms,
                          generation_ms=(time.perf_counter() - start) * 1000,
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0)

    def polar_features(self, question: str, evidence: Evidence) -> PolarFeatures:
        """The calibrated Yes/No signals (agents/polar.py) of ``question`` over ``evidence``."""
        heading = evidence.chunk.heading if evidence.chunk.heading != evidence.chunk.title else ""
        title = f"{evidence.chunk.title} {heading}"
        terms = self.retriever.terms
        return polar_features(question, evidence.text, title, evidence.coverage, evidence.similarity,
                              terms.question_terms(question), terms.terms(f"{title}\n{evidence.text}"))

    def _stem(self, word: str) -> set[str]:
        if word not in self._stems:
            self._stems[word] = self.retriever.terms.terms(word)
        return self._stems[word]

    def answer_sentence(self, question: str, kind: QuestionKind,
                         evidence: list[Evidence]) -> tuple[Evidence, list[tuple[int, int]]]:
        """The evidence sentence to answer from, and its candidate pieces: for a question that asks
        for a date, number or name, the dates, numbers or names of the best of the first
        ``TYPED_DEPTH`` sentences that has one outside the question's words; otherwise (or if none
        has) the pieces of the best sentence with any piece left."""
        wanted = self.retriever.terms.question_terms(question)
        for e in evidence[:TYPED_DEPTH]:
            typed = typed_spans(e.text, kind, wanted, self._stem)
            if typed:
                return e, typed
        for e in evidence:
            pieces = answer_pieces(e.text, wanted, self._stem, kind)
            if pieces:
                return e, pieces
        return evidence[0], [(0, len(evidence[0].text))]

    def _quote_answer(self, question: str, best: Evidence, pieces: list[tuple[int, int]]):
        """The model picks its answer among ``pieces`` of the sentence, held to quoting them
        verbatim (a served model's reply is snapped to them on arrival); (answer, document span,
        verified, usage)."""
        quote = Quote([best.text[a:b] for a, b in pieces])
        result = self.model.generate(quote_messages(question, best.text), constraint=quote,
                                     max_tokens=WH_MAX_TOKENS).result()
        said = result.text.strip()
        span = quote.snap(said) if said else QuoteSpan(0, 0, pieces[0][1] - pieces[0][0])
        if span is None:  # a served model wrote something no piece holds: shown, but not as a quote
            return said, None, False, result.usage
        offset = best.document_start + pieces[span.source][0]
        text = quote.sources[span.source][span.start:span.end]
        return text, (offset + span.start, offset + span.end), True, result.usage

    def _sources(self, hits: list[Hit]) -> list[Source]:
        return [Source(number=i, path=h.chunk.path, page=h.chunk.page, heading=h.chunk.heading, chunk_id=h.chunk.id,
                       score=h.score, text=h.chunk.text, start=h.chunk.start) for i, h in enumerate(hits, 1)]

    def _free_answer(self, question: str, hits: list[Hit], retrieval_ms: float) -> DocsAnswer:
        """Wave 1's answer: one sentence over the packed chunks, citing them by number."""
        messages, n = self._messages(question, hits)
        sources = self._sources(hits[:n])
        kind = question_kind(question)
        if not sources:
            return DocsAnswer(question=question, answer=NOT_FOUND, kind=kind.value, cited=[], sources=[],
                              found=False, retrieval_ms=retrieval_ms, generation_ms=0.0, prompt_tokens=0,
                              completion_tokens=0)
        start = time.perf_counter()
        constraint = answer_constraint(len(sources), polar=kind is QuestionKind.POLAR)
        result = self.model.generate(messages, constraint=constraint, max_tokens=self.max_tokens).result()
        numbers = sorted({int(m) for m in _CITE.findall(result.text)})
        return DocsAnswer(
            question=question, answer=result.text.strip(), kind=kind.value, cited=[sources[i - 1] for i in numbers],
            sources=sources, found=result.text.strip() != NOT_FOUND,
            retrieval_ms=retrieval_ms, generation_ms=(time.perf_counter() - start) * 1000,
            prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens)


def pick_piece(sentence: str, pieces: list[tuple[int, int]], kind: QuestionKind) -> tuple[int, int]:
    """The answer among the candidate pieces, by rule: for a date or a number the first one in the
    sentence (a sentence names the asked quantity before others it compares it with); for a name
    the one of most words, the first of equals; else the longest (what the question asks about is
    the sentence's main piece, and a longer piece loses less of a phrase answer). A name keeps no
    possessive "'s"."""
    if kind in (QuestionKind.TIME, QuestionKind.NUMBER):
        a, b = pieces[0]
    elif kind is QuestionKind.NAME:  # the name of most words ("James G. Blaine of Maine"), the first of equals
        a, b = max(pieces, key=lambda p: len(sentence[p[0]:p[1]].split()))
    else:
        a, b = max(pieces, key=lambda p: p[1] - p[0])
    if kind is QuestionKind.NAME and sentence[a:b].endswith(("'s", "\u2019s")) and b - a > 2:
        b -= 2
    return a, b


def quote_messages(question: str, evidence: str) -> list[Message]:
    """The prompt a wh-answer is quoted under: the one evidence sentence, then the question."""
    return [Message(role="system", content=WH_SYSTEM),
            Message(role="user", content=f"Evidence: {evidence}\n\nQuestion: {question}")]


def supported(evidence: Evidence) -> bool:
    """Whether the best evidence sentence speaks to the question at all: a logistic score over the
    share of the question's (IDF-weighted) content words it holds and its embedding similarity,
    fitted to tell answerable questions from the same questions with their article left out;
    below the threshold the answer is the not-found sentence rather than a guess from an
    unrelated passage."""
    z = ABSTAIN_BIAS + ABSTAIN_WEIGHTS["coverage"] * evidence.coverage + \
        ABSTAIN_WEIGHTS["similarity"] * evidence.similarity
    return 1.0 / (1.0 + math.exp(-z)) >= ABSTAIN_BELOW
