"""The routing suite: requests whose right role is known, and what routing them costs.

Built from the shared data: wikiqa questions (→ docs), BFCL simple_python questions (→ tools),
wikiqa questions sent with an attached page image (→ vision: the attachment is a hard signal, so
no model is asked and these measure only that the signal wins), and arithmetic word problems
generated from a fixed seed (→ reasoning, the moe role).
Scored: routing accuracy per category, and the cost of the decision (ms, generated tokens).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from slmflow.evals.harness import EvalItem, ItemResult, find_shared_data
from slmflow.graphs.assistant import decide_route

_PROBLEMS = [
    "{a} people share {b} sweets equally. How many sweets does each person get and how many are left over?",
    "A shop sells pens at {a} cents each. How much do {b} pens cost, and what change is there from {c} dollars?",
    "A train travels {a} km in {b} hours. At the same speed, how far does it go in {c} hours?",
    "Sam is {a} years old and his sister is {b} years older. How old will she be in {c} years?",
]


class RoutingSuite:
    name = "routing"
    modes = ["choice"]

    def __init__(self, data: Path | None = None) -> None:
        self.wikiqa = find_shared_data("wikiqa", "qa_dev.jsonl", data / "wikiqa" if data else None)
        self.bfcl = find_shared_data("bfcl", "BFCL_v4_simple_python.json", data / "bfcl" if data else None)

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
            route, usage = decide_route(model, item.data["request"])
            tokens = usage.completion_tokens
        latency = time.perf_counter() - start
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=route == item.data["want"],
                          metrics={"route_ms": latency * 1000, "route_tokens": float(tokens)}, latency_s=latency,
                          tokens=tokens, output=route)
