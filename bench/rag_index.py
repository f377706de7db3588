"""Indexing throughput, incremental re-runs, retrieval quality and query latency on the wikiqa
corpus (150 articles), per embedder precision, in one run.

For each precision (``--precisions``, default fp32 and bf16) and round, alternated (A B A B): a
first full index of the articles' clean text from nothing (chunks/s), a re-run with nothing
changed (its time as a fraction of the first), then hybrid retrieval (k=10) over ``--questions``
dev questions: recall@5 of the gold article and the query latency. The last round also changes
one file and re-runs (how many files were re-embedded). It works on a temporary copy of the corpus
(clean text only), so the shared data is never touched. Prints one JSON object: per precision the
rates of every round and their median, recall@5, query p50/p95, and the ratios against the first
precision (the baseline).

    python bench/rag_index.py [--questions 200] [--precisions fp32,bf16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from slmflow.evals.docs_qa import WIKIQA_FILES, recalls_at
from slmflow.evals.harness import find_shared_data
from slmflow.runtime.embeddings import Embedder, default_embedder_path
from slmflow.tools.rag.index import DocumentIndex
from slmflow.tools.rag.retrieval import Retriever


def one_round(corpus: Path, index_dir: Path, embedder: Embedder, questions: list[dict], touch: bool) -> dict:
    index = DocumentIndex(corpus, index_dir, embedder=embedder)
    first = index.update(include=WIKIQA_FILES)
    unchanged = index.update(include=WIKIQA_FILES)
    out = {"chunks": first.chunks_added, "first_run_s": first.seconds, "chunks_per_s": first.chunks_per_s,
           "unchanged_rerun_ratio": unchanged.seconds / first.seconds,
           "unchanged_rerun_files_embedded": unchanged.files_embedded}
    retriever = Retriever(index)
    retriever.search(questions[0]["question"], k=10)  # first query loads lazily initialised state
    latencies, recall5 = [], []
    for q in questions:
        start = time.perf_counter()
        hits = retriever.search(q["question"], k=10)
        latencies.append((time.perf_counter() - start) * 1000)
        recall5.append(recalls_at(hits, q["gold_doc_ids"])["recall@5"])
    latencies.sort()
    out |= {"recall@5": statistics.fmean(recall5), "query_p50_ms": statistics.median(latencies),
            "query_p95_ms": latencies[int(0.95 * (len(latencies) - 1))]}
    if touch:
        one = next(corpus.rglob("*.txt.clean"))
        original = one.read_text(encoding="utf-8")
        one.write_text(original + "\n\nAn added closing paragraph.\n", encoding="utf-8")
        touched = index.update(include=WIKIQA_FILES)
        one.write_text(original, encoding="utf-8")
        out |= {"one_file_changed_files_embedded": touched.files_embedded, "one_file_changed_s": touched.seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--precisions", default="fp32,bf16", help="the first is the baseline")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = find_shared_data("wikiqa", "qa_dev.jsonl", args.data)
    with (data / "qa_dev.jsonl").open(encoding="utf-8") as f:
        questions = [json.loads(line) for line in f][: args.questions]
    precisions = args.precisions.split(",")
    embedders = {p: Embedder(default_embedder_path(), precision=p) for p in precisions}
    runs: dict[str, list[dict]] = {p: [] for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        shutil.copytree(data / "corpus", corpus, ignore=shutil.ignore_patterns("*.htm"))
        for r in range(args.rounds):
            for p in precisions:  # alternated, each from nothing
                runs[p].append(one_round(corpus, Path(tmp) / f"index-{p}-{r}", embedders[p], questions,
                                         touch=r == args.rounds - 1))
    report: dict = {"questions": len(questions), "rounds": args.rounds}
    for p, rs in runs.items():
        report[p] = {"chunks": rs[0]["chunks"], "chunks_per_s": [round(x["chunks_per_s"], 1) for x in rs],
                     "median_chunks_per_s": round(statistics.median(x["chunks_per_s"] for x in rs), 1),
                     "first_run_s": [round(x["first_run_s"], 1) for x in rs],
                     "unchanged_rerun_ratio": round(max(x["unchanged_rerun_ratio"] for x in rs), 4),
                     "recall@5": [round(x["recall@5"], 4) for x in rs],
                     "query_p50_ms": round(statistics.median(x["query_p50_ms"] for x in rs), 1),
                     "query_p95_ms": round(statistics.median(x["query_p95_ms"] for x in rs), 1),
                     "one_file_changed_files_embedded": rs[-1]["one_file_changed_files_embedded"]}
    base = precisions[0]
    for p in precisions[1:]:
        report[f"{p}_vs_{base}"] = {
            "chunks_per_s_ratio": round(report[p]["median_chunks_per_s"] / report[base]["median_chunks_per_s"], 2),
            "recall@5_difference": round(report[p]["recall@5"][-1] - report[base]["recall@5"][-1], 4)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
