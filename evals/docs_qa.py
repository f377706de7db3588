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
import hashlib
import json
import math
import re
import string
import threading
import time
from pathlib import Path
from typing import Literal

from slmflow.evals.harness import find_shared_data, pick_split
from slmflow.evals.results import EvalItem, ItemResult
from slmflow.runtime.embedded import cache_root
from slmflow.tools.rag.index import DocumentIndex
from slmflow.tools.rag.retrieval import Retriever

WIKIQA_FILES = ["*.txt.clean"]
#: The question files, one per split (qa_dev.jsonl here; the held-out half has its own).
WIKIQA_QUESTIONS = "qa_*.jsonl"
#: Chunks the answering step ranks sentences in.
ANSWER_CHUNKS = 5


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


def wikiqa_doc_id(path: str) -> str:
    """``S08/data/set3/a4.txt.clean`` → ``S08/data/set3/a4`` (the data's document ids)."""
    head, _, name = path.rpartition("/")
    return f"{head}/{name.split('.', 1)[0]}" if head else name.split(".", 1)[0]


def recalls_at(hits, gold_doc_ids: list[str]) -> dict[str, float]:
    """recall@1/5/10: whether a gold article is among the first n hits' files."""
    gold = set(gold_doc_ids)
    docs = [wikiqa_doc_id(h.chunk.path) for h in hits]
    return {f"recall@{n}": float(bool(gold & set(docs[:n]))) for n in (1, 5, 10)}


def _strip_citations(text: str) -> str:
    return re.sub(r"\s*\[\d+\]", "", text).strip()


Half = Literal["all", "fit", "report"]


def wikiqa_questions(folder: Path, split: str) -> Path:
    return Path(folder) / WIKIQA_QUESTIONS.replace("*", split)


def wikiqa_half(row: dict) -> str:
    """``fit`` or ``report``: the half of the dev questions a row belongs to, by its article (all
    revisions of one article fall in one half). Constants of the docs-qa method are fitted on
    ``fit`` (bench/fit_docs_qa.py) and reported on ``report``."""
    digest = hashlib.sha1(row["article_title"].encode("utf-8")).digest()
    return "fit" if digest[0] % 2 == 0 else "report"


def said_yes_no(text: str) -> str:
    """The first word of an answer, lower-cased without punctuation ("Yes, he did." → "yes")."""
    words = normalise_answer(text).split()
    return words[0] if words else ""


