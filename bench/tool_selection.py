"""How well the embedding tool selector decides call-or-answer on BFCL (dev half), per threshold
and margin: for each category, the share of questions where the allowed tools contain every gold
function (and, for ``multiple``, only those), and for ``irrelevance`` the share where no tool is
allowed. This is the table the defaults in runtime/tool_selection.py were chosen from.

    python bench/tool_selection.py [--data DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slmflow.evals.bfcl import CATEGORIES, find_data, load_questions
from slmflow.runtime.tool_selection import ToolSelector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()
    data = find_data(args.data)
    selector = ToolSelector(threshold=-1.0, margin=10.0)  # keep every score; the grid is applied below
    rows: dict[str, list[tuple[dict[str, float], set[str]]]] = {}
    for cat in CATEGORIES:
        answers = {}
        answer_file = data / "possible_answer" / f"BFCL_v4_{cat}.json"
        if answer_file.exists():
            with answer_file.open(encoding="utf-8") as f:
                answers = {a["id"]: a["ground_truth"] for a in map(json.loads, f)}
        rows[cat] = []
        for q in load_questions(data / f"BFCL_v4_{cat}.json"):
            request = " ".join(m["content"] for m in q.question[0] if m["role"] == "user")
            scores = selector.select(request, q.function).scores
            rows[cat].append((scores, {next(iter(c)) for c in answers.get(q.id, [])}))
    print("| threshold | margin | " + " | ".join(CATEGORIES) + " |")
    print("|---|---|" + "---|" * len(CATEGORIES))
    for threshold in (0.30, 0.35, 0.40, 0.45):
        for margin in (0.05, 0.10, 0.15, 1.0):
            cells = []
            for cat, items in rows.items():
                ok = 0
                for scores, gold in items:
                    floor = max(threshold, max(scores.values()) - margin)
                    allowed = {name for name, s in scores.items() if s >= floor}
                    if cat == "irrelevance":
                        ok += not allowed
                    else:
                        ok += gold <= allowed and (cat != "multiple" or len(allowed) == len(gold))
                cells.append(f"{ok / len(items):.2f}")
            print(f"| {threshold} | {margin} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
