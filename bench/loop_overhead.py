"""Decode speed of our loop against each backend's native loop, same model, prompt and greedy.

    python bench/loop_overhead.py [--new-tokens 256] [--repeats 3]

Decode tok/s for every contender is measured the same way: (n - 1) / (T(prefill + n tokens) -
T(prefill + 1 token)), median over repeats, runs interleaved so machine noise hits all alike.
Prints a table and one JSON line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from slmflow.runtime import load_model

PROMPT = "Write a long story about a dragon who learns to paint."


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(model, ids, n):
    # The native loops run to n tokens whatever they produce, so ours must not stop at a loop.
    return lambda: model.generate(ids, max_tokens=n, stop_on_loops=False).result()


def native_onnx(model, ids, n):
    import onnxruntime_genai as og

    def run():
        params = og.GeneratorParams(model.backend.model)
        params.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        generator = og.Generator(model.backend.model, params)
        generator.append_tokens(np.asarray(ids, dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()

    return run


def native_hf(model, ids, n):
    input_ids = torch.tensor([ids])
    return lambda: model.backend.model.generate(input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def decode_rate(make, model, ids, n, repeats) -> float:
    full, one = [], []
    for _ in range(repeats):
        one.append(timed(make(model, ids, 1)))
        full.append(timed(make(model, ids, n)))
    return (n - 1) / (statistics.median(full) - statistics.median(one))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.new_tokens
    rows = []
    for spec, native in (("embedded", native_onnx), ("embedded:transformers", native_hf)):
        model = load_model(spec)
        ids = model.prompt_ids(PROMPT)
        produced = len(model.generate(ids, max_tokens=n, stop_on_loops=False).result().token_ids)
        if produced != n:
            raise SystemExit(f"{spec}: greedy output ended after {produced} tokens; pick a longer prompt")
        ours(model, ids, 8)(), native(model, ids, 8)()  # warm up both paths
        native_rate = decode_rate(native, model, ids, n, args.repeats)
        our_rate = decode_rate(ours, model, ids, n, args.repeats)
        rows.append({"backend": model.backend.name, "native_tok_s": round(native_rate, 1),
                     "ours_tok_s": round(our_rate, 1), "ratio": round(our_rate / native_rate, 3)})
    print(f"{'backend':<20}{'native tok/s':>14}{'ours tok/s':>12}{'ratio':>8}")
    for r in rows:
        print(f"{r['backend']:<20}{r['native_tok_s']:>14}{r['ours_tok_s']:>12}{r['ratio']:>8}")
    print(json.dumps({"new_tokens": n, "prompt_tokens": len(ids), "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