class WikiQASuite:
    """Modes: ``retrieval`` (recall@k of the gold article); ``answer`` (the grounded docs-qa
    answer); ``answer-model`` (the same, the model picking the wh-answer's piece);
    ``answer-free`` (wave 1's free cited sentence, to compare in the same run); ``abstain`` (the same questions with every gold article left out of retrieval: the right
    answer is the not-found one).

    ``split`` picks the question file (``qa_SPLIT.jsonl``: dev here); ``half`` the half of its
    questions (:func:`wikiqa_half`). Baselines: always "yes" on the polar questions, always
    abstaining, and BM25 alone for recall@k."""

    name = "docs-qa-wikiqa"
    modes = ["retrieval", "answer"]
    extra_modes = ["answer-model", "answer-free", "abstain"]

    def __init__(self, data: Path | None = None, k: int = 10, split: str | None = None, half: Half = "all") -> None:
        self.data = find_shared_data("wikiqa", "corpus", data)
        self.k = k
        self.split = pick_split(self.data, WIKIQA_QUESTIONS, split)
        self.half = half
        self._qa = None
        self._lock = threading.Lock()

    def data_files(self) -> list[Path]:
        return [wikiqa_questions(self.data, self.split)]

    def settings(self) -> dict:
        return {"split": self.split, "half": self.half, "k": self.k}

    def items(self, limit: int | None) -> list[EvalItem]:
        by_kind: dict[str, list[EvalItem]] = {"yes_no": [], "open": []}
        with wikiqa_questions(self.data, self.split).open(encoding="utf-8") as f:
            for row in map(json.loads, f):
                if self.half != "all" and wikiqa_half(row) != self.half:
                    continue
                kind = "yes_no" if row["is_yes_no"] else "open"
                by_kind[kind].append(EvalItem(id=row["id"], category=kind, data=row))
        return [item for items in by_kind.values() for item in items[:limit]]

    def prepare(self, model, modes: list[str], on_progress=None) -> None:
        """The corpus indexed before any item is timed, with its progress shown."""
        self.qa(model, on_progress)

    def qa(self, model, on_progress=None):
        """The docs-qa agent over the corpus, indexed on first use (incrementally); the lock keeps
        concurrent items from building it twice."""
        with self._lock:
            if self._qa is None:
                from slmflow.agents.docs_qa import DocsQA

                qa = DocsQA(self.data / "corpus", model, include=WIKIQA_FILES, k=ANSWER_CHUNKS)
                qa.update_index(on_progress=on_progress)
                self._qa = qa
        return self._qa

    def baselines(self, items: list[EvalItem]) -> dict[str, dict[str, list[float]]]:
        """Always "yes" on the polar questions; always abstaining (the not-found answer); BM25
        alone for recall@k once the index is built."""
        polar = [i for i in items if i.category == "yes_no"]
        yes = [float(said_yes_no(i.data["answers"][0]) == "yes") for i in polar]
        out = {"always yes": {"yes_no_accuracy": yes, "accuracy/yes_no": yes},
               "always abstain": {"abstained": [1.0] * len(items), "exact_match": [0.0] * (len(items) - len(polar)),
                                  "accuracy/all": [0.0] * len(items)}}
        if self._qa is not None:
            recalls: dict[str, list[float]] = collections.defaultdict(list)
            for item in items:
                hits = self._qa.retriever.search(item.data["question"], k=self.k, mode="bm25")
                for key, value in recalls_at(hits, item.data["gold_doc_ids"]).items():
                    recalls[key].append(value)
            out["bm25 alone"] = dict(recalls)
        return out

    def gold_paths(self, row: dict) -> list[str]:
        """The indexed paths of a row's gold articles (every revision), for leaving them out."""
        return [f"{doc}.txt.clean" for doc in row["gold_doc_ids"]]

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        qa = self.qa(model)
        row = item.data
        if mode == "retrieval":
            return self._retrieval(item, qa)
        where = {"path": {"$nin": self.gold_paths(row)}} if mode == "abstain" else None
        qa.pick = "model" if mode == "answer-model" else "rule"
        answer = qa.ask(row["question"], where=where, method="free" if mode == "answer-free" else "grounded")
        latency = (answer.retrieval_ms + answer.generation_ms) / 1000
        detail = {"answers": row["answers"], "cited": [s.label() for s in answer.cited],
                  "evidence": answer.evidence.text if answer.evidence else None}
        if mode == "abstain":
            return ItemResult(id=item.id, category=item.category, mode=mode, passed=not answer.found,
                              metrics={"abstained": float(not answer.found)}, latency_s=latency,
                              tokens=answer.completion_tokens, output=answer.answer, detail=json.dumps(detail))
        metrics = answer_metrics(row, answer)
        passed = metrics.get("yes_no_accuracy", metrics.get("exact_match", 0.0)) == 1.0
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=passed, metrics=metrics,
                          latency_s=latency, tokens=answer.completion_tokens, output=answer.answer,
                          detail=json.dumps(detail))

    def _retrieval(self, item: EvalItem, qa) -> ItemResult:
        start = time.perf_counter()
        hits = qa.retriever.search(item.data["question"], k=self.k)
        latency = time.perf_counter() - start
        metrics = recalls_at(hits, item.data["gold_doc_ids"])
        return ItemResult(id=item.id, category=item.category, mode="retrieval", passed=bool(metrics["recall@5"]),
                          metrics=metrics, latency_s=latency, tokens=0,
                          output="\n".join(wikiqa_doc_id(h.chunk.path) for h in hits[:5]))

    @staticmethod
    def derived(row: dict[str, float]) -> dict[str, float]:
        """Balanced yes/no accuracy, the mean of the recall of each gold answer."""
        if "yes_recall" in row and "no_recall" in row:
            return {"yes_no_balanced_accuracy": (row["yes_recall"] + row["no_recall"]) / 2}
        return {}


