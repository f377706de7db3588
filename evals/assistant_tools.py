"""The assistant-tools suite: requests that need the calculator, the clock, the file tools or an
earlier turn, each with the exact value its answer must show.

An Agent with the read-only built-ins (calculator, current_time, list_files and read_file over
``examples/docs``) answers each request; a follow-up is asked after its first turn, with that
turn as history. Scored per item:

* ``right_tool``: the first tool called is the one the request needs;
* ``value_shown``: the expected value stands verbatim in the answer (for the clock, the value is
  what the tool returned in that run; for a file read, the answer is a verbatim passage of the
  file, :func:`is_passage`);
* ``value_shown_when_tool_right``: the same, only where the tool was called and returned the
  expected value, so it measures the last step alone (what the answer does with a right result).

Expected values are computed here in Python (not by the calculator), and file values are read
from the files. The requests are fixed templates over fixed numbers, not drawn from any dev set.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from slmflow.evals.results import EvalItem, ItemResult

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
# A listing must show the named file; a read file's answer must be a verbatim passage of it
# (QUOTE): the request asks what the file says, not for one fact in it.
QUOTE = "passage"
_FILES = [("List the files in the folder.", "list_files", "coffee.txt"),
          ("Which files are there?", "list_files", "eiffel-tower.md"),
          ("Read the file coffee.txt.", "read_file", QUOTE),
          ("Open eiffel-tower.md and tell me what it says.", "read_file", QUOTE),
          ("Show me the contents of honeybees.html.", "read_file", QUOTE)]
MIN_PASSAGE_WORDS = 5
_FOLLOW_UPS = [("What is 6 * 7?", "And double it?", 6 * 7 * 2), ("What is 100 / 4?", "Now add 5 to that.", 100 / 4 + 5),
               ("What is 9 * 9?", "And minus 1?", 9 * 9 - 1), ("What is 50 + 25?", "Multiply that by 2.", (50 + 25) * 2),
               ("What is 12 * 12?", "And half of it?", 12 * 12 / 2), ("What is 3 + 4?", "Times 10?", (3 + 4) * 10),
               ("What is 20% of 50?", "And double that?", 20 / 100 * 50 * 2),
               ("What is 1000 / 8?", "Add 25 to it.", 1000 / 8 + 25),
               ("What is 15 * 3?", "Subtract 5 from that.", 15 * 3 - 5),
               ("What is 64 / 8?", "And squared?", (64 / 8) ** 2)]


# Other wordings of the same needs, to see how far the triggers and argument choices carry.
# "reworded" was written after the rules for the sets above and run once (14 of 20 right); its
# misses ("Add 345 and 655", "9 squared", "Subtract 19 from 100", "What's half of that?", two
# clock wordings) then led to the word-arithmetic phrases and clock patterns, so it no longer
# tests them blind. "held_apart" was written after that change and before any run of it.
_REWORDED = [
    ("Can you work out 48 * 12?", "calculator", 48 * 12), ("I need 7.5% of 320.", "calculator", 7.5 / 100 * 320),
    ("What's 1024 divided by 16?", "calculator", 1024 / 16), ("Add 345 and 655.", "calculator", 345 + 655),
    ("What is 9 squared?", "calculator", 9 ** 2), ("What's 13 x 17?", "calculator", 13 * 17),
    ("How much is 3 times 14?", "calculator", 3 * 14), ("Subtract 19 from 100.", "calculator", 100 - 19),
    ("Do you know what time it is?", "current_time", None), ("What's today's date?", "current_time", None),
    ("Which day of the week is it?", "current_time", None), ("Tell me the time, please.", "current_time", None),
    ("What files do I have?", "list_files", "honeybees.html"), ("Show me eiffel-tower.md.", "read_file", QUOTE),
    ("What does coffee.txt say?", "read_file", QUOTE),
]
_REWORDED_FOLLOW_UPS = [("What is 8 * 9?", "Now multiply it by 3.", 8 * 9 * 3),
                        ("What is 200 - 50?", "And divide that by 3?", (200 - 50) / 3),
                        ("What is 5 + 5?", "Triple it.", (5 + 5) * 3), ("What is 30% of 90?", "Plus 3?", 30 / 100 * 90 + 3),
                        ("What is 11 * 11?", "What's half of that?", 11 * 11 / 2)]
_HELD_APART = [
    ("Please calculate 250 * 4.", "calculator", 250 * 4),
    ("What do you get if you multiply 12 by 11?", "calculator", 12 * 11),
    ("What's 15 percent of 200?", "calculator", 15 / 100 * 200), ("Work out 900 / 30 for me.", "calculator", 900 / 30),
    ("What is 7 cubed?", "calculator", 7 ** 3), ("How much is 1500 minus 275?", "calculator", 1500 - 275),
    ("Sum of 18 and 24?", "calculator", 18 + 24), ("Divide 81 by 3.", "calculator", 81 / 3),
    ("What's the time?", "current_time", None), ("Could you tell me today's date?", "current_time", None),
    ("What date is it today?", "current_time", None), ("Is it morning or evening right now?", "current_time", None),
    ("Can you list the files?", "list_files", "coffee.txt"), ("What's in honeybees.html?", "read_file", QUOTE),
    ("Read eiffel-tower.md to me.", "read_file", QUOTE),
]
_HELD_APART_FOLLOW_UPS = [("What is 14 * 3?", "Double that.", 14 * 3 * 2), ("What is 90 / 3?", "And add 12?", 90 / 3 + 12),
                          ("What is 7 + 8?", "Multiply it by 4.", (7 + 8) * 4),
                          ("What is 25% of 400?", "Now subtract 20.", 25 / 100 * 400 - 20),
                          ("What is 6 * 6?", "What is that squared?", (6 * 6) ** 2)]


def rendered(value) -> str:
    """A number as a tool result shows it (tools/base.py renders with json.dumps)."""
    return json.dumps(value)


def is_passage(answer: str, text: str) -> bool:
    """Whether ``answer`` is a verbatim passage of ``text`` (of MIN_PASSAGE_WORDS words or more),
    markup tags and runs of whitespace aside: an HTML file's words are quoted without its tags."""
    def plain(s: str) -> str:
        return " ".join(re.sub(r"<[^<>\n]{1,200}>", " ", s).split())

    said = plain(answer).rstrip(".")
    return len(said.split()) >= MIN_PASSAGE_WORDS and said in plain(text)


