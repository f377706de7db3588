"""The routing suite: requests whose right role is known, and what routing them costs.

Built from the shared data: wikiqa questions (→ docs), BFCL simple_python questions (→ tools) and
arithmetic word problems drawn from ``--seed`` (→ reasoning, the moe role). A request sent with an
attachment is routed to vision by the attachment alone, so no such category is scored: it could
not fail.
Two modes: ``signals`` routes as the assistant graph does, with the hard signals of an assistant
that has the wikiqa articles as its documents folder and, as its tools, the built-ins plus
DISTRACTORS functions of BFCL's ``multiple`` category, none of them the gold function of any tool
request (a user's tool list holds tools for other needs too; the gold one in the list would let
the request find itself); ``choice`` asks the model alone.

The hard-signal thresholds (graphs/assistant.py) are fixed in code and were read off the first
TUNING_REQUESTS dev requests per category (word problems: seed 0's first ones), so those are never
scored. Scored: routing accuracy per category, and the cost of the decision (ms, generated tokens).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from slmflow.evals.docs_qa import WIKIQA_FILES, WIKIQA_QUESTIONS, wikiqa_questions
from slmflow.evals.harness import find_shared_data, pick_split
from slmflow.evals.results import EvalItem, ItemResult
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
#: Requests per category the routing thresholds were read from: never scored.
TUNING_REQUESTS = 50
#: The seed the thresholds' word problems came from.
TUNING_SEED = 0
#: Functions from other BFCL items in the signals mode's tool list.
DISTRACTORS = 50
ROUTES = ["docs", "tools", "reasoning"]


def word_problems(n: int, seed: int) -> list[str]:
    """``n`` arithmetic word problems from ``seed``; seed 0's first TUNING_REQUESTS (the ones the
    thresholds were read from) are skipped."""
    rng = random.Random(seed)
    skip = TUNING_REQUESTS if seed == TUNING_SEED else 0
    problems = [rng.choice(_PROBLEMS).format(a=rng.randint(2, 90), b=rng.randint(2, 90), c=rng.randint(2, 9))
                for _ in range(skip + n)]
    return problems[skip:]


def distractor_tools(bfcl: Path, gold_names: set[str], n: int = DISTRACTORS) -> list[ToolSpec]:
    """The first ``n`` distinct functions of BFCL's ``multiple`` items named like no gold function."""
    tools: dict[str, ToolSpec] = {}
    with (bfcl / "BFCL_v4_multiple.json").open(encoding="utf-8") as f:
        for question in map(json.loads, f):
            for fn in question["function"]:
                if fn["name"] not in gold_names and fn["name"] not in tools and len(tools) < n:
                    tools[fn["name"]] = ToolSpec(name=fn["name"], description=fn["description"])
    return list(tools.values())


class RoutingSuite:
    name = "routing"
    modes = ["signals", "choice"]

    def __init__(self, data: Path | None = None, split: str | None = None, seed: int = 1) -> None:
        self.wikiqa = find_shared_data("wikiqa", "corpus", data / "wikiqa" if data else None)
        self.bfcl = find_shared_data("bfcl", "BFCL_v4_simple_python.json", data / "bfcl" if data else None)
        self.split = pick_split(self.wikiqa, WIKIQA_QUESTIONS, split)
        self.seed = seed
        self.tools: list = [calculator, current_time]
        self._selector: ToolSelector | None = None
        self._docs = None

    def data_files(self) -> list[Path]:
        return [wikiqa_questions(self.wikiqa, self.split), self.bfcl / "BFCL_v4_simple_python.json",
                self.bfcl / "BFCL_v4_multiple.json"]

    def settings(self) -> dict:
        return {"split": self.split, "seed": self.seed, "tuning_requests_skipped": TUNING_REQUESTS,
                "distractor_tools": DISTRACTORS}

    def items(self, limit: int | None) -> list[EvalItem]:
        n = limit or 50
        with wikiqa_questions(self.wikiqa, self.split).open(encoding="utf-8") as f:
            wiki = [json.loads(line) for line in f][TUNING_REQUESTS:]
        with (self.bfcl / "BFCL_v4_simple_python.json").open(encoding="utf-8") as f:
            bfcl = [json.loads(line) for line in f]
        gold = {fn["name"] for q in bfcl for fn in q["function"]}
        self.tools = [calculator, current_time, *distractor_tools(self.bfcl, gold)]
        items = [EvalItem(id=q["id"], category="docs", data={"request": q["question"], "want": "docs"})
                 for q in wiki[:n]]
        items += [EvalItem(id=q["id"], category="tools", data={"request": q["question"][0][0]["content"],
                                                               "want": "tools"})
                  for q in bfcl[TUNING_REQUESTS:TUNING_REQUESTS + n]]
        items += [EvalItem(id=f"problem_{self.seed}_{i}", category="reasoning",
                           data={"request": text, "want": "reasoning"})
                  for i, text in enumerate(word_problems(n, self.seed))]
        return items

    def baselines(self, items: list[EvalItem]) -> dict[str, dict[str, list[float]]]:
        """Always one route: the majority-class rates a router must beat."""
        out = {}
        for route in ROUTES:
            out[f"always {route}"] = {"accuracy/all": [float(i.data["want"] == route) for i in items],
                                      **{f"accuracy/{c}": [float(c == route) for i in items if i.category == c]
                                         for c in sorted({i.category for i in items})}}
        return out

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        start = time.perf_counter()
        signals = self._signals(item.data["request"], model) if mode == "signals" else None
        route, usage, why = decide_route(model, item.data["request"], signals)
        tokens = usage.completion_tokens if usage else 0
        latency = time.perf_counter() - start
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=route == item.data["want"],
                          metrics={"route_ms": latency * 1000, "route_tokens": float(tokens)}, latency_s=latency,
                          tokens=tokens, output=route, detail=why)
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
