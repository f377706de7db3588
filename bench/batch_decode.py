"""Many sequences per pass, in process: N threads generating at once against one, per backend.

    python bench/batch_decode.py [--clients 8] [--duration 15] [--rounds 2] [--max-tokens 128]

For each backend (the embedded model on onnxruntime, and on transformers fp32), threads ask the
model in a loop for ``--duration`` seconds, greedy, ``--max-tokens`` each (no loop stop, so every
reply has that length unless EOS comes): one thread, then ``--clients`` threads, ``--rounds``
times alternated (A B A B) so machine noise hits both alike. Every reply must equal the solo
reply for its prompt. Also the ceiling the kernels allow: one batched pass of ``--clients`` rows
against one row (the arena alone, no loop), alternated the same way. Prints a table and one JSON
line: median tokens/s of each, their ratio, rows per pass, mismatches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from serve_load import PROMPTS, run_threads
from slmflow.runtime import load_model
from slmflow.runtime.backends.slots import SlotState


def load_phase(model, clients: int, duration: float, max_tokens: int, expected: dict[str, str]) -> dict:
    scheduler = model.backend.scheduler
    passes, rows = scheduler.decode_passes, scheduler.batched_rows
    stop_at = time.monotonic() + duration
    totals = {"tokens": 0, "mismatches": 0, "replies": 0}
    lock = threading.Lock()

    def worker(n: int) -> None:
        i = n
        while time.monotonic() < stop_at:
            prompt = PROMPTS[i % len(PROMPTS)]
            i += 1
            reply = model.generate([{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                   stop_on_loops=False).result()
            with lock:
                totals["tokens"] += reply.usage.completion_tokens
                totals["replies"] += 1
                totals["mismatches"] += reply.text != expected[prompt]

    wall = run_threads(worker, clients)
    new_passes = scheduler.decode_passes - passes
    return {"tokens_per_s": totals["tokens"] / wall, "replies": totals["replies"], "mismatches": totals["mismatches"],
            "rows_per_pass": (scheduler.batched_rows - rows) / new_passes if new_passes else 0.0}


def pass_rate(model, rows: int, steps: int = 30) -> float:
    """Tokens/s of batched passes alone: ``rows`` sequences after a short prompt, ``steps`` passes."""
    arena = model.backend.scheduler.arena
    ids = model.prompt_ids([{"role": "user", "content": PROMPTS[0]}])
    with arena.lock:
        states = [SlotState() for _ in range(rows)]
        for state in states:
            arena.prefill(state, ids, False)
        start = time.perf_counter()
        for _ in range(steps):
            arena.decode(states, [100] * rows)
        seconds = time.perf_counter() - start
        for state in states:
            arena.park(state)
    return rows * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--backends", default="embedded,embedded:transformers")
    args = parser.parse_args()

    report = {}
    for spec in args.backends.split(","):
        model = load_model(spec)
        expected = {p: model.generate([{"role": "user", "content": p}], max_tokens=args.max_tokens,
                                      stop_on_loops=False).text() for p in PROMPTS}
        one, many, pass_one, pass_many = [], [], [], []
        for _ in range(args.rounds):
            one.append(load_phase(model, 1, args.duration, args.max_tokens, expected))
            many.append(load_phase(model, args.clients, args.duration, args.max_tokens, expected))
            pass_one.append(pass_rate(model, 1))
            pass_many.append(pass_rate(model, args.clients))

        def median(phases, key="tokens_per_s"):
            return statistics.median(p[key] for p in phases)

        report[spec] = {
            "backend": model.backend.name,
            "single_tokens_per_s": round(median(one), 1),
            "concurrent_tokens_per_s": round(median(many), 1),
            "ratio": round(median(many) / median(one), 2),
            "rows_per_pass": round(median(many, "rows_per_pass"), 2),
            "mismatched_replies": sum(p["mismatches"] for p in one + many),
            "replies": sum(p["replies"] for p in one + many),
            "pass_ceiling_ratio": round(statistics.median(pass_many) / statistics.median(pass_one), 2),
            "pass_tokens_per_s": [round(statistics.median(pass_one), 1), round(statistics.median(pass_many), 1)],
        }
    print(f"{'model':24} {'1 client':>9} {f'{args.clients} clients':>10} {'ratio':>6} {'rows/pass':>9} "
          f"{'pass ratio':>10} {'mismatch':>8}")
    for spec, r in report.items():
        print(f"{spec:24} {r['single_tokens_per_s']:>9} {r['concurrent_tokens_per_s']:>10} {r['ratio']:>6} "
              f"{r['rows_per_pass']:>9} {r['pass_ceiling_ratio']:>10} {r['mismatched_replies']:>8}")
    print(json.dumps({"clients": args.clients, "max_tokens": args.max_tokens, "rounds": args.rounds,
                      "phase_s": args.duration, "results": report}))


if __name__ == "__main__":
    main()