def answer_metrics(row: dict, answer) -> dict[str, float]:
    """One answer's scores. Open questions: exact match and token F1 (not-found scores 0), and
    whether the answer is a verbatim span of the cited chunk; polar questions: accuracy, and
    recall of the gold answer's side; both: citation accuracy, abstention."""
    gold = set(row["gold_doc_ids"])
    text = _strip_citations(answer.answer)
    metrics = {"abstained": float(not answer.found)}
    if row["is_yes_no"]:
        truth = said_yes_no(row["answers"][0])
        right = float(answer.found and said_yes_no(text) == truth)
        metrics["yes_no_accuracy"] = right
        metrics[f"{truth}_recall"] = right
    else:
        metrics["exact_match"] = exact_match(text, row["answers"]) if answer.found else 0.0
        metrics["f1"] = token_f1(text, row["answers"]) if answer.found else 0.0
    if answer.cited:
        metrics["citation_accuracy"] = sum(wikiqa_doc_id(s.path) in gold for s in answer.cited) / len(answer.cited)
    if answer.found and answer.evidence is not None:
        metrics["quote_verbatim"] = float(quotes_verbatim(answer))
    return metrics


def quotes_verbatim(answer) -> bool:
    """Whether the evidence sentence, and a wh-answer, are the cited chunk's text at their offsets."""
    chunk = answer.cited[0]

    def at(start: int, end: int) -> str:
        return chunk.text[start - chunk.start:end - chunk.start]

    evidence_ok = at(answer.evidence.start, answer.evidence.end) == answer.evidence.text
    if answer.kind == "polar":
        return evidence_ok
    return evidence_ok and answer.answer_start is not None and at(answer.answer_start, answer.answer_end) == \
        answer.answer


def ndcg_at(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


class SciFactSuite:
    """BEIR SciFact claims of one split (``qrels/SPLIT.tsv``: train here) against the 5,183
    abstracts; one mode per retriever, BM25 alone among them as the baseline the others must
    beat. Each item's category is its split."""

    name = "retrieval-scifact"
    modes = ["hybrid", "dense", "bm25"]

    def __init__(self, data: Path | None = None, split: str | None = None) -> None:
        self.data = find_shared_data("scifact", "corpus.jsonl", data)
        self.split = pick_split(self.data / "qrels", "*.tsv", split)
        self._retriever: Retriever | None = None

    def queries_file(self) -> Path:
        """queries_SPLIT.jsonl where the data has one, else BEIR's queries.jsonl."""
        own = self.data / f"queries_{self.split}.jsonl"
        return own if own.exists() else self.data / "queries.jsonl"

    def data_files(self) -> list[Path]:
        return [self.data / "qrels" / f"{self.split}.tsv", self.queries_file(), self.data / "corpus.jsonl"]

    def settings(self) -> dict:
        return {"split": self.split}

    def items(self, limit: int | None) -> list[EvalItem]:
        qrels: dict[str, set[str]] = collections.defaultdict(set)
        with (self.data / "qrels" / f"{self.split}.tsv").open(encoding="utf-8") as f:
            next(f)
            for line in f:
                qid, doc, score = line.split("\t")
                if int(score) > 0:
                    qrels[qid].add(doc)
        items = []
        with self.queries_file().open(encoding="utf-8") as f:
            for row in map(json.loads, f):
                if row["_id"] in qrels:
                    items.append(EvalItem(id=row["_id"], category=self.split,
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
