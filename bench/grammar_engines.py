"""llguidance vs xgrammar on our tokenizer and the BFCL schemas: the measurement behind the choice.

    pip install xgrammar   # not a dependency of slmflow; only this comparison needs it
    python bench/grammar_engines.py [--limit 197]

For each engine, on the embedded model's tokenizer: tokenizer set-up time, JSON Schema compile time
per BFCL simple_python function (cold), how many schemas it rejects, and the time to compute the
next-token bitmask at every step of a real constrained output (each output produced once by our
loop and replayed through both engines, so both see the same token sequence). Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from slmflow.evals.bfcl import load_questions, to_json_schema
from slmflow.runtime import load_model
from slmflow.runtime.constraints import JSON_OPTIONS, JsonSchema, _bounded

BFCL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bfcl" / "BFCL_v4_simple_python.json"


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


class Llguidance:
    name = "llguidance"

    def __init__(self, hf, vocab, eos):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.lib, self.fill = llguidance, llguidance.torch.fill_next_token_bitmask
        self.tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab, eos_token=eos)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)

    def compile(self, schema):
        grammar = self.lib.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        matcher = self.lib.LLMatcher(self.tok, grammar, log_level=0)
        return None if matcher.is_error() else matcher

    def step(self, matcher, token):
        self.fill(matcher, self.bitmask, 0)
        return matcher.consume_token(token) if token is not None else True


class Xgrammar:
    name = "xgrammar"

    def __init__(self, hf, vocab, eos):
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=eos)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab)

    def compile(self, schema):
        try:
            compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                         separators=(", ", ": "))
        except Exception:  # xgrammar raises RuntimeError/ValueError for schemas it cannot handle
            return None
        return self.xgr.GrammarMatcher(compiled)

    def step(self, matcher, token):
        matcher.fill_next_token_bitmask(self.bitmask)
        return matcher.accept_token(token) if token is not None else True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=197)
    args = parser.parse_args()
    model = load_model("embedded")
    hf, vocab, eos = model.tokenizer.hf, model.backend.vocab_size, sorted(model.tokenizer.eos_token_ids)
    questions = load_questions(BFCL)[: args.limit]
    schemas = [_bounded(to_json_schema(q.function[0].parameters)) for q in questions]

    outputs = []  # real constrained outputs, produced once by our loop
    for q, schema in zip(questions, schemas):
        fn = q.function[0]
        result = model.generate(f"{q.question[0][-1]['content']}\nCall {fn.name}: {fn.description}\n"
                                "Reply with the arguments as JSON.", constraint=JsonSchema(schema, bounded=False),
                                max_tokens=400).result()
        outputs.append([t for t in result.token_ids if t not in eos])

    rows = {}
    for cls in (Llguidance, Xgrammar):
        start = time.perf_counter()
        engine = cls(hf, vocab, eos)
        setup = time.perf_counter() - start
        compile_times, step_times, rejected, refused_tokens = [], [], 0, 0
        for schema, tokens in zip(schemas, outputs):
            start = time.perf_counter()
            matcher = engine.compile(schema)
            compile_times.append(time.perf_counter() - start)
            if matcher is None:
                rejected += 1
                continue
            for token in [*tokens, None]:
                start = time.perf_counter()
                ok = engine.step(matcher, token)
                step_times.append(time.perf_counter() - start)
                if not ok:
                    refused_tokens += 1
                    break
        rows[engine.name] = {
            "setup_s": round(setup, 3),
            "compile_ms_p50": round(statistics.median(compile_times) * 1e3, 2),
            "compile_ms_p99": round(percentile(compile_times, 0.99) * 1e3, 2),
            "schemas_rejected": rejected,
            "outputs_refused": refused_tokens,
            "mask_us_p50": round(statistics.median(step_times) * 1e6, 1),
            "mask_us_p99": round(percentile(step_times, 0.99) * 1e6, 1),
            "steps": len(step_times),
        }
    keys = list(next(iter(rows.values())))
    print(f"{'metric':<22}" + "".join(f"{name:>14}" for name in rows))
    for key in keys:
        print(f"{key:<22}" + "".join(f"{rows[name][key]:>14}" for name in rows))
    print(json.dumps({"schemas": len(schemas), "threads": torch.get_num_threads(), "engines": rows}))


if __name__ == "__main__":
    main()
