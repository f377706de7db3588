"""Hybrid retrieval: dense (Chroma, cosine) and BM25 (bm25s) rankings fused by reciprocal rank.

Dense vectors find paraphrases, BM25 finds rare exact terms (names, numbers, gene symbols); RRF
(score = sum of 1 / (60 + rank)) combines the two without calibrating their scores against each
other. The BM25 index is built in memory from the chunks in Chroma when the retriever opens.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import BaseModel
from slmflow.tools.rag.chunking import Chunk
from slmflow.tools.rag.evidence import Evidence, TermWeights, rank_evidence
from slmflow.tools.rag.index import DocumentIndex, chunks_from_query

RRF_K = 60
Mode = Literal["hybrid", "dense", "bm25"]


class Hit(BaseModel):
    chunk: Chunk
    score: float
    dense_rank: int | None = None
    bm25_rank: int | None = None


def _bm25s():
    """bm25s, imported on first use; it sets its own logger to DEBUG on import, which would print
    under any logging setup, so the level is put back here."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _tokenize(texts: list[str], as_ids: bool = True):
    import Stemmer

    bm25s = _bm25s()

    return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=as_ids,
                          show_progress=False)


def _matches(chunk: Chunk, where: dict | None) -> bool:
    """Chroma's ``where`` semantics on one chunk: a value, or ``{"$in": [...]}`` / ``{"$nin": [...]}``."""
    def holds(value, wanted) -> bool:
        if isinstance(wanted, dict) and "$in" in wanted:
            return value in wanted["$in"]
        if isinstance(wanted, dict) and "$nin" in wanted:
            return value not in wanted["$nin"]
        return value == wanted

    return not where or all(holds(getattr(chunk, key, None), value) for key, value in where.items())


class Retriever:
    """Top-k chunks of a :class:`DocumentIndex` for a query."""

    def __init__(self, index: DocumentIndex, candidates: int = 50) -> None:
        bm25s = _bm25s()
        self.index = index
        self.candidates = candidates
        self.corpus = index.all_chunks()
        self._position = {c.id: i for i, c in enumerate(self.corpus)}
        self.bm25 = bm25s.BM25()
        tokenized = _tokenize([c.embedding_text() for c in self.corpus]) if self.corpus else None
        if tokenized is not None:
            self.bm25.index(tokenized, show_progress=False)
        names = {i: term for term, i in tokenized.vocab.items()} if tokenized is not None else {}
        self.terms = TermWeights(lambda texts: _tokenize(texts, as_ids=False),
                                 ([names[i] for i in ids] for ids in (tokenized.ids if tokenized else [])),
                                 len(self.corpus))

    def search(self, query: str, k: int = 5, mode: Mode = "hybrid", where: dict | None = None) -> list[Hit]:
        """The ``k`` best chunks; ``where`` keeps only chunks whose fields equal the given values
        (e.g. ``{"path": "guide.md"}``), or are (not) among them (``{"path": {"$nin": [...]}}``)."""
        if not self.corpus or not query.strip():
            return []
        rankings: dict[str, dict[str, int]] = {}
        if mode in ("hybrid", "dense"):
            rankings["dense"] = self._dense(query, where)
        if mode in ("hybrid", "bm25"):
            rankings["bm25"] = self._bm25(query, where)
        fused: dict[str, float] = {}
        for ranks in rankings.values():
            for cid, rank in ranks.items():
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank)
        best = sorted(fused.items(), key=lambda kv: -kv[1])[:k]
        return [Hit(chunk=self.corpus[self._position[cid]], score=score, dense_rank=rankings.get("dense", {}).get(cid),
                    bm25_rank=rankings.get("bm25", {}).get(cid)) for cid, score in best]

    def evidence(self, query: str, hits: list[Hit]) -> list[Evidence]:
        """The sentences of ``hits``' chunks, best evidence for ``query`` first (tools/rag/evidence.py)."""
        embedder = self.index.embedder
        return rank_evidence(query, [h.chunk for h in hits], self.terms, embedder.embed,
                             embedder.embed_query(query) if hits else None)

    def relevance(self, query: str) -> float:
        """Cosine similarity of the chunk nearest to ``query`` (0.0 for an empty corpus): unlike
        fused ranks, comparable across queries, so a router can ask whether the documents speak
        to a request at all."""
        if not self.corpus or not query.strip():
            return 0.0
        found = self.index.chunks.query(query_embeddings=[self.index.embedder.embed_query(query)], n_results=1,
                                        include=["distances"])
        return 1.0 - float(found["distances"][0][0])  # the collection's space is cosine

    def _dense(self, query: str, where: dict | None) -> dict[str, int]:
        vector = [self.index.embedder.embed_query(query)]
        found = self.index.chunks.query(query_embeddings=vector, n_results=min(self.candidates, len(self.corpus)),
                                        where=where or None, include=["documents", "metadatas"])
        chunks = chunks_from_query(found["ids"][0], found["documents"][0], found["metadatas"][0])
        return {c.id: rank for rank, c in enumerate(chunks, start=1)}

    def _bm25(self, query: str, where: dict | None) -> dict[str, int]:
        mask = None
        if where:
            mask = np.array([_matches(c, where) for c in self.corpus], dtype=np.float32)
        tokens = [[t for t in _tokenize([query], as_ids=False)[0] if t in self.bm25.vocab_dict]]
        if not tokens[0]:
            return {}
        n = min(self.candidates, len(self.corpus))
        docs, scores = self.bm25.retrieve(tokens, k=n, show_progress=False, weight_mask=mask)
        return {self.corpus[int(d)].id: rank for rank, (d, s) in enumerate(zip(docs[0], scores[0], strict=True), 1)
                if s > 0}
