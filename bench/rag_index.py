"""Indexing throughput, incremental re-runs and query latency on the wikiqa corpus (150 articles).

Runs, in one process: a first full index of the articles' clean text (files/s, chunks/s); a re-run
with nothing changed (its time as a fraction of the first); a re-run after one file's content
changed (how many files were re-embedded); then retrieval latency (hybrid search, k=10) over dev
questions. It works on a temporary copy of the corpus (clean text only), so changing a file never
touches the shared data, and the index is built from nothing each time.

    python bench/rag_index.py [--questions 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from slmflow.evals.docs_qa import WIKIQA_FILES
from slmflow.evals.harness import find_shared_data
from slmflow.tools.rag.index import DocumentIndex
from slmflow.tools.rag.retrieval import Retriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    data = find_shared_data("wikiqa", "qa_dev.jsonl", args.data)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        shutil.copytree(data / "corpus", corpus, ignore=shutil.ignore_patterns("*.htm"))
        index = DocumentIndex(corpus, Path(tmp) / "index")
        first = index.update(include=WIKIQA_FILES)
        unchanged = index.update(include=WIKIQA_FILES, progress=False)
        one = next(corpus.rglob("*.txt.clean"))
        one.write_text(one.read_text(encoding="utf-8") + "\n\nAn added closing paragraph.\n", encoding="utf-8")
        touched = index.update(include=WIKIQA_FILES, progress=False)

        start = time.perf_counter()
        retriever = Retriever(index)
        open_s = time.perf_counter() - start
        with (data / "qa_dev.jsonl").open(encoding="utf-8") as f:
            questions = [json.loads(line)["question"] for line in f][: args.questions]
        retriever.search(questions[0], k=10)  # first query loads lazily initialised state
        latencies = []
        for q in questions:
            t = time.perf_counter()
            retriever.search(q, k=10)
            latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    print(json.dumps({
        "files": first.files_embedded, "chunks": first.chunks_added, "first_run_s": round(first.seconds, 1),
        "files_per_s": round(first.files_per_s, 2), "chunks_per_s": round(first.chunks_per_s, 1),
        "unchanged_rerun_s": round(unchanged.seconds, 3),
        "unchanged_rerun_ratio": round(unchanged.seconds / first.seconds, 4),
        "unchanged_rerun_files_embedded": unchanged.files_embedded,
        "one_file_changed_files_embedded": touched.files_embedded, "one_file_changed_s": round(touched.seconds, 2),
        "retriever_open_s": round(open_s, 2), "queries": len(latencies),
        "query_p50_ms": round(statistics.median(latencies), 1),
        "query_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
    }, indent=1))


if __name__ == "__main__":
    main()