def _rows(single: list[tuple], follow_ups: list[tuple]) -> list[dict]:
    """Suite rows: (request, tool, value) one-turn items, then (first, second, value) follow-ups;
    a number becomes the text a tool result shows (:func:`rendered`)."""
    return ([{"request": q, "tool": t, "value": rendered(v) if isinstance(v, (int, float)) else v}
             for q, t, v in single]
            + [{"request": second, "first": first, "tool": "calculator", "value": rendered(v)}
               for first, second, v in follow_ups])


class AssistantToolsSuite:
    name = "assistant-tools"
    modes = ["agent"]
    #: One agent answers every item, its limits and registry shared: items run one at a time.
    concurrent = False

    def __init__(self, data: Path | None = None) -> None:
        self._agent = None

    def items(self, limit: int | None) -> list[EvalItem]:
        groups = {
            "calculator": _rows([(q, "calculator", v) for q, v in _ARITHMETIC], []),
            "clock": _rows([(q, "current_time", None) for q in _CLOCK], []),
            "files": _rows(_FILES, []),
            "follow_up": _rows([], _FOLLOW_UPS),
            "reworded": _rows(_REWORDED, _REWORDED_FOLLOW_UPS),
            "held_apart": _rows(_HELD_APART, _HELD_APART_FOLLOW_UPS),
        }
        return [EvalItem(id=f"{category}_{n}", category=category, data=row)
                for category, rows in groups.items() for n, row in enumerate(rows[:limit])]

    def baselines(self, items: list[EvalItem]) -> dict[str, dict[str, list[float]]]:
        """Always calling the calculator (the most common need here) as the first tool."""
        return {"always the calculator": {"right_tool": [float(i.data["tool"] == "calculator") for i in items]}}

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
        if expected == QUOTE:
            expected = results[0].content if results else None
            shown = expected is not None and is_passage(answer, expected)
        else:
            shown = expected is not None and expected in answer
        metrics = {"right_tool": float(right_tool), "value_shown": float(shown)}
        if right_tool and results and results[0].ok and expected is not None and expected in results[0].content:
            metrics["value_shown_when_tool_right"] = float(shown)
        tokens = sum(e.usage.completion_tokens for e in result.trace if e.usage)
        detail = {"expected": expected, "calls": [c.model_dump() for c in calls],
                  "results": [r.content[:200] for r in results]}
        return ItemResult(id=item.id, category=item.category, mode=mode, passed=right_tool and shown, metrics=metrics,
                          latency_s=latency, tokens=tokens, output=answer, detail=json.dumps(detail))
