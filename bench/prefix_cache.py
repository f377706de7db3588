"""Prefix reuse on a 6-turn conversation with a ~1,500-token system + tools prefix.

    python bench/prefix_cache.py [--spec embedded] [--max-tokens 32]

Runs the same conversation twice on one loaded model, cache on and cache off (greedy both times,
outputs checked identical), and prints time to first token per turn. Then it measures the cost of
the cache when nothing is reusable: distinct prompts, cache on vs off. Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from slmflow.runtime import load_model

TOOLS = [
    {"name": f"tool_{i}", "description": f"Look up record type {i} in the shop database by id and return its fields.",
     "parameters": {"type": "object", "properties": {"id": {"type": "integer", "description": "record id"},
                                                     "fields": {"type": "array", "items": {"type": "string"}}},
                    "required": ["id"]}}
    for i in range(17)
]
SYSTEM = ("You are the assistant of a bookshop. Use the tools when a question needs shop data. "
          "Tools:\n" + "\n".join(json.dumps(t) for t in TOOLS))
TURNS = ["Hello!", "What time do you open?", "Do you sell maps?", "Can I order by phone?",
         "Where is the shop?", "Thanks, bye."]


def run_conversation(model, max_tokens: int, cache_on: bool):
    history = [{"role": "system", "content": SYSTEM}]
    ttfts, outputs, total = [], [], 0.0
    for turn in TURNS:
        history.append({"role": "user", "content": turn})
        if not cache_on:
            model.cache.clear()
        start = time.perf_counter()
        result = model.generate(history, max_tokens=max_tokens).result()
        total += time.perf_counter() - start
        ttfts.append(result.usage.time_to_first_token_s)
        outputs.append(result.token_ids)
        history.append({"role": "assistant", "content": result.text})
    return ttfts, outputs, total, result


def unreusable_cost(model, max_tokens: int, rounds: int = 6) -> tuple[float, float]:
    """Median wall time, cache off and on, over ~1,000-token prompts whose first token differs (so
    nothing cached shares a prefix with them). Off and on alternate prompt by prompt, so drift in
    the machine's speed hits both alike."""
    body = model.prompt_ids(f"{SYSTEM[:3500]} Which tool lists maps?")
    times = {False: [], True: []}
    model.cache.clear()
    for i in range(rounds + 1):
        for cache_on in (False, True):
            model.cache.enabled = cache_on
            ids = [1000 + 2 * i + cache_on, *body]
            start = time.perf_counter()
            model.generate(ids, max_tokens=max_tokens).result()
            if i:  # the first round warms up both paths
                times[cache_on].append(time.perf_counter() - start)
    model.cache.enabled = True
    return statistics.median(times[False]), statistics.median(times[True])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="embedded")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model = load_model(args.spec)
    prefix_tokens = len(model.prompt_ids([{"role": "system", "content": SYSTEM}]))
    run_conversation(model, 4, cache_on=False)  # warm-up
    off_ttft, off_out, off_total, _ = run_conversation(model, args.max_tokens, cache_on=False)
    model.cache.clear()
    on_ttft, on_out, on_total, last = run_conversation(model, args.max_tokens, cache_on=True)
    if on_out != off_out:
        raise SystemExit("outputs differ with the cache: a correctness bug")
    print(f"model {model.spec} ({model.backend.name}), prefix {prefix_tokens} tokens, {args.max_tokens} new tokens/turn")
    print(f"{'turn':<6}{'TTFT off (ms)':>15}{'TTFT on (ms)':>14}{'speedup':>9}")
    for i, (a, b) in enumerate(zip(off_ttft, on_ttft), 1):
        print(f"{i:<6}{a * 1000:>15.0f}{b * 1000:>14.0f}{a / b:>9.1f}")
    later = [a / b for a, b in zip(off_ttft[1:], on_ttft[1:])]
    print(f"total: off {off_total:.2f} s, on {on_total:.2f} s; turns 2-6 TTFT speedup min {min(later):.1f}x")
    off_cost, on_cost = unreusable_cost(model, 8)
    stats = model.cache.stats
    print(f"nothing reusable (median of 6, interleaved): off {off_cost * 1000:.0f} ms, on {on_cost * 1000:.0f} ms, "
          f"slowdown {100 * (on_cost / off_cost - 1):+.1f}%")
    print(f"held after the run: {stats.states_held} states, {stats.tokens_held} tokens, "
          f"{stats.bytes_held / 2**20:.1f} MiB (budget {model.cache.budget.max_bytes / 2**20:.0f} MiB)")
    print(json.dumps({
        "spec": str(model.spec), "backend": model.backend.name, "prefix_tokens": prefix_tokens,
        "ttft_off_ms": [round(t * 1000) for t in off_ttft], "ttft_on_ms": [round(t * 1000) for t in on_ttft],
        "min_speedup_turns_2_6": round(min(later), 2), "total_off_s": round(off_total, 2),
        "total_on_s": round(on_total, 2), "unreusable_slowdown_pct": round(100 * (on_cost / off_cost - 1), 2),
        "bytes_held_after_conversation": last.cache.bytes_held, "budget_bytes": model.cache.budget.max_bytes,
    }))


if __name__ == "__main__":
    main()
