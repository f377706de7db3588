"""How long `agents --help` takes, as a fresh process, against bare `python -c pass` in the same run.

    python bench/cli_help.py [--runs 7]

Alternates the two (A B A B) and prints one JSON object with the medians and the difference
(what slmflow's imports cost a user who only asked for help; #26's target is under 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    bare, helps = [], []
    for _ in range(runs):
        bare.append(seconds([sys.executable, "-c", "pass"]))
        helps.append(seconds([sys.executable, "-m", "slmflow.cli", "--help"]))
    print(json.dumps({"runs": runs, "python_pass_median_s": round(statistics.median(bare), 3),
                      "agents_help_median_s": round(statistics.median(helps), 3),
                      "help_minus_bare_s": round(statistics.median(helps) - statistics.median(bare), 3)}))


if __name__ == "__main__":
    main()
