"""Evidence first: the sentences inside the retrieved chunks, ranked by how well each answers the question.

A chunk is retrieved as a whole (200 embedder tokens), but an answer stands on one sentence of it.
Small models read the first lines of a prompt best and quote what is in front of them, so the
answering step gets the best sentences first, not whole chunks in retrieval order.

A sentence's score adds three signals, each in [0, 1]:

* ``coverage``: the share of the question's content words (stemmed, weighted by their IDF in the
  index) that the sentence or its document's title contains. A question made from a passage shares
  its rare words with that passage.
* ``similarity``: the embedder's cosine between question and sentence (paraphrases).
* ``prior``: the retrieval rank of the sentence's chunk (1 / rank), so the fused dense+BM25 ranking
  keeps a say.

Each :class:`Evidence` keeps its character offsets in the chunk and in the document, so a quote
taken from it can be located exactly (file, page or section, characters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from pydantic import BaseModel
from slmflow.tools.rag.chunking import Chunk, split_sentences

# Weights of the three signals; fixed in code (see bench/RESULTS.md for the split they were checked on).
COVERAGE_WEIGHT = 1.0
SIMILARITY_WEIGHT = 0.5
PRIOR_WEIGHT = 0.15
_MIN_SENTENCE_CHARS = 12
UNSEEN_IDF = 1.0
# Words that shape a question but are not what it is about, as the BM25 tokenizer leaves them
# (its English stop words keep "what", "did", "how", ...): counted, they would make any sentence
# with "did" in it cover part of every "Did ...?" question.
_QUESTION_WORDS = frozenset("what do doe did how which who whom whose when where whi can could would should "
                            "has have had mani much also".split())


class Evidence(BaseModel):
    """One sentence of a retrieved chunk, with its score and exact location."""

    text: str
    chunk: Chunk
    rank: int  # the chunk's position in the retrieval ranking, from 1
    start: int  # character offsets of the sentence inside ``chunk.text``
    end: int
    coverage: float
    similarity: float
    score: float

    @property
    def document_start(self) -> int:
        """Offset of the sentence in the whole document's text (the chunk's own offset added)."""
        return self.chunk.start + self.start

    @property
    def document_end(self) -> int:
        return self.chunk.start + self.end


class TermWeights:
    """Stemmed content words and their IDF over an index's chunks (BM25's tokenizer: English
    stop words removed, Snowball stemmer), for weighting a question's words by how rare they are."""

    def __init__(self, tokenize: Callable[[list[str]], list[list[str]]], documents: Iterable[Iterable[str]],
                 n_documents: int) -> None:
        """``documents``: each chunk's terms as ``tokenize`` gives them."""
        self._tokenize = tokenize
        frequency: dict[str, int] = {}
        for terms in documents:
            for term in set(terms):
                frequency[term] = frequency.get(term, 0) + 1
        self._n = max(n_documents, 1)
        self._df = frequency

    def terms(self, text: str) -> set[str]:
        return set(self._tokenize([text])[0]) if text.strip() else set()

    def question_terms(self, question: str) -> set[str]:
        """The content words of a question: its terms less the words that only make it a question."""
        return self.terms(question) - _QUESTION_WORDS

    def idf(self, term: str) -> float:
        """BM25's IDF, floored at a small positive weight so a word in every chunk still counts a
        little. A word in no chunk at all weighs ``UNSEEN_IDF``: no sentence can hold it, so the
        rarest weight would only say the stemmer missed a form ("began" for "begin"), not that
        the word matters most; it still counts, so a question about what no document mentions
        is covered poorly by every sentence."""
        df = self._df.get(term, 0)
        if df == 0:
            return UNSEEN_IDF
        return max(math.log(1 + (self._n - df + 0.5) / (df + 0.5)), 0.05)


def rank_evidence(question: str, chunks: Sequence[Chunk], weights: TermWeights,
                  embed: Callable[[list[str]], np.ndarray] | None = None,
                  query_vector: np.ndarray | None = None) -> list[Evidence]:
    """The sentences of ``chunks`` (in retrieval order), best first. ``embed`` (texts → unit
    vectors) and ``query_vector`` add the similarity signal; without them it counts 0."""
    wanted = weights.question_terms(question)
    total = sum(weights.idf(t) for t in wanted) or 1.0
    candidates: list[tuple[Chunk, int, int, int, float]] = []
    for rank, chunk in enumerate(chunks, start=1):
        title_terms = weights.terms(f"{chunk.title} {chunk.heading}")
        for start, end in split_sentences(chunk.text):
            if end - start < _MIN_SENTENCE_CHARS:
                continue
            found = (weights.terms(chunk.text[start:end]) | title_terms) & wanted
            coverage = sum(weights.idf(t) for t in found) / total
            candidates.append((chunk, rank, start, end, coverage))
    if not candidates:
        return []
    similarity = np.zeros(len(candidates), dtype=np.float32)
    if embed is not None and query_vector is not None:
        vectors = embed([c.text[a:b] for c, _, a, b, _ in candidates])
        similarity = np.clip(vectors @ np.asarray(query_vector, dtype=np.float32), 0.0, 1.0)
    ranked = [
        Evidence(text=chunk.text[a:b], chunk=chunk, rank=rank, start=a, end=b, coverage=coverage,
                 similarity=float(sim),
                 score=COVERAGE_WEIGHT * coverage + SIMILARITY_WEIGHT * float(sim) + PRIOR_WEIGHT / rank)
        for (chunk, rank, a, b, coverage), sim in zip(candidates, similarity, strict=True)
    ]
    ranked.sort(key=lambda e: -e.score)
    return ranked
