"""An eval suite's wall time with items run one at a time and N at once, same model, same items.

    python bench/eval_concurrency.py [--suite bfcl] [--limit 4] [--concurrency 4] [--rounds 2]

Runs the suite in process (the model loaded once and warmed on one item per category, so load
time and first-use set-up count in neither) at concurrency 1 and N, alternated ``--rounds`` times (A B A B). Scores must be the same whatever the
concurrency: every item's pass/fail is compared. Prints one JSON object: wall times, the median
ratio, and the items whose result changed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from slmflow.cli import SUITES
from slmflow.evals.harness import run_suite
from slmflow.runtime import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bfcl", choices=sorted(SUITES))
    parser.add_argument("--limit", type=int, default=4, help="items per category")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="embedded")
    args = parser.parse_args()

    module, cls = SUITES[args.suite].split(":")
    suite = getattr(importlib.import_module(module), cls)()
    model = load_model(args.model)
    walls: dict[int, list[float]] = {1: [], args.concurrency: []}
    outcomes: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as out:
        run_suite(suite, model, Path(out), limit=1, concurrency=1)  # warm-up: grammars, selector, caches
        for _ in range(args.rounds):
            for concurrency in walls:
                start = time.perf_counter()
                run = run_suite(suite, model, Path(out), limit=args.limit, concurrency=concurrency)
                walls[concurrency].append(time.perf_counter() - start)
                outcomes.setdefault(concurrency, {(r.id, r.mode): r.passed for r in run.items})
                summary = run.summary
    one, many = outcomes[1], outcomes[args.concurrency]
    changed = sorted(f"{i} [{m}]" for (i, m) in one if one[(i, m)] != many.get((i, m)))
    print(json.dumps({
        "suite": args.suite, "items": len(one), "limit": args.limit, "rounds": args.rounds,
        "wall_s": {str(c): [round(w, 1) for w in ws] for c, ws in walls.items()},
        "ratio": round(statistics.median(walls[args.concurrency]) / statistics.median(walls[1]), 2),
        "changed_results": changed,
        "accuracy": {mode: row.get("accuracy/all") for mode, row in summary.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
