"""The routing suite: requests whose right role is known, and what routing them costs.

Built from the shared data: wikiqa questions (→ docs), BFCL simple_python questions (→ tools),
wikiqa questions sent with an attached page image (→ vision: the attachment is a hard signal, so
no model is asked and these measure only that the signal wins), and arithmetic word problems
generated from a fixed seed (→ reasoning, the moe role).
Two modes: ``signals`` routes as the assistant graph does, with the hard signals of an assistant
that has the wikiqa articles as its documents folder and, as its tools, the built-ins plus the BFCL
functions of the suite's tool requests (the same for every request); ``choice`` asks the model
alone. Scored: routing accuracy per category, and the cost of the decision (ms, generated tokens).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from slmflow.evals.docs_qa import WIKIQA_FILES
from slmflow.evals.harness import EvalItem, ItemResult, find_shared_data
from slmflow.graphs.assistant import RouteSignals, decide_route
from slmflow.runtime.tool_calling import ToolSpec
from slmflow.runtime.tool_selection import ToolSelector
from slmflow.tools import calculator, current_time
from slmflow.tools.rag.index import OnIndexProgress

_PROBLEMS = [
    "{a} people share {b} sweets equally. How many sweets does each person get and how many are left over?",
    "A shop sells pens at {a} cents each. How much do {b} pens cost, and what change is there from {c} dollars?",
    "A train travels {a} km in {b} hours. At the same speed, how far does it go in {c} hours?",
    "Sam is {a} years old and his sister is {b} years older. How old will she be in {c} years?",
]


class RoutingSuite:
    name = "routing"
    modes = ["signals", "choice"]

    def __init__(self, data: Path | None = None) -> None:
        self.wikiqa = find_shared_data("wikiqa", "qa_dev.jsonl", data / "wikiqa" if data else None)
        self.bfcl = find_shared_data("bfcl", "BFCL_v4_simple_python.json", data / "bfcl" if data else None)
        self.tools: list = [calculator, current_time]
        self._selector: ToolSelector | None = None
        self._docs = None

    def items(self, limit: int | None) -> list[EvalItem]:
        n = limit or 50
        with (self.wikiqa / "qa_dev.jsonl").open(encoding="utf-8") as f:
            wiki = [json.loads(line) for line in f]
        with (self.bfcl / "BFCL_v4_simple_python.json").open(encoding="utf-8") as f:
            bfcl = [json.loads(line) for line in f]
        rng = random.Random(0)
        items = [EvalItem(id=q["id"], category="docs", data={"request": q["question"], "want": "docs"})
                 for q in wiki[:n]]
        items += [EvalItem(id=q["id"], category="tools", data={"request": q["question"][0][0]["content"],
                                                               "want": "tools"}) for q in bfcl[:n]]
        self.tools = [calculator, current_time, *(ToolSpec(name=f["name"], description=f["description"])
                                                  for q in bfcl[:n] for f in q["function"])]
        items += [EvalItem(id=f"vision_{q['id']}", category="vision",
                           data={"request": f"In this scanned page: {q['question']}", "image": True, "want": "vision"})
                  for q in wiki[n:2 * n]]
        items += [EvalItem(id=f"problem_{i}", category="reasoning",
                           data={"request": rng.choice(_PROBLEMS).format(a=rng.randint(2, 90), b=rng.randint(2, 90),
                                                                        c=rng.randint(2, 9)), "want": "reasoning"})
                  for i in range(n)]
        return items

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        start = time.perf_counter()
        if item.data.get("image"):  # an attachment is a hard signal: the graph plans a vision step
            route, tokens = "vision", 0
        else:
            signals = self._signals(item.data["request"], model) if mode == "signals" else None
            route, usage, _ = decide_route(model, item.data["request"], signals)
            tokens = usage.completion_tokens if usage else 0
        latency = time.perf_counter() - start
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=route == item.data["want"],
                          metrics={"route_ms": latency * 1000, "route_tokens": float(tokens)}, latency_s=latency,
                          tokens=tokens, output=route)

    def prepare(self, model, modes: list[str], on_progress: OnIndexProgress | None = None) -> None:
        """The signals mode's documents folder (the wikiqa articles, all of them: the docs signal is
        retrieval among them) indexed, and the tool selector built, before any item is timed."""
        if "signals" in modes and self._selector is None:
            from slmflow.agents.docs_qa import DocsQA

            self._selector = ToolSelector()
            self._docs = DocsQA(self.wikiqa / "corpus", model, include=WIKIQA_FILES)
            self._docs.update_index(on_progress=on_progress)

    def _signals(self, request: str, model) -> RouteSignals:
        self.prepare(model, ["signals"])  # run() called without the harness
        return RouteSignals.measure(request, self._selector, self.tools, self._docs.retriever)
