"""Speculative quoting: docs-qa quotes decoded with prompt-lookup speculation on and off.

    python bench/speculative_quoting.py [--questions 40] [--model embedded:transformers]

For wikiqa dev open questions (fit half) the docs-qa agent picks the evidence sentence and its
pieces as it does when answering; the quote is then generated twice per question, speculation on
and off alternately (A B A B, so both share the machine's load), greedy. Two prompts per question:
the agent's own (a short piece: what users get) and the whole evidence sentence as the only piece
(a long copy: where speculation has the most to take). Prints per prompt kind: tokens, forward
passes, accepted tokens per pass, median time on/off and their ratio, and whether every output
was identical on and off. Speculation runs only on backends whose wide pass is batch-invariant
(transformers; not int4 onnxruntime-genai, see Backend.batch_invariant).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from slmflow.agents.answer_spans import question_kind
from slmflow.agents.docs_qa import WH_MAX_TOKENS, DocsQA, quote_messages
from slmflow.evals.docs_qa import ANSWER_CHUNKS, WIKIQA_FILES, WikiQASuite
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Quote


def timed(model, messages, quote: Quote, speculate: bool):
    start = time.perf_counter()
    result = model.generate(messages, constraint=quote, max_tokens=WH_MAX_TOKENS * 2, speculate=speculate).result()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--model", default="embedded:transformers")
    args = parser.parse_args()
    suite = WikiQASuite(half="fit")
    model = load_model(args.model)
    qa = DocsQA(suite.data / "corpus", model, include=WIKIQA_FILES, k=ANSWER_CHUNKS)
    qa.update_index(progress=False)
    rows = [i.data for i in suite.items(None) if i.category == "open"][:args.questions]
    stats = {kind: {"on": [], "off": [], "tokens": 0, "passes": 0, "speculated": 0, "identical": 0, "n": 0}
             for kind in ("piece", "sentence")}
    for row in rows:
        question = row["question"]
        evidence = qa.retriever.evidence(question, qa.retriever.search(question, k=ANSWER_CHUNKS))
        if not evidence:
            continue
        best, pieces = qa.answer_sentence(question, question_kind(question), evidence)
        prompts = {"piece": Quote([best.text[a:b] for a, b in pieces]), "sentence": Quote([best.text])}
        for kind, quote in prompts.items():
            messages = quote_messages(question, best.text)
            timed(model, messages, quote, True)  # warm the prefix cache for both runs alike
            on_s, on = timed(model, messages, quote, True)
            off_s, off = timed(model, messages, quote, False)
            row_stats = stats[kind]
            row_stats["on"].append(on_s)
            row_stats["off"].append(off_s)
            row_stats["n"] += 1
            row_stats["identical"] += on.text == off.text
            row_stats["tokens"] += on.usage.completion_tokens
            row_stats["speculated"] += on.usage.speculated_tokens
            row_stats["passes"] += on.usage.completion_tokens - on.usage.speculated_tokens - on.usage.forced_tokens
    table = {}
    for kind, s in stats.items():
        on, off = statistics.median(s["on"]), statistics.median(s["off"])
        table[kind] = {"questions": s["n"], "identical_outputs": f"{s['identical']}/{s['n']}",
                       "tokens": s["tokens"], "forward_passes": s["passes"],
                       "tokens_per_pass": round(s["tokens"] / max(s["passes"], 1), 2),
                       "median_s_on": round(on, 4), "median_s_off": round(off, 4),
                       "speed_up_off_over_on": round(off / on, 2),
                       "total_s_on": round(sum(s["on"]), 2), "total_s_off": round(sum(s["off"]), 2)}
    print(json.dumps({"model": args.model, **table}, indent=2))


if __name__ == "__main__":
    main()
