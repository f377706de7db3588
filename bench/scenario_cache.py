"""What the output cache saves: a scenario file run in full against re-run unchanged, through the CLI.

    python bench/scenario_cache.py [--file examples/scenarios/docs-qa.yaml] [--target docs-qa:examples/docs]
                                   [--rounds 3]

A: ``agents eval FILE --target T --no-cache`` (every case runs: what a first run costs, model load
included); B: the same command with the cache, after one warm-up run filled it (every output
reused). Each is a fresh ``agents`` process, alternated A B A B ``--rounds`` times; the pass/fail
of every case must be the same in both. Prints one JSON object: wall times, medians, their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], out: Path) -> tuple[float, dict[str, bool]]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "slmflow.cli", "eval", *args, "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a case failed, which the example files have on purpose
        raise SystemExit(f"agents eval failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    items = json.loads((out / "results.json").read_text())["items"]
    return wall, {i["id"]: i["passed"] for i in items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="examples/scenarios/docs-qa.yaml")
    parser.add_argument("--target", default="docs-qa:examples/docs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    command = [args.file, "--target", args.target]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _, outcome = _run(command, out)  # warm-up: fills the cache (and converts the model if need be)
        walls: dict[str, list[float]] = {"full": [], "cached": []}
        changed = set()
        for _ in range(args.rounds):
            for name, extra in (("full", ["--no-cache"]), ("cached", [])):
                wall, passed = _run(command + extra, out)
                walls[name].append(round(wall, 3))
                changed |= {case for case, ok in passed.items() if outcome.get(case) != ok}
    full, cached = statistics.median(walls["full"]), statistics.median(walls["cached"])
    print(json.dumps({"file": args.file, "target": args.target, "cases": len(outcome), "walls_s": walls,
                      "median_full_s": full, "median_cached_s": cached, "ratio": round(full / cached, 2),
                      "cases_whose_result_changed": sorted(changed)}, indent=2))


if __name__ == "__main__":
    main()
