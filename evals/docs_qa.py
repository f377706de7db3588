"""Suites for retrieval and document QA: ``docs-qa-wikiqa`` and ``retrieval-scifact``.

docs-qa-wikiqa indexes the 150 articles' clean text (``*.txt.clean``) with the docs-qa index and
scores, per question: recall@1/5/10 of the gold article among the retrieved chunks' files; and in
mode ``answer`` the cited answer of the docs-qa agent: exact match and token F1 (SQuAD
normalisation, best over the gold answers), yes/no accuracy, citation accuracy (cited files that
are gold documents), latency. retrieval-scifact writes the 5,183 abstracts as files into the cache,
indexes them, and scores nDCG@10 and Recall@10 per retrieval mode (hybrid, dense, BM25 alone).
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
import time
from pathlib import Path

from slmflow.evals.harness import EvalItem, ItemResult, find_shared_data
from slmflow.runtime.embedded import cache_root
from slmflow.tools.rag.index import DocumentIndex
from slmflow.tools.rag.retrieval import Retriever

WIKIQA_FILES = ["*.txt.clean"]


def normalise_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    return float(any(normalise_answer(prediction) == normalise_answer(a) for a in answers))


def token_f1(prediction: str, answers: list[str]) -> float:
    pred = normalise_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalise_answer(answer).split()
        common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _doc_id(path: str) -> str:
    """``S08/data/set3/a4.txt.clean`` → ``S08/data/set3/a4`` (the data's document ids)."""
    head, _, name = path.rpartition("/")
    return f"{head}/{name.split('.', 1)[0]}" if head else name.split(".", 1)[0]


def _strip_citations(text: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", text).strip()


class WikiQASuite:
    name = "docs-qa-wikiqa"
    modes = ["retrieval", "answer"]

    def __init__(self, data: Path | None = None, k: int = 10) -> None:
        self.data = find_shared_data("wikiqa", "qa_dev.jsonl", data)
        self.k = k
        self._qa = None

    def items(self, limit: int | None) -> list[EvalItem]:
        by_kind: dict[str, list[EvalItem]] = {"yes_no": [], "open": []}
        with (self.data / "qa_dev.jsonl").open(encoding="utf-8") as f:
            for row in map(json.loads, f):
                kind = "yes_no" if row["is_yes_no"] else "open"
                by_kind[kind].append(EvalItem(id=row["id"], category=kind, data=row))
        return [item for items in by_kind.values() for item in items[:limit]]

    def qa(self, model):
        """The docs-qa agent over the corpus, indexed on first use (incrementally)."""
        if self._qa is None:
            from slmflow.agents.docs_qa import DocsQA

            self._qa = DocsQA(self.data / "corpus", model, include=WIKIQA_FILES, k=3)
            self._qa.update_index()
        return self._qa

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        qa = self.qa(model)
        row = item.data
        gold = set(row["gold_doc_ids"])
        start = time.perf_counter()
        hits = qa.retriever.search(row["question"], k=self.k)
        latency = time.perf_counter() - start
        docs = [_doc_id(h.chunk.path) for h in hits]
        metrics = {f"recall@{n}": float(bool(gold & set(docs[:n]))) for n in (1, 5, 10)}
        if mode == "retrieval":
            return ItemResult(id=item.id, category=item.category, mode=mode, passed=bool(metrics["recall@5"]),
                              metrics=metrics, latency_s=latency, tokens=0, output="\n".join(docs[:5]))
        answer = qa.ask(row["question"])
        text = _strip_citations(answer.answer)
        metrics["exact_match"] = exact_match(text, row["answers"])
        metrics["f1"] = token_f1(text, row["answers"])
        if row["is_yes_no"]:
            said = text.split(",")[0].split(".")[0].strip().lower()
            metrics["yes_no_accuracy"] = float(said == normalise_answer(row["answers"][0]).split()[0])
        if answer.cited:
            metrics["citation_accuracy"] = sum(_doc_id(s.path) in gold for s in answer.cited) / len(answer.cited)
        passed = metrics.get("yes_no_accuracy", metrics["exact_match"]) == 1.0
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=passed, metrics=metrics,
                          latency_s=(answer.retrieval_ms + answer.generation_ms) / 1000,
                          tokens=answer.completion_tokens, output=answer.answer,
                          detail=json.dumps({"answers": row["answers"], "cited": [s.label() for s in answer.cited]}))


def ndcg_at(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


class SciFactSuite:
    """BEIR SciFact train claims against the 5,183 abstracts; one mode per retriever."""

    name = "retrieval-scifact"
    modes = ["hybrid", "dense", "bm25"]

    def __init__(self, data: Path | None = None) -> None:
        self.data = find_shared_data("scifact", "corpus.jsonl", data)
        self._retriever: Retriever | None = None

    def items(self, limit: int | None) -> list[EvalItem]:
        qrels: dict[str, set[str]] = collections.defaultdict(set)
        with (self.data / "qrels" / "train.tsv").open(encoding="utf-8") as f:
            next(f)
            for line in f:
                qid, doc, score = line.split("\t")
                if int(score) > 0:
                    qrels[qid].add(doc)
        items = []
        with (self.data / "queries_train.jsonl").open(encoding="utf-8") as f:
            for row in map(json.loads, f):
                if row["_id"] in qrels:
                    items.append(EvalItem(id=row["_id"], category="train",
                                          data={"query": row["text"], "relevant": sorted(qrels[row["_id"]])}))
        return items[:limit]

    def corpus_folder(self) -> Path:
        """The abstracts as one text file each (title, then text), written once into the cache."""
        folder = cache_root() / "eval-data" / "scifact-corpus"
        done = folder / ".complete"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with (self.data / "corpus.jsonl").open(encoding="utf-8") as f:
                for row in map(json.loads, f):
                    (folder / f"{row['_id']}.txt").write_text(f"{row['title']}\n\n{row['text']}\n", encoding="utf-8")
            done.touch()
        return folder

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            index = DocumentIndex(self.corpus_folder())
            index.update()
            self._retriever = Retriever(index)
        return self._retriever

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        start = time.perf_counter()
        hits = self.retriever.search(item.data["query"], k=40, mode=mode)
        latency = time.perf_counter() - start
        ranked: list[str] = []
        for hit in hits:  # chunks → documents, each at its best chunk's rank
            doc = hit.chunk.path.removesuffix(".txt")
            if doc not in ranked:
                ranked.append(doc)
        relevant = set(item.data["relevant"])
        metrics = {"ndcg@10": ndcg_at(ranked, relevant), "recall@10": len(relevant & set(ranked[:10])) / len(relevant)}
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=bool(relevant & set(ranked[:10])),
                          metrics=metrics, latency_s=latency, tokens=0, output=" ".join(ranked[:10]))
