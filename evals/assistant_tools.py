"""The assistant-tools suite: requests that need the calculator, the clock, the file tools or an
earlier turn, each with the exact value its answer must show.

An Agent with the read-only built-ins (calculator, current_time, list_files and read_file over
``examples/docs``) answers each request; a follow-up is asked after its first turn, with that
turn as history. Scored per item:

* ``right_tool``: the first tool called is the one the request needs;
* ``value_shown``: the expected value stands verbatim in the answer (for the clock, the value is
  what the tool returned in that run);
* ``value_shown_when_tool_right``: the same, only where the tool was called and returned the
  expected value, so it measures the last step alone (what the answer does with a right result).

Expected values are computed here in Python (not by the calculator), and file values are read
from the files. The requests are fixed templates over fixed numbers, not drawn from any dev set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slmflow.evals.harness import EvalItem, ItemResult

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "docs"

_ARITHMETIC = [
    ("What is 17 * 23?", 17 * 23), ("What is 12% of 250?", 12 / 100 * 250), ("Compute 144 / 12.", 144 / 12),
    ("What is 2 ** 10?", 2 ** 10), ("How much is 15 + 27?", 15 + 27), ("What is 1000 - 1?", 1000 - 1),
    ("Calculate 365 * 24.", 365 * 24), ("What is 81 / 9?", 81 / 9), ("What is 25% of 80?", 25 / 100 * 80),
    ("What is (12 + 7) * 3?", (12 + 7) * 3), ("What is 999 + 1?", 999 + 1), ("What is 56 - 78?", 56 - 78),
    ("What is 3.5 * 4?", 3.5 * 4), ("What is 10% of 1234?", 10 / 100 * 1234), ("What is 7 * 8 * 9?", 7 * 8 * 9),
    ("What is 4096 / 64?", 4096 / 64), ("How much is 250 - 75?", 250 - 75),
]
_CLOCK = ["What time is it now?", "What is the current time?", "What is the date today?", "What day is it today?",
          "Tell me the current date and time.", "What time is it in UTC?", "Give me today's date.",
          "What's the time now?", "What is the current date?", "What time is it right now?"]
_FILES = [("List the files in the folder.", "list_files", "coffee.txt"),
          ("Which files are there?", "list_files", "eiffel-tower.md"),
          ("Read the file coffee.txt.", "read_file", "Kaldi"),
          ("Open eiffel-tower.md and tell me what it says.", "read_file", "330 metres"),
          ("Show me the contents of honeybees.html.", "read_file", "waggle dance")]
_FOLLOW_UPS = [("What is 6 * 7?", "And double it?", 6 * 7 * 2), ("What is 100 / 4?", "Now add 5 to that.", 100 / 4 + 5),
               ("What is 9 * 9?", "And minus 1?", 9 * 9 - 1), ("What is 50 + 25?", "Multiply that by 2.", (50 + 25) * 2),
               ("What is 12 * 12?", "And half of it?", 12 * 12 / 2), ("What is 3 + 4?", "Times 10?", (3 + 4) * 10),
               ("What is 20% of 50?", "And double that?", 20 / 100 * 50 * 2),
               ("What is 1000 / 8?", "Add 25 to it.", 1000 / 8 + 25),
               ("What is 15 * 3?", "Subtract 5 from that.", 15 * 3 - 5),
               ("What is 64 / 8?", "And squared?", (64 / 8) ** 2)]


def rendered(value) -> str:
    """A number as a tool result shows it (tools/base.py renders with json.dumps)."""
    return json.dumps(value)


class AssistantToolsSuite:
    name = "assistant-tools"
    modes = ["agent"]

    def __init__(self, data: Path | None = None) -> None:
        self._agent = None

    def items(self, limit: int | None) -> list[EvalItem]:
        groups = {
            "calculator": [{"request": q, "tool": "calculator", "value": rendered(v)} for q, v in _ARITHMETIC],
            "clock": [{"request": q, "tool": "current_time", "value": None} for q in _CLOCK],
            "files": [{"request": q, "tool": t, "value": v} for q, t, v in _FILES],
            "follow_up": [{"request": second, "first": first, "tool": "calculator", "value": rendered(v)}
                          for first, second, v in _FOLLOW_UPS],
        }
        return [EvalItem(id=f"{category}_{n}", category=category, data=row)
                for category, rows in groups.items() for n, row in enumerate(rows[:limit])]

    def agent(self, model):
        if self._agent is None:
            from slmflow.agents import Agent, AgentLimits
            from slmflow.tools import calculator, current_time, file_tools

            self._agent = Agent(model, tools=[calculator, current_time, *file_tools(EXAMPLES)],
                                limits=AgentLimits(max_steps=4, max_tokens=96))
        return self._agent

    def run(self, item: EvalItem, mode: str, model) -> ItemResult:
        agent = self.agent(model)
        row = item.data
        start = time.perf_counter()
        history = []
        if "first" in row:
            first = agent.run(row["first"])
            history = [{"role": "user", "content": row["first"]},
                       {"role": "assistant", "content": str(first.output or "")}]
        result = agent.run(row["request"], history=history)
        latency = time.perf_counter() - start
        calls = [c for e in result.trace for c in e.tool_calls]
        results = [e.tool_result for e in result.trace if e.tool_result is not None]
        answer = str(result.output or "")
        expected = row["value"] if row["value"] is not None else (results[0].content if results else None)
        right_tool = bool(calls) and calls[0].name == row["tool"]
        shown = expected is not None and expected in answer
        metrics = {"right_tool": float(right_tool), "value_shown": float(shown)}
        if right_tool and results and results[0].ok and expected is not None and expected in results[0].content:
            metrics["value_shown_when_tool_right"] = float(shown)
        tokens = sum(e.usage.completion_tokens for e in result.trace if e.usage)
        detail = {"expected": expected, "calls": [c.model_dump() for c in calls],
                  "results": [r.content[:200] for r in results]}
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=right_tool and shown, metrics=metrics,
                          latency_s=latency, tokens=tokens, output=answer, detail=json.dumps(detail))
