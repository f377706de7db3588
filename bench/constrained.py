"""Constrained decoding cost on the embedded model (CPU).

    python bench/constrained.py [--bfcl-all]

Prints, in one run: decode tok/s unconstrained vs under a tool-call JSON Schema (jump-forward off,
so both decode the same number of sampled tokens), mask time per token p50/p99, schema compile time
cold and cached, and jump-forward on a schema with long fixed keys (forward passes and wall time,
on vs off). ``--bfcl-all`` also generates arguments for every BFCL simple_python function and
reports the validity rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jsonschema
from slmflow.evals.bfcl import load_questions, to_json_schema
from slmflow.runtime import load_model
from slmflow.runtime.constraints import ConstraintEngine, JsonSchema

BFCL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bfcl" / "BFCL_v4_simple_python.json"
TOOL_CALL = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"},
                   "arguments": {"type": "object", "properties": {
                       "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 14},
                       "notes": {"type": "string"}},
                       "required": ["city", "days", "notes"], "additionalProperties": False}},
    "required": ["name", "arguments"], "additionalProperties": False,
}
LONG_KEYS = {
    "type": "object",
    "properties": {f"customer_shipping_address_line_{i}_description": {"type": "string", "maxLength": 12}
                   for i in range(4)},
    "required": [f"customer_shipping_address_line_{i}_description" for i in range(4)],
    "additionalProperties": False,
}


def decode_rate(result) -> float:
    return result.usage.decode_tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bfcl-all", action="store_true")
    args = parser.parse_args()
    model = load_model("embedded")
    prompt = "Write a weather tool call for Paris for 5 days, with long notes about what to pack."

    # decode speed: same prompt, 200 tokens, with and without the constraint (no jump-forward)
    model.generate(prompt, max_tokens=16).result()
    un, con = [], []
    for _ in range(3):
        un.append(model.generate(prompt, max_tokens=200).result())
        con.append(model.generate(prompt, max_tokens=200, constraint=JsonSchema(TOOL_CALL, bounded=False),
                                  jump_forward=False).result())
    un_rate = statistics.median(decode_rate(r) for r in un)
    con_rate = statistics.median(decode_rate(r) for r in con)
    con_tokens = statistics.median(r.usage.completion_tokens for r in con)

    # mask time per token along a real constrained output: computing the mask (the engine) and
    # applying it to the logits (our code), measured separately
    engine = model.constraints
    ids = con[0].token_ids
    matcher = engine.matcher(JsonSchema(TOOL_CALL, bounded=False))
    logits = model.backend.new_sequence(256).extend(model.prompt_ids(prompt))
    compute, total = [], []
    for token in ids:
        start = time.perf_counter()
        matcher.fill()
        middle = time.perf_counter()
        matcher.apply(logits)
        end = time.perf_counter()
        compute.append(middle - start)
        total.append(end - start)
        if token in model.tokenizer.eos_token_ids or matcher.finished:
            break
        matcher.advance(token)
    compute.sort()
    total.sort()

    def p(values, q):
        return values[min(len(values) - 1, int(len(values) * q))]

    # compile time for a BFCL-sized schema: cold (fresh engine) and cached
    bfcl_schema = to_json_schema(load_questions(BFCL)[0].function[0].parameters)
    fresh = ConstraintEngine(model.tokenizer.hf, model.backend.vocab_size, model.tokenizer.eos_token_ids)
    start = time.perf_counter()
    fresh.matcher(JsonSchema(bfcl_schema))
    cold = time.perf_counter() - start
    cached_times = []
    for _ in range(20):
        start = time.perf_counter()
        fresh.matcher(JsonSchema(bfcl_schema))
        cached_times.append(time.perf_counter() - start)
    cached = statistics.median(cached_times)

    # jump-forward on long fixed keys
    jf_prompt = "Fill in a customer's shipping address lines."
    on = model.generate(jf_prompt, constraint=JsonSchema(LONG_KEYS), max_tokens=200).result()
    off = model.generate(jf_prompt, constraint=JsonSchema(LONG_KEYS), max_tokens=200, jump_forward=False).result()
    passes_on = on.usage.completion_tokens - on.usage.forced_tokens
    passes_off = off.usage.completion_tokens
    saved = 1 - passes_on / passes_off

    rows = {
        "engine": "llguidance",
        "unconstrained_tok_s": round(un_rate, 1), "constrained_tok_s": round(con_rate, 1),
        "constrained_tokens": con_tokens, "ratio": round(con_rate / un_rate, 3),
        "mask_compute_p50_us": round(p(compute, 0.5) * 1e6, 1), "mask_compute_p99_us": round(p(compute, 0.99) * 1e6, 1),
        "mask_compute_and_apply_p50_us": round(p(total, 0.5) * 1e6, 1),
        "mask_compute_and_apply_p99_us": round(p(total, 0.99) * 1e6, 1),
        "compile_cold_ms": round(cold * 1e3, 2), "compile_cached_ms": round(cached * 1e3, 3),
        "jump_forward_passes_on": passes_on, "jump_forward_passes_off": passes_off,
        "jump_forward_passes_saved_pct": round(100 * saved, 1),
        "jump_forward_time_on_s": round(on.usage.total_s, 3), "jump_forward_time_off_s": round(off.usage.total_s, 3),
        "same_text_with_and_without_jump_forward": on.text == off.text,
    }
    if args.bfcl_all:
        valid = total = 0
        for q in load_questions(BFCL):
            fn = q.function[0]
            schema = to_json_schema(fn.parameters)
            text = model.generate(f"{q.question[0][-1]['content']}\nCall {fn.name}: {fn.description}\n"
                                  "Reply with the arguments as JSON.", constraint=JsonSchema(schema),
                                  max_tokens=400).text()
            total += 1
            try:
                jsonschema.validate(json.loads(text), schema)
                valid += 1
            except (json.JSONDecodeError, jsonschema.ValidationError):
                pass
        rows["bfcl_simple_python_valid"] = f"{valid}/{total}"
    for key, value in rows.items():
        print(f"{key:<42}{value}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
